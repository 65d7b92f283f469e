"""Boosting a NumPyro model with eight modes and a constrained site, with no posterior draws:
`MCMC(SIFlowBoost(NUTS(model)))` against NUTS, from NumPyro's default starts and from chains all
in the smallest mode.

The model (exact mode weights by symmetry):

    x ~ N(0, 5^2 I_2),  s ~ LogNormal(0, 1),
    factor  log sum_k wx_k exp(-|x - c_k|^2 / (2 sd^2)),  c_k = (+-c, +-c),  c = 2, sd = 0.25
    factor  log sum_j ws_j exp(-(log s - m_j)^2 / (2 tau^2)),  m_j = -+1,  tau = 0.1

with wx = 0.1, 0.2, 0.3, 0.4 for the centres (-c,-c), (-c,+c), (+c,-c), (+c,+c) and ws = 0.3, 0.7
for s near e^-1 and e^+1. Every centre c_k has the same norm and the prior of u = log s (NumPyro's
unconstrained coordinate of the positive site, N(0, 1) with the Jacobian) is the same at m = +-1,
so the posterior's mode weights are exactly wx_k ws_j: eight modes, 0.03 to 0.28, separated by
barriers of about 32 nats (x) and 50 nats (log s).

Methods (4 chains, vectorized, the same warm-up and sampling iterations):

- `NUTS`: NumPyro's NUTS from its default starts (`init_to_uniform`: [-2, 2] in every
  unconstrained coordinate).
- `SIFlowBoost`: `SIFlowBoost(NUTS(model))` with no flow: the default `FlowLearning()` learns
  the flow during warm-up from chains started from the prior, tempered from the prior to the
  posterior (four rounds at beta = 0, 0.03, 0.1, 0.3, then three on the posterior), then
  freezes it; the MCMC chains start where learning ended.
- `SIFlowBoost, tempering=None`: the same with `FlowLearning(tempering=None)` (the three
  posterior rounds only).
- `NUTS, one-mode starts` and `SIFlowBoost, one-mode starts`: every chain (the learning chains
  included) starts in the smallest mode (x near (-c, -c), s near e^-1; weight 0.03).

Reported per method (mean ± sd over seeds, and per seed): the largest absolute error over the
eight mode weights, estimated from all chains' draws; the largest split R-hat over the three
coordinates (NumPyro's `split_gelman_rubin` on x and s); the modes visited by at least one
chain; target gradient evaluations of learning and of the MCMC run; wall-clock seconds.

Run: `.venv/bin/python benchmarks/many_modes.py` (3 seeds; `--quick` for a smoke run that writes
nothing; `--resume` continues a stored run). The table goes to `docs/benchmarks.md` between
`<!-- many-modes:start -->` and `<!-- many-modes:end -->`, results to
`docs/figures/many_modes/results.json`.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.diagnostics import split_gelman_rubin
from numpyro.infer import MCMC, NUTS

from numpyro_si.inference import FlowLearning, SIFlowBoost

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_io import finish_run, row_run_args, run_command, run_rows  # noqa: E402
from _bench_io import mean_sd as pm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "docs" / "figures" / "many_modes" / "results.json"
START, END = "<!-- many-modes:start -->", "<!-- many-modes:end -->"

C, SD, TAU = 2.0, 0.25, 0.1
CENTRES = np.array([[-C, -C], [-C, C], [C, -C], [C, C]])
WX = np.array([0.1, 0.2, 0.3, 0.4])
LOG_S_MODES = np.array([-1.0, 1.0])
WS = np.array([0.3, 0.7])
# joint mode index 4 j + k: k the x centre, j the s mode
TRUTH = (WS[:, None] * WX[None, :]).reshape(-1)
METHODS = ("NUTS", "SIFlowBoost", "SIFlowBoost, tempering=None", "NUTS, one-mode starts",
           "SIFlowBoost, one-mode starts")
N_CHAINS = 4


def model():
    x = numpyro.sample("x", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
    s = numpyro.sample("s", dist.LogNormal(0.0, 1.0))
    numpyro.factor("x_modes", jax.nn.logsumexp(
        jnp.log(WX) - 0.5 * jnp.sum((x - CENTRES) ** 2, axis=-1) / SD**2))
    numpyro.factor("s_modes", jax.nn.logsumexp(
        jnp.log(WS) - 0.5 * (jnp.log(s) - LOG_S_MODES) ** 2 / TAU**2))


def mode_index(x, s):
    """The joint mode of each draw: 4 (log s > 0) + 2 (x_0 > 0) + (x_1 > 0)."""
    x, s = np.asarray(x), np.asarray(s)
    return 4 * (np.log(s) > 0) + 2 * (x[..., 0] > 0) + (x[..., 1] > 0)


def one_mode_starts(key, n):
    k1, k2 = jax.random.split(key)
    return {"x": jnp.asarray(CENTRES[0]) + 0.05 * jax.random.normal(k1, (n, 2)),
            "s": jnp.exp(LOG_S_MODES[0] + 0.02 * jax.random.normal(k2, (n,)))}


def run_method(method, seed, budget):
    warmup, samples, learning_chains = budget
    key_start, key_learn_start, key_run = jax.random.split(jax.random.key(seed), 3)
    one_mode = method.endswith("one-mode starts")
    tic = time.perf_counter()
    if method.startswith("NUTS"):
        kernel = NUTS(model)
        init_params = one_mode_starts(key_start, N_CHAINS) if one_mode else None
    else:
        learning = dict(n_chains=learning_chains, show_progress=False)
        if one_mode:
            learning["start"] = one_mode_starts(key_learn_start, learning_chains)
        if method.endswith("tempering=None"):
            learning["tempering"] = None
        kernel = SIFlowBoost(NUTS(model), learning=FlowLearning(**learning))
        init_params = None  # the chains start where learning ended
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, num_chains=N_CHAINS,
                chain_method="vectorized", progress_bar=False)
    steps_field = "num_steps" if method.startswith("NUTS") else "inner_state.num_steps"
    mcmc.run(key_run, init_params=init_params, extra_fields=(steps_field,))
    draws = mcmc.get_samples(group_by_chain=True)
    seconds = time.perf_counter() - tic
    learning_evals = 0
    if not method.startswith("NUTS"):
        result = kernel.learned.result
        learning_evals = int(result.grad_evals_warmup + result.grad_evals_production)
    modes = mode_index(draws["x"], draws["s"])  # (chains, draws)
    weights = np.bincount(modes.reshape(-1), minlength=8) / modes.size
    num_steps = np.asarray(mcmc.get_extra_fields()[steps_field])
    flow_moves = 0 if method.startswith("NUTS") else num_steps.size
    r_hat = max(float(np.max(split_gelman_rubin(np.asarray(draws["x"])))),
                float(split_gelman_rubin(np.asarray(draws["s"]))))
    return {
        "method": method, "seed": seed, "weights": weights.tolist(),
        "error": float(np.max(np.abs(weights - TRUTH))), "r_hat": r_hat,
        "modes_visited": int(np.unique(modes).size),
        "learning_evals": learning_evals, "mcmc_evals": int(num_steps.sum()) + flow_moves,
        "seconds": seconds,
    }


def render(rows, seeds, budget, loads, command):
    warmup, samples, learning_chains = budget
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()},"
               f" jax {jax.__version__}, numpyro {numpyro.__version__}")
    lines = [
        "## Boosting with no draws: eight modes and a constrained site",
        "",
        f"Command: {command} (every row from this one run; seeds {seeds})."
        f" Machine: {machine}; 1-minute load average {min(loads):.1f} to {max(loads):.1f}"
        f" between rows. {N_CHAINS} chains, {warmup} warm-up and {samples} sampling"
        f" iterations, vectorized; SIFlowBoost learns with {learning_chains} chains and"
        " `FlowLearning`'s other defaults. The model: x in R^2 with four modes (weights 0.1,"
        " 0.2, 0.3, 0.4) and a positive site s with two (0.3, 0.7), so eight joint modes with"
        " exact weights 0.03 to 0.28. \"one-mode starts\": every chain, the learning chains"
        " included, starts in the smallest mode (0.03); otherwise NUTS starts from NumPyro's"
        " default (`init_to_uniform`) and SIFlowBoost's learning chains from the prior. Cells:"
        " mean ± sd over the seeds, then the per-seed values. The script's docstring has the"
        " set-up.",
        "",
        "| method | largest mode-weight error | per seed | largest split R-hat | per seed |"
        " modes visited (of 8) | gradients, learning | gradients, MCMC | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method in METHODS:
        group = [r for r in rows if r["method"] == method]
        if not group:
            continue
        col = {k: [r[k] for r in group] for k in group[0]}
        lines.append(
            f"| {method} | {pm(col['error'], '.3f')} |"
            f" {', '.join(f'{e:.3f}' for e in col['error'])} | {pm(col['r_hat'], '.3f')} |"
            f" {', '.join(f'{r:.3f}' for r in col['r_hat'])} |"
            f" {', '.join(str(m) for m in col['modes_visited'])} |"
            f" {pm(col['learning_evals'], '.0f')} | {pm(col['mcmc_evals'], '.0f')} |"
            f" {pm(col['seconds'], '.0f')} |"
        )
    return lines


def main(argv=None):
    args = row_run_args(__doc__.splitlines()[0], argv)
    seeds = args.seed_list
    budget = (50, 50, 8) if args.quick else (500, 1000, 16)
    units = [{"seed": seed, "method": method} for seed in seeds
             for method in METHODS[seed % len(METHODS):] + METHODS[:seed % len(METHODS)]]
    run, loads = run_rows(
        RESULTS, units, lambda unit: run_method(unit["method"], unit["seed"], budget),
        meta={"budget": list(budget), "seeds": seeds}, resume=args.resume, quick=args.quick)
    rows = run["rows"]
    command = run_command("many_modes.py", args, run)
    lines = render(rows, args.seeds, budget, loads, command)
    finish_run(run, lines, args, path=RESULTS, out=OUT, start=START, end=END)


if __name__ == "__main__":
    main()
