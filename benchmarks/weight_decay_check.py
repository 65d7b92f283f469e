"""Weight decay at equal optimiser steps: does `nsi.fit(..., weight_decay=w)` help or hurt?

For one data set of `benchmarks/density.py` (or `sbibm_slcp` / `sbibm_lotka_volterra`, sbibm
reference posteriors of 5 and 4 dimensions that the main table does not use), this fits
`nsi.fit` with its defaults and with each weight decay, at the same number of optimiser steps
and with the same training keys (`jax.random.fold_in(jax.random.key(0), k)`, k = 0, 1, ...), and
prints the held-out NLL and its paired difference to the first weight decay of the same key (same
held-out points; the s.e. is that of the per-point differences), then the mean over keys.

Run: `.venv/bin/python benchmarks/weight_decay_check.py sbibm_gaussian_linear --steps 29568`
(~4 minutes on an idle core); options: `--weight-decays 0,0.1`, `--seeds K`. The step counts used
in docs/guide.md ("Weight decay") are those of the density table's default fits: checkerboard
26040, sbibm_gaussian_linear 29568, sbibm_bernoulli_glm 30576, digits 24000, breast_cancer 12000
(it stops early), sbibm_slcp 30000.
"""
import argparse
import os
import sys

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _density_data  # noqa: E402
from _density_methods import fit_siflow  # noqa: E402

EXTRA_SBIBM = {"sbibm_slcp": "slcp", "sbibm_lotka_volterra": "lotka_volterra"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=(*_density_data.ALL_DATASETS, *EXTRA_SBIBM))
    parser.add_argument("--steps", type=int, required=True, help="optimiser steps of every fit")
    parser.add_argument("--weight-decays", default="0,0.1")
    parser.add_argument("--seeds", type=int, default=2, help="training keys per weight decay")
    args = parser.parse_args(argv)
    if args.dataset in EXTRA_SBIBM:
        _density_data.SBIBM_TASKS.setdefault(args.dataset, EXTRA_SBIBM[args.dataset])
    data = _density_data.load_dataset(args.dataset)
    train, test = jnp.asarray(data.train), jnp.asarray(data.test)
    decays = [float(w) for w in args.weight_decays.split(",")]
    print(f"{args.dataset}: d = {data.dim}, {train.shape[0]} training / {test.shape[0]} held-out"
          f" points, {args.steps} steps", flush=True)
    first = {}  # per key: the first weight decay's held-out log densities
    for decay in decays:
        nlls = []
        for k in range(args.seeds):
            key = jax.random.fold_in(jax.random.key(0), k)
            fit = fit_siflow(key, train, steps=args.steps, weight_decay=decay)
            values = np.asarray(jax.jit(jax.vmap(fit.flow.log_prob))(test))
            nlls.append(-values.mean())
            first.setdefault(k, values)
            diff = first[k] - values
            print(f"weight decay {decay:<6g} key {k}  CPU {fit.cpu:5.0f} s  steps"
                  f" {fit.steps:6d}  NLL {-values.mean():8.3f} ±"
                  f" {values.std() / np.sqrt(values.size):.3f}  vs weight decay {decays[0]:g}"
                  f" {diff.mean():+.3f} ± {diff.std() / np.sqrt(diff.size):.3f}", flush=True)
        spread = np.std(nlls, ddof=1) if len(nlls) > 1 else 0.0
        print(f"weight decay {decay:<6g} mean over {len(nlls)} keys {np.mean(nlls):.4f}"
              f" (s.d. {spread:.4f})", flush=True)


if __name__ == "__main__":
    main()
