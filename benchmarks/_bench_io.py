"""Atomic writes for the benchmarks' outputs (results stores, side files, docs regions).

A benchmark stopped mid-write (Ctrl-C, out of memory, a CI time limit) must leave the previous
file, not half of one: everything is written to a temporary file beside the target and renamed
over it (`os.replace` is atomic on POSIX file systems).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


def write_atomically(path: Path, write: Callable) -> None:
    """`write(file)` (a binary file object) into a temporary file beside `path`, then rename it
    over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():  # the write failed: do not leave the partial file behind
            tmp.unlink()


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda f: f.write(text.encode()))


def write_json(path: Path, data, **kwargs) -> None:
    write_text(path, json.dumps(data, indent=1, **kwargs))


def update_npz(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add `arrays` to the side file `path` (entries of other runs are kept), atomically;
    returns everything it now holds."""
    path = Path(path)
    stored = dict(np.load(path)) if path.exists() else {}
    stored.update(arrays)
    write_atomically(path, lambda f: np.savez_compressed(f, **stored))
    return stored
