"""Where the density benchmark keeps what it measured, and how runs merge into it.

Everything is keyed by stable ids: data sets by their `_density_data.ALL_DATASETS` name, methods
by their `_density_methods.METHODS` id, solver variants, configurations and budget curves by
the ids of `_density_studies`. Display labels belong to the renderer (`density_report.py`).

Stores (JSON, `"schema": SCHEMA`), in `docs/figures/density/`:

- `results*.json` (one file per `--results`, merged when rendering):
  `{"schema", "meta": {machine, commands, budgets, clock, quick, code},
  "datasets": {dataset: {dim, n_train, n_test, description, entropy, notes, budget, command,
  "methods": {method: row}}},
  "solver": {dataset: {dim, flowjax_log_prob_per_s, flops, command, "variants": {variant: row}}},
  "throughput": {dataset: row}}`;
- `configs.json`: `{"schema", "datasets": {dataset: {commands, "configs": {config: row}}}}`;
- `curves.json`: `{"schema", "curves": {curve: {dataset, n_train, curve_train, entropy, machine,
  commands, "rows": [{budget, method, [patience_fraction | patience_min_steps], ...}]}}}`.

Side files per data set: `<dataset>_heldout_log_prob.npz`, every method's per-point held-out log
densities by method id (and by `<method>.key_mean` their mean over training keys), and
`<dataset>_samples.npz`, 1000 draws of every method that can sample, by method id.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from _bench_io import update_npz, write_json

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
FIGURES = ROOT / "docs" / "figures" / "density"
RESULTS = FIGURES / "results.json"
CONFIGS = FIGURES / "configs.json"  # the configuration study, kept apart so runs can overlap
CURVES = FIGURES / "curves.json"  # NLL against training budget (`--budget-curve`)
# Hand-written reading of the stored results (numbers quoted from them), rendered after the goals
ANALYSIS = FIGURES / "analysis.md"
SCHEMA = 2


def read_json(path: Path) -> dict:
    """A store's contents ({} if absent); refuses files of another schema."""
    if not path.exists():
        return {"schema": SCHEMA}
    data = json.loads(path.read_text())
    if data.get("schema") != SCHEMA:
        raise SystemExit(f"{path} has schema {data.get('schema')}, not {SCHEMA}: written by"
                         " another version of benchmarks/density.py")
    return data


def read_results(path: Path) -> dict:
    results = read_json(path)
    for section in ("datasets", "solver", "throughput"):
        results.setdefault(section, {})
    return results


def write_results(path: Path, results: dict, *, datasets, solver, throughput) -> None:
    """Merge this run's entries of `datasets`, `solver` and `throughput` into the store (re-read
    now: another run with other --methods or --datasets may have written since) and write
    atomically. A data set's stored methods that this run did not measure are kept."""
    current = read_results(path)
    for name in datasets:
        entry = dict(results["datasets"][name])
        kept = current["datasets"].get(name, {}).get("methods", {})
        entry["methods"] = {**kept, **entry["methods"]}
        current["datasets"][name] = entry
    for name in solver:
        current["solver"][name] = results["solver"][name]
    for name in throughput:
        current["throughput"][name] = results["throughput"][name]
    commands = set(current.get("meta", {}).get("commands", [])) | set(results["meta"]["commands"])
    current["meta"] = dict(results["meta"], commands=sorted(commands))
    write_json(path, current)


def _merged_commands(previous: dict, command: str) -> list[str]:
    return sorted(set(previous.get("commands", [])) | {command})


def merge_configs(path: Path, name: str, rows: dict, command: str, *, known,
                  write: bool = True) -> dict:
    """Merge a configuration study's rows (config id -> row) on data set `name` into its store:
    stored rows this run did not redo stay if their id is in `known` (in `known`'s order), the
    commands behind the rows are listed; written atomically unless `write` is False."""
    stored = read_json(path) if write else {"schema": SCHEMA}
    previous = stored.setdefault("datasets", {}).get(name, {})
    merged = {**previous.get("configs", {}), **rows}
    stored["datasets"][name] = {
        "commands": _merged_commands(previous, command),
        "configs": {c: merged[c] for c in known if c in merged},
    }
    if write:
        write_json(path, stored)
    return stored["datasets"][name]


