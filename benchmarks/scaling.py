"""How `log_prob` scales with the number of points: time, throughput and peak memory, with the
batches of `_solvers.POINTS_PER_BATCH` points that keep memory bounded.

The flow is the exact oracle flow to an 8-component Gaussian mixture in d dimensions (closed-form
velocity, docs/math.md section 6; no training, so the numbers are the solver's alone), with the
default settings (adaptive Tsit5, exact divergence, float32). For each N a fresh Python process
draws N points of the mixture, evaluates `flow.log_prob` on all of them once to compile and once
more to time, and reports the wall-clock of the timed call, points per second and the process's
peak resident memory (`resource.getrusage(...).ru_maxrss`, which includes JAX and the compiled
code: the baseline row, N = 1000, shows that share).

Run: `.venv/bin/python benchmarks/scaling.py` (N up to 10^6, d = 2 and 8; tens of minutes on 2
cores); `--quick` for N up to 10^4 that writes nothing. The table goes to `docs/benchmarks.md`
between `<!-- scaling:start -->` and `<!-- scaling:end -->`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_io import write_docs_region  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
START, END = "<!-- scaling:start -->", "<!-- scaling:end -->"

CHILD = r"""
import json, resource, sys, time
import jax, jax.numpy as jnp
import numpyro_si as nsi
from numpyro_si._solvers import POINTS_PER_BATCH
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle

n, dim = int(sys.argv[1]), int(sys.argv[2])
mixture = GaussianMixture.random(jax.random.key(0), dim, 8)
oracle = GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), mixture)
flow = nsi.SIFlow(oracle.interpolant, oracle.velocity, dim=dim)
x, _ = mixture.sample(jax.random.key(1), n)
log_prob = jax.jit(flow.log_prob)
jax.block_until_ready(log_prob(x))  # compile
tic = time.perf_counter()
values = jax.block_until_ready(log_prob(x))
seconds = time.perf_counter() - tic
print(json.dumps({"n": n, "dim": dim, "seconds": seconds,
                  "finite": bool(jnp.all(jnp.isfinite(values))),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "points_per_batch": POINTS_PER_BATCH}))
"""


def measure(n: int, dim: int) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(n), str(dim)], capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def render(rows, load, command):
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    lines = [
        "## log_prob at scale: time and peak memory against the number of points",
        "",
        f"Command: {command}. Machine: {machine}; 1-minute load average {load[0]:.2f} at the"
        f" start, {load[1]:.2f} at the end. The exact oracle flow to an 8-component Gaussian"
        " mixture (no training), default settings (adaptive Tsit5, exact divergence, float32);"
        f" batches of {rows[0]['points_per_batch']} points. Peak memory is the whole process's"
        " (JAX and compiled code included); each row is a fresh process. The script's"
        " docstring has the set-up.",
        "",
        "| d | points | seconds | points per second | peak memory (MB) | all finite |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['dim']} | {row['n']:,} | {row['seconds']:.1f} |"
            f" {row['n'] / row['seconds']:,.0f} | {row['peak_mb']:.0f} | {row['finite']} |"
        )
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N up to 10^4; writes nothing")
    parser.add_argument("--dims", default="2,8")
    args = parser.parse_args(argv)
    sizes = (1000, 10_000) if args.quick else (1000, 10_000, 100_000, 1_000_000)
    load_start = os.getloadavg()[0]
    rows = []
    for dim in (int(d) for d in args.dims.split(",")):
        for n in sizes:
            rows.append(measure(n, dim))
            print(rows[-1], flush=True)
    command = "`.venv/bin/python benchmarks/scaling.py" + (
        f" --dims {args.dims}`" if args.dims != "2,8" else "`")
    lines = render(rows, (load_start, os.getloadavg()[0]), command)
    print("\n".join(lines))
    if not args.quick:
        write_docs_region(OUT, START, END, lines)


if __name__ == "__main__":
    main()
