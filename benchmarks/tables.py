"""Result tables on real data, from a table spec in configs/benchmarks/ (e.g. fashion_mnist.yaml,
shortcut.yaml): train the spec's teachers once (cached), then every row × seed (finished runs are
skipped, interrupted ones resumed), evaluate every checkpoint on the students' data, and write the
table with mean ± std over seeds to docs/benchmarks/<part>.

    python benchmarks/tables.py configs/benchmarks/fashion_mnist.yaml [--seeds N]

A spec holds ``teachers`` (name → experiment config), ``student`` (the config every row starts
from), and ``rows``: each a ``row`` title, optionally a ``teacher`` (a name from ``teachers``)
and an ``explainer``, and config sections that replace the student's (``losses``, ``model``,
``recipe``, ``data`` ...). A row is evaluated on the data it was trained on (un-augmented) unless
it names other ``evaluation_data`` (e.g. a shortcut-free ceiling evaluated on the biased data);
teachers on the student's. ``columns`` picks the table's columns from :data:`COLUMN_NOTES`, and
the explanation metrics in ``metrics`` (registry names) are columns too; they are computed on the
first ``explain_n`` images of ``explain_split`` (default ``test``), and left empty for data
without the mask a metric needs.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader, Subset

from kdlens.config import validate_config, validate_data_config
from kdlens.data import build_data
from kdlens.data.common import MASK_KEYS
from kdlens.aggregate import aggregate
from kdlens.evaluation import (
    aggregate_scores,
    evaluate_explanations,
    format_aggregate,
    nanmean,
    predict_splits,
    resolve_device,
    split_reports,
)
from kdlens.io import atomic_write_text, markdown_table, write_json
from kdlens.metrics import attribution_cosine, create_metrics, expected_calibration_error
from kdlens.runs import RunFolder, RunResults, load_model
from kdlens.training.run import run_experiment
from kdlens.training.sweep import plan_sweep, run_sweep

COLUMN_NOTES = {
    "best top-1": "test top-1 of the checkpoint with the best validation top-1",
    "last top-1": "test top-1 after the last epoch (for a teacher: on its own training data)",
    "in-distribution top-1": "test top-1 where the shortcut colour agrees with the class at the training rate",
    "shifted top-1": "top-1 where the shortcut colour and the class are independent",
    "worst-group": "lowest top-1 over the (class × shortcut colour) groups of the shifted split",
    "shortcut gap": "shifted split: top-1 where the shortcut colour agrees with the class minus top-1 where it does not",
    "agreement": "fraction of test images where student and teacher predict the same class",
    "KL(t‖s)": "KL(teacher ‖ student) of the softmax outputs, mean over the test images",
    "ECE": "expected calibration error, 10 bins, test split",
    "explanation cosine": "cosine of the student's and teacher's maps of the teacher's top-1 class",
}
ALIASES = {"in-distribution top-1": "best top-1"}
"""Columns that are another column under a name that reads better in their table."""
EVALUATION_FILE = "table_evaluation.json"
SPEC_KEYS = {"title", "description", "output_dir", "part", "seeds", "explain_n", "explainer", "metrics", "columns",
             "teachers", "student", "rows"}
OPTIONAL_SPEC_KEYS = {"teacher_explainers", "explain_split", "compare"}
ROW_KEYS = {"row", "teacher", "explainer", "evaluation_data"}
"""Row keys that are not config sections."""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text.replace("²", "2")).strip("_").lower()


def read_spec(path: Path, seeds: int | None) -> dict[str, Any]:
    spec = yaml.safe_load(path.read_text())
    missing, unknown = SPEC_KEYS - spec.keys(), spec.keys() - SPEC_KEYS - OPTIONAL_SPEC_KEYS
    if missing or unknown:
        raise SystemExit(f"{path}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}; a table spec has "
                         f"{sorted(SPEC_KEYS)} and optionally {sorted(OPTIONAL_SPEC_KEYS)}")
    spec["seeds"] = seeds or spec["seeds"]
    spec["source"] = str(path)
    unknown = [c for c in spec["columns"] if c not in COLUMN_NOTES and c not in spec["metrics"]]
    if unknown:
        raise SystemExit(f"{path}: unknown columns {unknown}; choose from {[*COLUMN_NOTES, *spec['metrics']]}")
    titles = [row["row"] for row in spec["rows"]]
    for compare in comparison_specs(spec):
        if compare.get("baseline") not in titles or compare.get("column") not in spec["columns"]:
            raise SystemExit(f"{path}: compare {compare} needs a baseline among the rows {titles} and a column among "
                             f"{spec['columns']}")
    return spec


class Timings:
    """Training seconds per run folder, kept beside the runs so a resumed table still knows them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}

    def train(self, config, resume: bool) -> RunResults | None:
        started = time.perf_counter()
        results = run_experiment(config, resume=resume).results
        key = str(config.run_dir)
        # Re-read first: another table process over the same runs may have added its own runs' times.
        self.seconds = {**(json.loads(self.path.read_text()) if self.path.exists() else {}), **self.seconds}
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - started
        write_json(self.path, self.seconds)
        return results


