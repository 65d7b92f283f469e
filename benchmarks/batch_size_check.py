"""Batch size at an equal training budget: does a smaller batch help `nsi.fit`, and flowjax too?

At a fixed number of optimiser steps batches of 256, 512 and 1024 give the same held-out NLL
(docs/guide.md), but a step on 256 points costs less than half a step on 512 (cache-sized
matrices), so at equal CPU seconds the smaller batch sees more data. This script trains
numpyro_si (`nsi.fit` defaults) and a flowjax flow (the density benchmark's settings) at each
batch size on one data set of `benchmarks/density.py`, each with the main table's budget for
that data set's group (CPU seconds, calibrated as there), and prints the held-out NLL and the
paired difference to the first batch size of the same method (same held-out points; the s.e.
is that of the per-point differences).

With `--seeds K` every fit is repeated with K training keys (the first is the benchmark's; the
split and held-out points stay), and a summary line gives the mean NLL and the standard
deviation between seeds: the training noise that the held-out standard error does not include.

Run: `.venv/bin/python benchmarks/batch_size_check.py checkerboard` (~6 minutes on an idle core);
options: `--batches 512,256`, `--flowjax coupling` (or `maf`, or `none`), `--budget SECONDS`,
`--seeds K`.
"""
import argparse
import os
import sys

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _density_data import ALL_DATASETS, load_dataset, standard_error  # noqa: E402
from _density_eval import evaluate  # noqa: E402
from _density_methods import train_flowjax, train_siflow  # noqa: E402
from density import BUDGETS  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=ALL_DATASETS)
    parser.add_argument("--batches", default="512,256")
    parser.add_argument("--flowjax", default="coupling", choices=["coupling", "maf", "none"])
    parser.add_argument("--budget", type=float, default=None,
                        help="training CPU seconds (default: the main table's for the data set)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="training keys per fit")
    args = parser.parse_args(argv)
    data = load_dataset(args.dataset, seed=args.seed)
    budget = args.budget or BUDGETS[data.group]
    batches = [int(b) for b in args.batches.split(",")]
    def key(s):  # s = 0: the density benchmark's training key
        return jax.random.key(args.seed + 1 + 1000 * s)

    methods = {"numpyro_si": lambda b, s: train_siflow(
        key(s), data.train, budget, method=f"numpyro_si_b{b}", options=dict(batch_size=b))}
    if args.flowjax != "none":
        methods[f"flowjax {args.flowjax}"] = lambda b, s: train_flowjax(
            key(s), data.train, budget, kind=args.flowjax, batch_size=b,
            method=f"flowjax_{args.flowjax}_b{b}")
    print(f"{args.dataset}: d = {data.dim}, {data.train.shape[0]} training points, budget"
          f" {budget:.0f} CPU s\n")
    print("| method | batch | seed | steps | fit CPU s | held-out NLL | vs first batch (paired) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    summary = []
    for method, train in methods.items():
        for s in range(args.seeds):
            first = None
            for b in batches:
                row, _, values = evaluate(train(b, s), data, jax.random.key(args.seed + 2),
                                          n_samples=0)
                first = values if first is None else first
                diff = first - values  # NLL(this) - NLL(first), per point
                summary.append((method, b, row["nll"]))
                print(f"| {method} | {b} | {s} | {row['steps']} | {row['train_cpu']:.0f} |"
                      f" {row['nll']:.3f} ± {row['nll_se']:.3f} |"
                      f" {diff.mean():+.4f} ± {standard_error(diff):.4f} |", flush=True)
                jax.clear_caches()
    if args.seeds > 1:
        print()
        for method in methods:
            for b in batches:
                nll = np.array([v for m, bb, v in summary if m == method and bb == b])
                print(f"{method}, batch {b}: mean NLL over {len(nll)} seeds {nll.mean():.3f},"
                      f" sd between seeds {nll.std(ddof=1):.3f}")


if __name__ == "__main__":
    main()
