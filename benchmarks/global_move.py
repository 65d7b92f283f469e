"""The cost of one global flow move's proposal: a draw and its log q by two solves (the default,
`proposal_density="backward"`: the ODE sampler, then `log_prob`'s backward solve with the exact
divergence) or by one (`"forward"`: the divergence integrated along the draw's own forward solve,
`SIFlow.sample_with_log_prob`).

For each dimension d, a flow is fitted (`nsi.fit`, 1500 steps, the adaptive scheme's network
`adaptive.ADAPTIVE_NETWORK`) to 5000 draws of a two-mode Gaussian mixture in d dimensions and set
to the proposal settings of `SIFlowBoost` in float32 (ODE sampler, exact divergence, rtol = atol
= 1e-5). Both proposals are jitted over 16 chains (`jax.vmap`, one key per chain) and timed
alternately (`--repeats` pairs, after one compiling call each), so machine load falls on both
alike; the table gives the median time per call of 16 proposals, the ratio forward / backward
(per pair, median and range), the mean solver steps per proposal, and the largest
|log q forward - log q backward| at the forward draws (both are the same ODE density, each to the
solver's tolerance).

Run: `.venv/bin/python benchmarks/global_move.py` (a few minutes on 2 cores). The table goes to
`docs/benchmarks.md` between `<!-- global-move:start -->` and `<!-- global-move:end -->`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import numpyro_si as nsi
from numpyro_si.inference import adaptive
from numpyro_si.inference.independence import flow_proposal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_io import write_docs_region  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
START, END = "<!-- global-move:start -->", "<!-- global-move:end -->"
N_CHAINS = 16


def two_mode_data(key, dim, n=5000):
    key_mode, key_noise = jax.random.split(key)
    centre = jnp.full(dim, 3.0 / np.sqrt(dim))
    sign = jnp.where(jax.random.bernoulli(key_mode, 0.3, (n, 1)), -1.0, 1.0)
    return sign * centre + 0.5 * jax.random.normal(key_noise, (n, dim))


def proposals(flow, how):
    def one(key):
        y, log_q, failed, steps = flow_proposal(key, flow, lambda v: v, how)
        return y, log_q, failed, steps

    return jax.jit(jax.vmap(one))


def measure(dim, repeats, fit_steps):
    data = two_mode_data(jax.random.key(dim), dim)
    flow, _ = nsi.fit(jax.random.key(1), data, num_steps=fit_steps,
                      network=adaptive.ADAPTIVE_NETWORK, show_progress=False)
    flow = flow.with_settings(sampler="ode", rtol=1e-5, atol=1e-5)
    runs = {how: proposals(flow, how) for how in ("backward", "forward")}
    keys = jax.random.split(jax.random.key(2), N_CHAINS)
    outputs = {how: jax.block_until_ready(run(keys)) for how, run in runs.items()}  # compile
    times = {how: [] for how in runs}
    for r in range(repeats):
        order = ("backward", "forward") if r % 2 == 0 else ("forward", "backward")
        keys_r = jax.random.split(jax.random.key(100 + r), N_CHAINS)
        for how in order:
            tic = time.perf_counter()
            jax.block_until_ready(runs[how](keys_r))
            times[how].append(time.perf_counter() - tic)
    y, log_q_forward, _, _ = outputs["forward"]
    log_q_backward = eqx.filter_jit(lambda f, x: f.log_prob(x))(flow, y)
    ratios = np.array(times["forward"]) / np.array(times["backward"])
    return {
        "dim": dim,
        "backward_ms": 1e3 * float(np.median(times["backward"])),
        "forward_ms": 1e3 * float(np.median(times["forward"])),
        "ratio": (float(np.median(ratios)), float(ratios.min()), float(ratios.max())),
        "steps_backward": float(jnp.mean(outputs["backward"][3])),
        "steps_forward": float(jnp.mean(outputs["forward"][3])),
        "log_q_gap": float(jnp.max(jnp.abs(log_q_forward - log_q_backward))),
    }


def render(rows, repeats, load):
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()},"
               f" jax {jax.__version__}")
    lines = [
        "## Global flow moves: one forward solve against sample-then-backward",
        "",
        f"Command: `.venv/bin/python benchmarks/global_move.py --repeats {repeats}`. Machine:"
        f" {machine}; 1-minute load average {load[0]:.2f} at the start, {load[1]:.2f} at the end"
        " (both proposals timed alternately, so load falls on both alike; compare the ratios)."
        f" {N_CHAINS} proposals per call (vmapped chains), float32, rtol = atol = 1e-5; the"
        " script's docstring has the set-up.",
        "",
        "| d | backward: ms per call | forward: ms per call | forward / backward (median, range)"
        " | solver steps (backward: the density solve) | solver steps (forward) |"
        " max \\|log q forward - log q backward\\| |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        median, low, high = row["ratio"]
        lines.append(
            f"| {row['dim']} | {row['backward_ms']:.1f} | {row['forward_ms']:.1f} |"
            f" {median:.2f} ({low:.2f}-{high:.2f}) | {row['steps_backward']:.1f} |"
            f" {row['steps_forward']:.1f} | {row['log_q_gap']:.1e} |"
        )
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="2,8,32")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--fit-steps", type=int, default=1500)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    rows = []
    for dim in (int(d) for d in args.dims.split(",")):
        rows.append(measure(dim, args.repeats, args.fit_steps))
        print(rows[-1], flush=True)
    lines = render(rows, args.repeats, (load_start, os.getloadavg()[0]))
    print("\n".join(lines))
    if not args.no_write:
        write_docs_region(OUT, START, END, lines)


if __name__ == "__main__":
    main()