def train_teachers(spec: dict[str, Any], out: Path, timings: Timings) -> dict[str, RunFolder]:
    teachers = {}
    for name, raw in spec["teachers"].items():
        config = validate_config({**raw, "name": f"teacher_{name}", "output_dir": str(out / "teachers" / name)})
        folder = RunFolder(config.run_dir)
        if folder.finished:
            print(f"teacher {name}: cached in {folder.path}")
        else:
            timings.train(config, folder.resumable)
        teachers[name] = folder
    return teachers


def row_config(spec: dict[str, Any], row: dict[str, Any], teachers: dict[str, Path]) -> dict[str, Any]:
    """The row's experiment config; ``teachers``: teacher name → its checkpoint."""
    sections = {k: v for k, v in row.items() if k not in ROW_KEYS}
    raw = {**json.loads(json.dumps(spec["student"])), **sections, "name": slug(row["row"])}
    if "teacher" in row:
        checkpoint = teachers[row["teacher"]]
        raw["teacher"] = {"name": spec["teachers"][row["teacher"]]["model"]["name"], "checkpoint": str(checkpoint)}
    return raw


def evaluation_data(spec: dict[str, Any], row: dict[str, Any] | None) -> dict[str, Any]:
    """The data section a row (None: a teacher) is evaluated on."""
    if row is None:
        return spec["student"]["data"]
    return row.get("evaluation_data", row.get("data", spec["student"]["data"]))