def curve_series(row: dict) -> tuple:
    """What makes a budget-curve row's column: its method and flowjax's patience protocol."""
    return row["method"], row.get("patience_fraction"), row.get("patience_min_steps")


def merge_curve(path: Path, curve: str, rows: list[dict], command: str, *, write: bool = True,
                **fields) -> dict:
    """Merge a budget curve's rows into its store: stored rows this run did not redo (same
    budget and series) stay, sorted by budget; `fields` describe the curve. Written atomically
    unless `write` is False; returns the curve's entry."""
    stored = read_json(path) if write else {"schema": SCHEMA}
    previous = stored.setdefault("curves", {}).get(curve, {})
    ran = {(r["budget"], curve_series(r)) for r in rows}
    kept = [r for r in previous.get("rows", []) if (r["budget"], curve_series(r)) not in ran]
    stored["curves"][curve] = {**fields, "commands": _merged_commands(previous, command),
                               "rows": sorted(kept + rows, key=lambda r: r["budget"])}
    if write:
        write_json(path, stored)
    return stored["curves"][curve]


# ----------------------------------------------------------------------------------------------
# side files
# ----------------------------------------------------------------------------------------------


KEY_MEAN = ".key_mean"  # suffix of a method's key-averaged held-out log densities


def heldout_path(name: str) -> Path:
    return FIGURES / f"{name}_heldout_log_prob.npz"


def save_heldout(name: str, values: dict[str, np.ndarray]) -> None:
    """Add this run's per-point held-out log densities (by method id, or method id + KEY_MEAN)
    to the data set's side file (methods of other runs are kept), atomically. They make the NLL
    differences paired (`density_report.paired_se`)."""
    update_npz(heldout_path(name), {m: np.asarray(v, dtype=np.float32) for m, v in values.items()})


def load_heldout(name: str | None, *keys: str) -> list[np.ndarray] | None:
    """The stored held-out log densities of `keys` (float64), or None if any is missing."""
    if name is None or not heldout_path(name).exists():
        return None
    with np.load(heldout_path(name)) as stored:
        if not all(k in stored for k in keys):
            return None
        return [stored[k].astype(np.float64) for k in keys]


def save_samples(name: str, samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add 1000 draws of each method of `samples` to the data set's side file (methods of other
    runs are kept); returns every method's stored draws."""
    return update_npz(FIGURES / f"{name}_samples.npz",
                      {m: np.asarray(x[:1000]) for m, x in samples.items()})


# ----------------------------------------------------------------------------------------------
# everything stored, for the renderer
# ----------------------------------------------------------------------------------------------


def _commands(part: dict) -> set[str]:
    """The commands behind a results file's data-set entries, method rows and solver tables."""
    datasets = part.get("datasets", {}).values()
    return ({e["command"] for e in datasets if "command" in e}
            | {r["command"] for e in datasets for r in e["methods"].values() if "command" in r}
            | {e["command"] for e in part.get("solver", {}).values() if "command" in e})


def load_all() -> dict:
    """Every stored run (`results*.json`, oldest first, so a later run's data set replaces an
    earlier one's; one throughput row per dimension), the configuration study, the budget
    curves and the hand-written analysis, as one dict for `density_report.render`."""
    merged: dict = {"datasets": {}, "solver": {}}
    commands, throughput = set(), {}
    for path in sorted(FIGURES.glob("results*.json"), key=lambda p: p.stat().st_mtime):
        part = read_results(path)
        merged["datasets"].update(part["datasets"])
        merged["solver"].update(part["solver"])
        for name, row in part["throughput"].items():
            throughput[row["dim"]] = (name, row)
        commands |= _commands(part)
        merged["meta"] = part["meta"]
    for _, row in throughput.values():
        commands |= {row["command"]}
    merged["throughput"] = dict(throughput[d] for d in sorted(throughput))
    merged["meta"] = dict(merged["meta"], commands=sorted(commands))
    merged["configs"] = read_json(CONFIGS).get("datasets", {})
    merged["curves"] = read_json(CURVES).get("curves", {})
    if ANALYSIS.exists():
        merged["analysis"] = ANALYSIS.read_text()
    return merged
