"""Batch size at an equal training budget: does a smaller batch help `nsi.fit`, and flowjax too?

At a fixed number of optimiser steps batches of 256, 512 and 1024 give the same held-out NLL
(docs/guide.md), but a step on 256 points costs less than half a step on 512 (cache-sized
matrices), so at equal CPU seconds the smaller batch sees more data. This script trains
numpyro_si (`nsi.fit` defaults) and a flowjax flow (the density benchmark's settings) at each
batch size on one data set of `benchmarks/density.py`, each with the main table's budget for
that data set's group (CPU seconds, calibrated as there), and prints the held-out NLL and the
paired difference to the first batch size of the same method (same held-out points; the s.e.
is that of the per-point differences).

Run: `.venv/bin/python benchmarks/batch_size_check.py checkerboard` (~6 minutes on an idle core);
options: `--batches 512,256`, `--flowjax coupling` (or `maf`, or `none`), `--budget SECONDS`.
"""
import argparse
import os
import sys

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import density  # noqa: E402
from _density_data import load_dataset, standard_error  # noqa: E402
from _density_methods import train_flowjax, train_siflow  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=density.ALL_DATASETS)
    parser.add_argument("--batches", default="512,256")
    parser.add_argument("--flowjax", default="coupling", choices=["coupling", "maf", "none"])
    parser.add_argument("--budget", type=float, default=None,
                        help="training CPU seconds (default: the main table's for the data set)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = load_dataset(args.dataset, seed=args.seed)
    budget = args.budget or density.BUDGETS[data.group]
    batches = [int(b) for b in args.batches.split(",")]
    methods = {"numpyro_si": lambda b: train_siflow(
        jax.random.key(args.seed + 1), data.train, budget, label=f"numpyro_si b{b}",
        options=dict(batch_size=b))}
    if args.flowjax != "none":
        methods[f"flowjax {args.flowjax}"] = lambda b: train_flowjax(
            jax.random.key(args.seed + 1), data.train, budget, kind=args.flowjax, batch_size=b,
            label=f"flowjax {args.flowjax} b{b}")
    print(f"{args.dataset}: d = {data.dim}, {data.train.shape[0]} training points, budget"
          f" {budget:.0f} CPU s\n")
    print("| method | batch | steps | fit CPU s | held-out NLL | vs first batch (paired) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for method, train in methods.items():
        first = None
        for b in batches:
            row, _, values = density.evaluate(train(b), data, jax.random.key(args.seed + 2),
                                              n_samples=0)
            first = values if first is None else first
            diff = first - values  # NLL(this) - NLL(first), per point
            print(f"| {method} | {b} | {row['steps']} | {row['train_cpu']:.0f} |"
                  f" {row['nll']:.3f} ± {row['nll_se']:.3f} |"
                  f" {diff.mean():+.4f} ± {standard_error(diff):.4f} |", flush=True)
            jax.clear_caches()


if __name__ == "__main__":
    main()