class Evaluator:
    """Evaluates checkpoints on one data config's test (and extra) splits through :mod:`kdlens.evaluation`
    (on ``device``: CUDA when present); the teacher's predictions and maps are computed once per teacher."""

    def __init__(self, spec: dict[str, Any], data: dict[str, Any], device: str | None = None) -> None:
        self.device = resolve_device(device)
        self.data_config = validate_data_config({**data, "augment": False})
        self.bundle = build_data(self.data_config)
        split_name = spec.get("explain_split", "test")
        split = self.bundle.test if split_name == "test" else self.bundle.extra_splits[split_name]
        self.split = Subset(split, range(min(spec["explain_n"], len(split))))
        first = next(iter(DataLoader(self.split, batch_size=len(self.split))))
        self.mask_shares = {key: first[key].float().mean().item() for key in MASK_KEYS if key in first}
        # Metrics scoring against a mask this data lacks (a decoy on data without one) stay empty.
        self.metrics = {name: metric for name, metric in create_metrics(spec["metrics"]).items()
                        if "mask" not in metric.requires or metric.mask_key in first}
        self._teachers: dict[Path, tuple] = {}

    def explain(self, model, explainer: str, metrics: dict, target: str = "pred", teacher=None):
        """The explained images, all in one batch (the metrics' context is shared by all of them)."""
        return evaluate_explanations({"model": model}, self.split, [explainer], metrics, target=target, teacher=teacher,
                                     batch_size=len(self.split), device=self.device, keep_maps=True)

    def teacher(self, checkpoint: Path, explainer: str) -> tuple:
        """(model, predictions of every evaluation split, its maps of its top-1 on the explained images)."""
        if checkpoint not in self._teachers:
            model = load_model(checkpoint)[0].to(self.device)
            maps = self.explain(model, explainer, {}).maps[("model", explainer)]
            self._teachers[checkpoint] = (model, predict_splits(model, self.bundle, self.data_config, self.device), maps)
        return self._teachers[checkpoint]

    def evaluate(self, checkpoint: Path, explainer: str, teacher: tuple | None, last_top1: float | None) -> dict[str, float]:
        started = time.perf_counter()
        model = load_model(checkpoint)[0].to(self.device)
        predictions = predict_splits(model, self.bundle, self.data_config, self.device)
        reports = split_reports(predictions, teacher[1] if teacher else None, self.bundle.group_names,
                                self.bundle.aligned_groups)
        test = reports["test"]
        result = {
            "best top-1": test["top1"],
            "last top-1": last_top1,
            "agreement": test.get("agreement"),
            "KL(t‖s)": test.get("kl_teacher_student"),
            "ECE": expected_calibration_error(predictions["test"].logits, predictions["test"].labels, 10),
        }
        if "shifted" in reports:
            shifted = reports["shifted"]
            result |= {"shifted top-1": shifted["top1"], "worst-group": shifted["worst_group_accuracy"],
                       "shortcut gap": shifted.get("shortcut_gap")}
        scores = self.explain(model, explainer, self.metrics).scores
        result |= {row["metric"]: row["mean"] for row in aggregate_scores(scores, list(self.metrics))}
        if teacher:
            student_maps = self.explain(model, explainer, {}, target="teacher", teacher=teacher[0]).maps[("model", explainer)]
            result["explanation cosine"] = nanmean(attribution_cosine(teacher[2], student_maps))
        result["evaluation seconds"] = time.perf_counter() - started
        return result


def last_top1(folder: RunFolder) -> float | None:
    """Test top-1 after the run's last epoch, from its results."""
    return folder.read_results().metric("last", "test", "top1")


