"""Density estimation, side by side: numpyro_si's `fit` against flowjax and a NumPyro BNAF.

Run (one process, so every method sees the same machine state):

    .venv/bin/python benchmarks/density.py                      # full run, ~60-75 min on 2 cores
    .venv/bin/python benchmarks/density.py --quick --no-docs    # smoke run, a few minutes
    .venv/bin/python benchmarks/density.py --datasets checkerboard,digits --budget 30
    .venv/bin/python benchmarks/density.py --datasets '' --budget-curve checkerboard \
        --curve-budgets 40,120,360 --no-docs     # held-out NLL against training budget
    .venv/bin/python benchmarks/density.py --seeds 3  # three training keys for numpyro_si and
        # both flowjax flows (the goal verdicts then compare means over keys; ~+50 min)
    .venv/bin/python benchmarks/density.py --datasets sbibm_gaussian_linear --solver-only
        # refit numpyro_si's defaults and redo that data set's solver table only
    .venv/bin/python benchmarks/density_report.py   # re-render the docs from the stored results

Methods, solver variants and configurations are named by their ids (`--methods
numpyro_si,flowjax_maf`; `_density_methods.METHODS`, `_density_studies.SOLVER_VARIANTS` and
`CONFIG_STUDY`); their display labels belong to `density_report.py`.

Every method gets the same training budget per data set: 40 s on 2-d sets, 60 s on the
10-d posteriors and the real data, in process CPU seconds with one XLA thread (`--clock wall`
for wall-clock; `--budget` overrides). For each data set and
method it reports held-out NLL (nats, ± standard error), training time and steps, log_prob and
sampling throughput (points/s, compiled, after a warm-up call) and, for numpyro_si, the mean
number of vector-field evaluations per log_prob and per sample. Two further tables: the
likelihood solver's cost/accuracy trade-off (numpyro_si against a flowjax coupling-flow
log_prob), and training steps per second at equal batch size and parameter count; optional
ones: fit configurations at equal steps (`--config-study`), NLL against budget (`--budget-curve`).

This script measures and stores (`_density_store`: `docs/figures/density/results.json`,
`configs.json`, `curves.json` and per-data-set side files; a run on a subset of data sets or
methods updates only those entries), draws figures of samples next to data
(`docs/figures/density/*.png`), and renders the tables into `docs/benchmarks.md` between the
markers `<!-- density:start -->` and `<!-- density:end -->` (`density_report.py`).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

# One XLA thread per process (set before jax is imported): on shared cores a multi-threaded
# runtime's CPU time includes spin-waiting, so CPU-second budgets were not reproducible; with one
# thread, CPU time is compute. Every method runs under the same setting. Override by exporting
# XLA_FLAGS yourself.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import jax  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import density_report  # noqa: E402
from _density_data import ALL_DATASETS, Dataset, load_dataset  # noqa: E402
from _density_eval import evaluate, more_keys  # noqa: E402
from _density_methods import METHODS, set_clock  # noqa: E402
from _density_store import (  # noqa: E402
    CONFIGS,
    CURVES,
    FIGURES,
    KEY_MEAN,
    RESULTS,
    ROOT,
    load_all,
    merge_configs,
    merge_curve,
    read_results,
    save_heldout,
    save_samples,
    write_results,
)
from _density_studies import (  # noqa: E402
    CONFIG_STUDY,
    THROUGHPUT_DIMS,
    budget_curve,
    config_study,
    flop_counts,
    solver_study,
    throughput_study,
)

import numpyro_si as nsi  # noqa: E402

BUDGETS = {"2d": 40.0, "posterior": 60.0, "real": 60.0}
QUICK_BUDGETS = {"2d": 8.0, "posterior": 10.0, "real": 10.0}


def code_version() -> str:
    """The numpyro_si commit benchmarked, and whether its working tree had other changes."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "numpyro_si"], cwd=ROOT,
                               text=True, capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"commit {head}" + (" with uncommitted changes in numpyro_si/" if dirty else "")


