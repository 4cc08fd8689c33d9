"""Rewrite tests/data/fashion-mnist/ from the Debian package's files (apt-get install dataset-fashion-mnist):
the first TRAIN train and TEST test images with their labels, in the same gzipped IDX format."""

import gzip
import math
import struct
import sys
from pathlib import Path

SOURCE = Path("/usr/share/datasets/fashion-mnist")
TARGET = Path(__file__).parent / "fashion-mnist"
TRAIN, TEST = 200, 100


def copy_head(name: str, count: int) -> None:
    with gzip.open(SOURCE / name, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    header = raw[:4] + struct.pack(f">{ndim}I", count, *shape[1:])
    body = raw[4 + 4 * ndim:][: count * math.prod(shape[1:])]
    # mtime=0 and no file name in the header: the output is byte-for-byte reproducible.
    with open(TARGET / name, "wb") as out, gzip.GzipFile("", "wb", 9, out, mtime=0) as gz:
        gz.write(header + body)


if __name__ == "__main__":
    if not SOURCE.is_dir():
        sys.exit(f"{SOURCE} missing: apt-get install dataset-fashion-mnist")
    TARGET.mkdir(exist_ok=True)
    for prefix, count in (("train", TRAIN), ("t10k", TEST)):
        copy_head(f"{prefix}-images-idx3-ubyte.gz", count)
        copy_head(f"{prefix}-labels-idx1-ubyte.gz", count)
