"""Atomic writes for the benchmarks' outputs (results stores, side files, docs regions).

A benchmark stopped mid-write (Ctrl-C, out of memory, a CI time limit) must leave the previous
file, not half of one: everything goes through the package's own `write_atomically` (the one
`nsi.save` uses: a uniquely named temporary file beside the target, synced, renamed over it), so
benchmark runs side by side cannot clobber each other's temporary files either.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from numpyro_si._io import write_atomically


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda f: f.write(text.encode()))


def write_docs_region(out: Path, start: str, end: str, text_lines: list[str]) -> None:
    """Replace the region of `out` between the markers `start` and `end` (or append it); the rest
    of the file is kept. Read just before writing, since other benchmarks write other regions of
    the same file."""
    region = "\n".join([start, *text_lines, end])
    text = out.read_text() if out.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + region + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + region + "\n"
    write_text(out, text)


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


def mean_sd(values, spec: str) -> str:
    """"mean ± sd" of `values` (the sample standard deviation, over seeds), formatted with
    `spec`; the value alone when there is one."""
    values = np.asarray(values, dtype=float)
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(values.mean(), spec)} ± {format(values.std(ddof=1), spec)}"


def run_rows(path: Path, units: list[dict], measure, *, meta: dict, resume: bool,
             quick: bool) -> tuple[dict, list[float]]:
    """Measure one row per unit, keeping the rows in `path` as they come (a crash loses one row;
    `resume=True` continues a stored unfinished run with the same `meta`), and dropping compiled
    code between rows (a long process otherwise accumulates it until LLVM cannot map more).

    - `units`: dicts naming each row (e.g. `{"target": ..., "seed": ..., "method": ...}`), in
      the order to measure them; `measure(unit) -> dict` measures one row.
    - `meta`: what makes runs comparable (budget, seeds); stored beside the rows.

    Returns the run (`{"run", "rows", "complete", **meta}`; the caller sets `complete` and
    writes it once the table is rendered) and the 1-minute load averages seen between rows.
    """
    import os
    import time

    import jax

    run = {"run": time.strftime("%Y%m%dT%H%M%S"), "rows": [], "complete": False, **meta}
    if resume:
        stored = json.loads(path.read_text()) if path.exists() else {}
        if stored.get("complete", True) or any(stored.get(k) != v for k, v in meta.items()):
            raise SystemExit(f"--resume: {path} holds no unfinished run with these settings")
        run = stored
    rows = run["rows"]
    names = units[0].keys() if units else ()  # every unit names its row by the same keys
    done = [{k: row[k] for k in names} for row in rows]
    loads = [os.getloadavg()[0], *(row["load"] for row in rows)]
    for unit in units:
        if unit in done:
            continue
        row = {**measure(unit), **unit, "load": os.getloadavg()[0]}
        loads.append(row["load"])
        rows.append(row)
        print({k: v for k, v in row.items() if not isinstance(v, list)}, flush=True)
        if not quick:
            write_json(path, run)
        jax.clear_caches()
    return run, loads


def row_run_args(description: str, argv=None):
    """The options of a `run_rows` benchmark: `--quick` (tiny budgets, writes nothing),
    `--seeds` (comma-separated, default 0,1,2) and `--resume`; `args.seed_list` holds the
    seeds as ints."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny budgets; writes nothing")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--resume", action="store_true",
                        help="continue the stored run (its rows are kept, the rest measured)")
    args = parser.parse_args(argv)
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    return args


def run_command(script: str, args, run: dict) -> str:
    """The command line a table cites: the script, its non-default seeds, and the run it
    continued when resumed."""
    command = f"`.venv/bin/python benchmarks/{script}" + (
        f" --seeds {args.seeds}`" if args.seeds != "0,1,2" else "`")
    if args.resume:
        command += f" (run {run['run']}, continued with `--resume`)"
    return command


def finish_run(run: dict, lines: list[str], args, *, path: Path, out: Path, start: str,
               end: str) -> None:
    """Print the table; unless `--quick`, mark the run complete, store it and write the docs
    region."""
    print("\n".join(lines))
    if args.quick:
        return
    run["complete"] = True
    write_json(path, run)
    write_docs_region(out, start, end, lines)