def machine_description() -> str:
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    import flowjax
    import numpyro

    return (
        f"{cpu}, {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} when it started), "
        f"{platform.system()} {platform.machine()}, Python {sys.version.split()[0]}, "
        f"XLA_FLAGS='{os.environ.get('XLA_FLAGS', '')}', "
        f"jax {jax.__version__} ({jax.default_backend()}), numpyro {numpyro.__version__}, "
        f"flowjax {getattr(flowjax, '__version__', '?')}, numpyro_si {nsi.__version__}, float32"
    )


# ----------------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------------


def measure_methods(data: Dataset, methods: list[str], budget: float, args, command: str):
    """Train and evaluate every method id of `methods` on `data`: (rows by method id, samples by
    method id, held-out log densities by side-file entry, numpyro_si's default flow or None)."""
    rows, samples, heldout, default_flow = {}, {}, {}, None
    for method in methods:
        key = jax.random.key(args.seed + 1)
        load_start = os.getloadavg()[0]
        trained = METHODS[method](key, data.train, budget)
        row, drawn, values = evaluate(trained, data, jax.random.key(args.seed + 2))
        row["command"] = command
        row["run"] = args.run_id
        row["load"] = [load_start, os.getloadavg()[0]]  # 1-minute load average, start and end
        rows[method] = row
        heldout[method] = values
        if drawn is not None:
            samples[method] = drawn
        if method == "numpyro_si":
            default_flow = trained.model
        print(
            f"  {method:18s} params {row['params']:>7d}  train {row['train_time']:5.1f}s"
            f" (cpu {row['train_cpu']:5.1f}s)"
            f" ({row['steps']} steps)  NLL {row['nll']:.3f} ± {row['nll_se']:.3f}"
            f"  log_prob {row['log_prob_per_s']:9.0f}/s"
            f"  sample {row.get('sample_per_s', float('nan')):9.0f}/s"
            f"  NFE {row.get('nfe_log_prob') or float('nan'):.1f}"
            f" / {row.get('nfe_sample', float('nan')):.1f}",
            flush=True,
        )
        if args.seeds > 1 and method in args.seed_methods:
            row["nll_keys"], extra_cpu, mean_values = more_keys(
                method, key, data, budget, values, args.seeds)
            row["train_cpu_keys"] = [row["train_cpu"], *extra_cpu]
            if mean_values is not None:
                heldout[method + KEY_MEAN] = mean_values
    return rows, samples, heldout, default_flow


def measure_dataset(name: str, data: Dataset, budget: float, args, command: str,
                    results: dict) -> None:
    """The main table's rows of one data set and its solver study, into `results` (and, unless
    --quick, the side files and figure)."""
    print(f"\n== {name}: d={data.dim}, train {data.train.shape[0]}, test {data.test.shape[0]},"
          f" budget {budget:.0f} s", flush=True)
    rows, samples, heldout, default_flow = measure_methods(data, args.methods, budget, args,
                                                           command)
    if not args.solver_only:  # --solver-only: the stored rows and figures stay
        results["datasets"][name] = {
            "dim": data.dim, "n_train": int(data.train.shape[0]),
            "n_test": int(data.test.shape[0]), "description": data.description,
            "entropy": data.entropy, "notes": data.notes, "budget": budget, "methods": rows,
            "command": command,
        }
        if not args.quick:  # a smoke run's figures would replace the real ones
            # samples of methods run by other invocations (--methods subsets) are kept in the
            # side file, so the figure always shows every method measured on the data set
            density_report.save_figure(name, data.test, save_samples(name, samples),
                                       FIGURES / f"{name}.png")
            save_heldout(name, heldout)
    if not args.no_studies and default_flow is not None:
        variants, flowjax_rate = solver_study(default_flow, data)
        results["solver"][name] = {"dim": data.dim, "variants": variants,
                                   "flowjax_log_prob_per_s": flowjax_rate,
                                   "flops": flop_counts(default_flow, data.dim),
                                   "command": command}
        for variant, row in variants.items():
            print(f"    solver {variant:14s} NLL {row['nll']:.3f}  max change"
                  f" {row['max_abs_change']:.1e}  NFE {row['nfe_log_prob']:.1f}"
                  f"  {row['log_prob_per_s']:.0f}/s", flush=True)