def cached_evaluation(run_dir: Path, settings: dict, evaluate) -> dict[str, float]:
    """The run's evaluation under these settings, computed once and kept in the run folder."""
    path = run_dir / EVALUATION_FILE
    if path.exists():
        stored = json.loads(path.read_text())
        if stored["settings"] == settings:
            return stored["result"]
    result = evaluate()
    write_json(path, {"settings": settings, "result": result})
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--seeds", type=int, help="seeds per row (default: the spec's)")
    parser.add_argument("--device", help="device the evaluation runs on: cpu, cuda, ... (default: CUDA when present, else CPU)")
    parser.add_argument("--finished-only", action="store_true",
                        help="train nothing: write the rows whose runs have all finished, and name the others as missing")
    args = parser.parse_args(argv)
    spec = read_spec(args.spec, args.seeds)
    out = Path(spec["output_dir"])
    timings = Timings(out / "timings.json")
    started = time.perf_counter()

    teachers = train_teachers(spec, out, timings)
    row_runs = []
    for row in spec["rows"]:
        row_dir = out / slug(row["row"])
        runs = plan_sweep(row_config(spec, row, {name: folder.best for name, folder in teachers.items()}), [], spec["seeds"], row_dir)
        if not args.finished_only:
            run_sweep(runs, row_dir, timings.train)
        row_runs.append((row, runs))
    missing = []
    if args.finished_only:
        missing = [row["row"] for row, runs in row_runs if not all(RunFolder(r.config.run_dir).finished for r in runs)]
        row_runs = [(row, runs) for row, runs in row_runs if row["row"] not in missing]
    unfinished = [str(run.config.run_dir) for _, runs in row_runs for run in runs if not RunFolder(run.config.run_dir).finished]
    if unfinished:  # held by another process (run_sweep skipped them): evaluate once they are done
        raise SystemExit(f"{len(unfinished)} runs are being trained by another process ({', '.join(unfinished[:3])} ...): "
                         "run the table again when they have finished")

    evaluators: dict[str, Evaluator] = {}

    def evaluator_for(data: dict[str, Any]) -> Evaluator:
        key = json.dumps(data, sort_keys=True)
        if key not in evaluators:
            evaluators[key] = Evaluator(spec, data, args.device)
        return evaluators[key]

    settings = {k: spec.get(k) for k in ("explain_n", "metrics", "explain_split")}
    table, warnings = [], []
    for name, folder in teachers.items():
        explainer = teacher_explainer(spec, name)
        evaluator = evaluator_for(evaluation_data(spec, None))
        result = cached_evaluation(folder.path, {**settings, "data": evaluation_data(spec, None), "explainer": explainer},
                                   lambda: evaluator.evaluate(folder.best, explainer, None, last_top1(folder)))
        table.append(table_row(f"teacher ({name})", explainer, [result], spec, [str(folder.path)], timings))
        chance = 1 / evaluator.bundle.num_classes
        if result["best top-1"] < 1.5 * chance:  # a teacher this weak makes its students' rows meaningless
            warnings.append(f"**Teacher {name} did not learn** (test top-1 {result['best top-1']:.3f}, chance "
                            f"{chance:.3f}): the rows distilled from it say nothing about their method.")
    row_results: dict[str, list[dict]] = {}
    for row, runs in row_runs:
        explainer = row.get("explainer", spec["explainer"])
        data = evaluation_data(spec, row)

        def evaluate(run_dir: Path, row: dict = row, explainer: str = explainer, data: dict = data) -> dict[str, float]:
            # The teacher's outputs are computed (once) only when a run of its rows is not evaluated yet.
            evaluator = evaluator_for(data)
            teacher = evaluator.teacher(teachers[row["teacher"]].best, teacher_explainer(spec, row["teacher"])) if "teacher" in row else None
            folder = RunFolder(run_dir)
            return evaluator.evaluate(folder.best, explainer, teacher, last_top1(folder))

        results = [
            cached_evaluation(run.config.run_dir, {**settings, "data": data, "explainer": explainer, "teacher": row.get("teacher")},
                              lambda run_dir=run.config.run_dir: evaluate(run_dir))
            for run in runs
        ]
        table.append(table_row(row["row"], explainer, results, spec, [str(r.config.run_dir) for r in runs], timings))
        row_results[row["row"]] = results
    training_data = {row["row"]: row.get("data", spec["student"]["data"]) for row, _ in row_runs}
    for compare in comparison_specs(spec):
        warnings += comparisons(compare, row_results, training_data)
    if missing:
        warnings.insert(0, f"**Partial table: {len(missing)} of {len(spec['rows'])} rows not trained yet** "
                           f"({'; '.join(missing)}): nothing is claimed about them.")
    write_part(spec, table, warnings, time.perf_counter() - started, evaluator_for(evaluation_data(spec, None)).mask_shares)


def teacher_explainer(spec: dict[str, Any], name: str) -> str:
    return spec.get("teacher_explainers", {}).get(name, spec["explainer"])


def comparison_specs(spec: dict[str, Any]) -> list[dict[str, str]]:
    """``compare`` is one ``{baseline, column}`` or a list of them."""
    compare = spec.get("compare", [])
    return [compare] if isinstance(compare, dict) else compare


def comparisons(compare: dict[str, str], row_results: dict[str, list[dict]], training_data: dict[str, dict]) -> list[str]:
    """Each row trained on the same data as ``compare["baseline"]`` against it on
    ``compare["column"]`` (rows on other data answer another question): a difference is called
    established only where it exceeds both rows' sample std over seeds."""
    baseline, column = compare["baseline"], compare["column"]
    if baseline not in row_results:
        return [f"No comparison on {column}: the baseline row '{baseline}' is not in the table."]
    base = aggregate(r.get(column) for r in row_results[baseline])
    lines = []
    for title, results in row_results.items():
        stats = aggregate(r.get(column) for r in results)
        if title == baseline or training_data[title] != training_data[baseline] or stats.n < 2 or base.n < 2:
            continue
        difference = stats.mean - base.mean
        verdict = ("established" if abs(difference) > max(stats.std, base.std)
                   else "not established (within a seed std)")
        lines.append(f"- {column}, {title} − {baseline}: {difference:+.4f} (seed stds {stats.std:.4f} and "
                     f"{base.std:.4f}): {'higher' if difference > 0 else 'lower'} is {verdict}.")
    return [f"Against {baseline} (rows trained on its data) on {column}:\n" + "\n".join(lines)] if lines else []


def table_row(title: str, explainer: str, results: list[dict], spec: dict[str, Any], run_dirs: list[str], timings: Timings) -> dict:
    row = {"row": title, "seeds": len(results), "explainer": explainer}
    for column in spec["columns"]:
        values = [r.get(ALIASES.get(column, column)) for r in results]
        row[column] = format_aggregate(values, digits=4)
    row["_train_seconds"] = sum(timings.seconds.get(d, 0.0) for d in run_dirs)
    row["_evaluation_seconds"] = sum(r["evaluation seconds"] for r in results)
    return row


def write_part(spec: dict[str, Any], table: list[dict], warnings: list[str], wall_seconds: float,
               mask_shares: dict[str, float]) -> None:
    train_minutes = sum(r.pop("_train_seconds") for r in table) / 60
    evaluation_minutes = sum(r.pop("_evaluation_seconds") for r in table) / 60
    if len({r["explainer"] for r in table}) == 1:  # one explainer for all: said once, below the table
        for r in table:
            del r["explainer"]
    notes = [f"- {c}: {COLUMN_NOTES[c] if c in COLUMN_NOTES else metric_note(c)}" for c in spec["columns"]]
    for key, share in mask_shares.items():
        what = "The shape masks" if key == "mask" else "The decoy masks"
        notes.append(f"- {what} cover {share:.1%} of the explained images (of the student data): the mass a map "
                     "spread evenly would put inside them (the chance level of the energy metrics).")
    text = "\n".join([
        f"# {spec['title']}",
        "",
        spec["description"],
        "",
        f"Spec: `{spec['source']}`; regenerate with `python benchmarks/tables.py {spec['source']}`. "
        f"Mean ± sample std over {spec['seeds']} seeds (a teacher is one run). Explanations "
        f"({spec['explainer']} unless a row names another): first {spec['explain_n']} "
        f"{spec.get('explain_split', 'test')} images.",
        "",
        markdown_table(table),
        "",
        *(f"{warning}\n" for warning in warnings),
        *notes,
        "",
        f"Measured {date.today()} on {platform.machine()} ({torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}). Took {train_minutes:.1f} min of training (summed over the runs as each ran) and "
        f"{evaluation_minutes:.1f} min of evaluation; this invocation {wall_seconds / 60:.1f} min.",
    ])
    path = Path("docs/benchmarks") / spec["part"]
    atomic_write_text(path, text + "\n")
    print(text)
    print(f"wrote {path}")


def metric_note(name: str) -> str:
    metric = create_metrics([name])[name]
    better = "higher" if metric.higher_is_better else "lower"
    return f"`{name}` of the model's explanation of its own top-1 class ({better} is better)"


if __name__ == "__main__":
    main()
