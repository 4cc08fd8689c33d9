"""A pool worker: ``python -m kdlens.launch.worker --threads N --log FILE`` trains the run whose
config (JSON) it reads from stdin. Exit status 0: finished (or had finished); IN_USE_STATUS:
another process holds the run; anything else: failed (recorded in the run's launch.json)."""

from __future__ import annotations

import argparse
import json
import sys

from kdlens.launch.job import IN_USE, train_run
from kdlens.verbosity import set_verbose

IN_USE_STATUS = 75  # EX_TEMPFAIL: try again later


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdlens.launch.worker")
    parser.add_argument("--threads", type=int, required=True, help="torch threads of this worker")
    parser.add_argument("--log", required=True, help="the file this worker's output goes to")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    config_data = json.load(sys.stdin)
    set_verbose(args.verbose)
    import torch

    torch.set_num_threads(args.threads)
    outcome = train_run(config_data, args.log)
    print(f"{config_data['name']}: {outcome}", flush=True)
    return IN_USE_STATUS if outcome == IN_USE else 0


if __name__ == "__main__":
    sys.exit(main())