def measure_configs(names: list[str], loaded: dict, args, command: str) -> None:
    for name in names:
        data = loaded.get(name) or load_dataset(name, quick=args.quick, seed=args.seed)
        print(f"\n== configurations on {name}, {args.config_steps} steps", flush=True)
        rows = config_study(data, args.config_steps, args.configs or None)
        if not args.quick:
            merge_configs(CONFIGS, name, rows, command, known=list(CONFIG_STUDY))


def measure_curves(names: list[str], loaded: dict, args, command: str, results: dict) -> None:
    for name in names:
        if args.curve_train:
            data = load_dataset(name, quick=args.quick, seed=args.seed, n_train=args.curve_train)
        else:
            data = loaded.get(name) or load_dataset(name, quick=args.quick, seed=args.seed)
        print(f"\n== NLL against training budget on {name}: budgets {args.curve_budgets}",
              flush=True)
        rows = budget_curve(data, args.curve_budgets, args.curve_methods, args.seed,
                            args.curve_flowjax_patience)
        curve = f"{name}_n{args.curve_train}" if args.curve_train else name
        results.setdefault("curves", {})[curve] = merge_curve(
            CURVES, curve, rows, command, write=not args.quick, dataset=name,
            n_train=int(data.train.shape[0]), curve_train=args.curve_train,
            entropy=data.entropy, machine=results["meta"]["machine"],
        )


def measure_throughput(loaded: dict, command: str, results: dict) -> list[str]:
    """The training-throughput study on one loaded data set per dimension of THROUGHPUT_DIMS;
    returns the data sets measured."""
    by_dim = {}
    for name, data in loaded.items():
        if data.dim in THROUGHPUT_DIMS:
            by_dim.setdefault(data.dim, (name, data))
    if not by_dim:
        return []
    print("\n== training throughput", flush=True)
    rows = throughput_study(dict(by_dim.values()))
    results["throughput"] = {name: dict(row, command=command) for name, row in rows.items()}
    return list(rows)


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------


def done_in_run(stored: dict, name: str, args) -> bool:
    """Whether every method of `args.methods` has a stored row of this run on data set `name`."""
    rows = stored["datasets"].get(name, {}).get("methods", {})
    return all(rows.get(m, {}).get("run") == args.run_id for m in args.methods)


