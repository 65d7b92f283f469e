"""The cost of one global flow move's proposal: a draw and its log q by two solves (the default,
`proposal_density="backward"`: the ODE sampler, then `log_prob`'s backward solve with the exact
divergence), by one (`"forward"`: the divergence integrated along the draw's own forward solve,
`SIFlow.sample_with_log_prob`), or by the flow's fixed-step map and that map's exact density
(`"map"`, with the map `SIFlow.with_fast_map` chooses); and, for `"map"` against the default,
the cost of log q at a state that local moves reached (Newton's inversion of the map against
the backward likelihood solve).

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
from numpyro_si.inference.independence import flow_log_density, flow_proposal

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
    flow_map, _ = flow.with_fast_map(jax.random.key(3))  # the fixed-step map "map" scores
    runs = {how: proposals(flow, how) for how in ("backward", "forward")}
    runs["map"] = proposals(flow_map, "map")
    keys = jax.random.split(jax.random.key(2), N_CHAINS)
    outputs = {how: jax.block_until_ready(run(keys)) for how, run in runs.items()}  # compile
    # log q at states the chains reached by local moves (here: the forward draws, which are not
    # draws of the map): a backward density solve, or the map's inversion
    y = outputs["forward"][0]
    at_states = {
        "backward": jax.jit(jax.vmap(lambda x: flow_log_density(flow, x, "backward"))),
        "map": jax.jit(jax.vmap(lambda x: flow_log_density(flow_map, x, "map"))),
    }
    states_out = {how: jax.block_until_ready(fn(y)) for how, fn in at_states.items()}
    times = {how: [] for how in (*runs, "backward at states", "map at states")}
    names = list(runs)
    for r in range(repeats):
        order = names[r % 3:] + names[:r % 3]  # rotated, so load falls on all alike
        keys_r = jax.random.split(jax.random.key(100 + r), N_CHAINS)
        for how in order:
            tic = time.perf_counter()
            jax.block_until_ready(runs[how](keys_r))
            times[how].append(time.perf_counter() - tic)
        for how in (("backward", "map") if r % 2 == 0 else ("map", "backward")):
            tic = time.perf_counter()
            jax.block_until_ready(at_states[how](y))
            times[f"{how} at states"].append(time.perf_counter() - tic)
    _, log_q_forward, _, _ = outputs["forward"]
    log_q_backward = eqx.filter_jit(lambda f, x: f.log_prob(x))(flow, y)
    ratios = np.array(times["forward"]) / np.array(times["backward"])
    map_ratios = np.array(times["map"]) / np.array(times["backward"])
    state_ratios = np.array(times["map at states"]) / np.array(times["backward at states"])
    return {
        "dim": dim,
        "backward_ms": 1e3 * float(np.median(times["backward"])),
        "forward_ms": 1e3 * float(np.median(times["forward"])),
        "ratio": (float(np.median(ratios)), float(ratios.min()), float(ratios.max())),
        "steps_backward": float(jnp.mean(outputs["backward"][3])),
        "steps_forward": float(jnp.mean(outputs["forward"][3])),
        "log_q_gap": float(jnp.max(jnp.abs(log_q_forward - log_q_backward))),
        "map_steps": int(flow_map.settings.sampler.n_steps),
        "map_ms": 1e3 * float(np.median(times["map"])),
        "map_ratio": (float(np.median(map_ratios)), float(map_ratios.min()),
                      float(map_ratios.max())),
        "states_backward_ms": 1e3 * float(np.median(times["backward at states"])),
        "states_map_ms": 1e3 * float(np.median(times["map at states"])),
        "states_ratio": (float(np.median(state_ratios)), float(state_ratios.min()),
                         float(state_ratios.max())),
        "map_failed": int(jnp.sum(outputs["map"][2]) + jnp.sum(states_out["map"][1])),
    }


def render(rows, repeats, load):
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()},"
               f" jax {jax.__version__}")
    lines = [
        "## Global flow moves: one forward solve, or the fixed-step map's exact density, against"
        " sample-then-backward",
        "",
        f"Command: `.venv/bin/python benchmarks/global_move.py --repeats {repeats}`. Machine:"
        f" {machine}; 1-minute load average {load[0]:.2f} at the start, {load[1]:.2f} at the end"
        " (the proposals timed in rotation, so load falls on all alike; compare the ratios)."
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
    lines += [
        "",
        "`proposal_density=\"map\"`: the flow's `with_fast_map` map (explicit midpoint steps)"
        " scored with its exact density. A proposal, and log q at states the chains reached by"
        " local moves (there: the forward draws; the map is inverted by Newton's method, the"
        " default solves the likelihood backward), each per call of 16 points.",
        "",
        "| d | midpoint steps | map proposal: ms per call | map / backward proposal (median,"
        " range) | log q at moved states, backward: ms | map: ms | map / backward (median,"
        " range) | failed map densities |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        median, low, high = row["map_ratio"]
        s_median, s_low, s_high = row["states_ratio"]
        lines.append(
            f"| {row['dim']} | {row['map_steps']} | {row['map_ms']:.1f} |"
            f" {median:.2f} ({low:.2f}-{high:.2f}) | {row['states_backward_ms']:.1f} |"
            f" {row['states_map_ms']:.1f} | {s_median:.2f} ({s_low:.2f}-{s_high:.2f}) |"
            f" {row['map_failed']} of {2 * N_CHAINS} |"
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