def _ids(text: str, sep: str = ",") -> list[str]:
    return [part.strip() for part in text.split(sep) if part.strip()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small data and budgets of ~10 s: a smoke run of the whole pipeline")
    parser.add_argument("--datasets", default=",".join(ALL_DATASETS),
                        help=f"comma-separated subset of: {','.join(ALL_DATASETS)}")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated method ids, a subset of: {','.join(METHODS)}")
    parser.add_argument("--budget", type=float, default=None,
                        help="training seconds per method and data set (default: by group)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="what the budget measures: process CPU seconds (default; robust on"
                        " shared cores) or wall-clock seconds")
    parser.add_argument("--no-studies", action="store_true",
                        help="skip the solver and training-throughput tables")
    parser.add_argument("--config-study", default="",
                        help="comma-separated data sets on which to compare fit configurations"
                        " (CONFIG_STUDY) at --config-steps optimiser steps")
    parser.add_argument("--config-steps", type=int, default=8000)
    parser.add_argument("--configs", default="",
                        help="comma-separated CONFIG_STUDY ids: run only these configurations"
                        f" (stored rows of the others are kept); ids: {','.join(CONFIG_STUDY)}")
    parser.add_argument("--budget-curve", default="",
                        help="comma-separated data sets on which to train --curve-methods at"
                        " every budget of --curve-budgets (held-out NLL against budget)")
    parser.add_argument("--curve-budgets", default="40,120,360",
                        help="comma-separated training budgets in seconds (--clock)")
    parser.add_argument("--curve-methods", default="numpyro_si,flowjax_coupling,flowjax_maf",
                        help="comma-separated method ids")
    parser.add_argument("--curve-train", type=int, default=None,
                        help="training-set size of a synthetic set in the budget curve (default"
                        " the main table's 20 000; the held-out points are the same)")
    parser.add_argument("--curve-flowjax-patience", type=float, default=None,
                        help="in the budget curve, flowjax's patience as this fraction of its"
                        " planned epochs (default: the main table's rule, at least 2000 steps or a"
                        " fifth of the run)")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="JSON file this run adds its results to; the docs are rendered from"
                        " every docs/figures/density/results*.json, so runs on disjoint data"
                        " sets can go side by side (e.g. --results .../results-highd.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=3,
                        help="train each of --seed-methods with this many training keys (the"
                        " first is the main table's fit; the others add their held-out NLLs,"
                        " and the goal verdicts compare means over keys)")
    parser.add_argument("--seed-methods", default=",".join(METHODS),
                        help="method ids that --seeds applies to (comma-separated)")
    parser.add_argument("--solver-only", action="store_true",
                        help="fit numpyro_si's defaults to redo the solver table only: the main"
                        " table's rows and figures are left as stored")
    parser.add_argument("--resume", action="store_true",
                        help="continue the stored run (the store's run id): data sets whose"
                        " rows all come from it are skipped")
    parser.add_argument("--allow-mixed-runs", action="store_true",
                        help="render the main table even if its rows come from several runs"
                        " (each run is named in the header); without it that is refused")
    parser.add_argument("--no-throughput", action="store_true",
                        help="skip the training-throughput table (solver table still runs)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    for option in ("datasets", "methods", "config_study", "budget_curve", "curve_methods",
                   "seed_methods", "configs"):
        setattr(args, option, _ids(getattr(args, option)))
    args.curve_budgets = [float(b) for b in _ids(args.curve_budgets)]
    known = [(args.datasets + args.config_study + args.budget_curve, ALL_DATASETS, "data set"),
             (args.methods + args.curve_methods + args.seed_methods, METHODS, "method"),
             (args.configs, CONFIG_STUDY, "configuration")]
    for given, ids, what in known:
        for item in given:
            if item not in ids:
                parser.error(f"unknown {what} {item!r}; choose from {', '.join(ids)}")
    if args.solver_only:  # only what the solver table needs: the default flow
        args.methods = ["numpyro_si"]
    return args


def main(argv=None):
    args = parse_args(argv)
    set_clock(args.clock)
    budgets = dict(QUICK_BUDGETS if args.quick else BUDGETS)
    if args.budget is not None:
        budgets = dict.fromkeys(budgets, args.budget)
    # shlex.join: an empty argument (--datasets "") shows as '' instead of vanishing
    command = "python benchmarks/density.py" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")

    store = args.results
    stored = read_results(store)
    args.run_id = time.strftime("%Y%m%dT%H%M%S")
    if args.resume:
        if "run" not in stored.get("meta", {}):
            raise SystemExit(f"--resume: {store} holds no run to continue")
        args.run_id = stored["meta"]["run"]
    results = {"datasets": {}, "solver": {}, "throughput": {}}
    results["meta"] = {
        "run": args.run_id, "machine": machine_description(), "commands": [command],
        "budgets": ", ".join(f"{k} {v:.0f}" for k, v in budgets.items()),
        "clock": args.clock, "quick": args.quick, "code": code_version(),
    }
    print(results["meta"]["machine"], flush=True)
    loaded = {}
    for name in args.datasets:
        data = loaded[name] = load_dataset(name, quick=args.quick, seed=args.seed)
        if not args.methods or (args.resume and done_in_run(stored, name, args)):
            continue
        measure_dataset(name, data, budgets[data.group], args, command, results)
        if not args.quick:
            write_results(store, results, datasets=[name] if name in results["datasets"] else [],
                          solver=[name] if name in results["solver"] else [], throughput=[])
        # Every fit compiles afresh; a long run accumulates compiled executables until LLVM cannot
        # map more code ("Cannot allocate memory"), so drop them between data sets.
        jax.clear_caches()
    measure_configs(args.config_study, loaded, args, command)
    measure_curves(args.budget_curve, loaded, args, command, results)
    measured = []
    if not (args.no_studies or args.no_throughput):
        measured = measure_throughput(loaded, command, results)
    if not args.quick:
        write_results(store, results, datasets=[], solver=[], throughput=measured)
        results = load_all()
    print("\n" + density_report.render(results, allow_mixed=args.allow_mixed_runs))
    if not args.no_docs:
        density_report.write_docs(results, allow_mixed=args.allow_mixed_runs)
        print(f"\nwrote {density_report.DOCS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
