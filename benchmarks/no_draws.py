"""Boosting a NumPyro model with no posterior draws, from chains all started in one mode:
`MCMC(SIFlowBoost(NUTS(model)))` learning its flow (tempered by default, and without) against NUTS.

Targets: NumPyro models whose posterior has two well-separated modes of known weights, a prior
N(0, 5^2 I) in d dimensions times a two-mode likelihood factor at -c and +c (every coordinate of
c is 3 sqrt(2 / d), so |c| = 3 sqrt(2) in every dimension) with weights 0.3 / 0.7 and standard
deviation `sd` per coordinate. The prior is symmetric, so the posterior keeps the weights
0.3 / 0.7 exactly; the barrier between the modes is about |c|^2 / (2 sd^2) nats (100 at sd 0.3,
36 at sd 0.5).

Every method's chains (and, for SIFlowBoost, its learning chains) start in the minor mode
(-c plus N(0, 0.1^2) noise), the case where nothing but tempering or luck finds the other mode:

- `NUTS`: NumPyro's NUTS, 4 chains, vectorized.
- `SIFlowBoost, learned`: `SIFlowBoost(NUTS(model), learning=FlowLearning(start=one_mode))`:
  the adaptive scheme from the one-mode starts, tempered as by default (prior x
  likelihood^beta, beta = 0, 0.03, 0.1, 0.3, then 1), then NUTS plus frozen flow moves.
- `SIFlowBoost, learned, tempering=None`: the same with `FlowLearning(tempering=None)`.
- `SIFlowBoost, learned from the prior`: the default `FlowLearning()` (learning chains from the
  prior, tempered; the MCMC chains still start where learning ended), and the same with
  `tempering=None`.
- `NeuTra` and `flowMC` (its dual-moon tutorial's settings): the peers as `benchmarks/mcmc.py`
  runs them (`run_neutra`, `run_flowmc("flowmc")`, its full budget and 16 chains, all started in
  the minor mode; NeuTra's guide is fitted by SVI from its own initialisation, its NUTS chains
  start at the starts' pre-images). flowMC's own parallel-tempering bundle is left to the MCMC
  table.

Reported per target and method (mean ± sd over seeds, and per seed): the major mode's weight
estimate (truth 0.7) from all chains' draws, its absolute error, the number of chains that ever
visited both modes, the largest split R-hat over the coordinates of x (NumPyro's
`split_gelman_rubin`; it reads near 1 when all chains agree on one mode, too), the target
gradient evaluations of learning and of the MCMC run (NumPyro's `num_steps` of the sampling
phase, plus one per flow move), and wall-clock seconds (learning and compilation included).

Run: `.venv/bin/python benchmarks/no_draws.py` (3 seeds; about half an hour on 2 cores;
`--quick` for a smoke run that writes nothing). The table goes to `docs/benchmarks.md` between
`<!-- no-draws:start -->` and `<!-- no-draws:end -->`, results to
`docs/figures/no_draws/results.json`.
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
RESULTS = ROOT / "docs" / "figures" / "no_draws" / "results.json"
START, END = "<!-- no-draws:start -->", "<!-- no-draws:end -->"
WEIGHTS = (0.3, 0.7)
TARGETS = {"two modes, 2-d, sd 0.3": (2, 0.3), "two modes, 6-d, sd 0.5": (6, 0.5)}
METHODS = ("NUTS", "SIFlowBoost, learned, tempering=None", "SIFlowBoost, learned",
           "SIFlowBoost, learned from the prior, tempering=None",
           "SIFlowBoost, learned from the prior", "NeuTra", "flowMC")
N_CHAINS = 4


def centre(dim):
    return jnp.full(dim, 3.0 * np.sqrt(2.0 / dim))  # |c| = 3 sqrt(2) in every dimension


def model(dim, sd):
    x = numpyro.sample("x", dist.Normal(0.0, 5.0).expand([dim]).to_event(1))
    c = centre(dim)
    numpyro.factor("two_modes", jnp.logaddexp(
        jnp.log(WEIGHTS[0]) - 0.5 * jnp.sum((x + c) ** 2) / sd**2,
        jnp.log(WEIGHTS[1]) - 0.5 * jnp.sum((x - c) ** 2) / sd**2,
    ))


def in_major_mode(x):
    """1 where a draw is nearer +c than -c: the sign of its projection on c."""
    return (np.asarray(x) @ np.ones(x.shape[-1]) > 0).astype(float)


def largest_r_hat(x):
    """The largest split R-hat over the coordinates of draws `(chains, draws, d)`."""
    return float(np.max(split_gelman_rubin(np.asarray(x))))


def one_mode_starts(key, dim, n):
    return {"x": -centre(dim) + 0.1 * jax.random.normal(key, (n, dim))}


def run_peer(method, key_start, key_run, dim, sd, quick):
    """NeuTra or flowMC through benchmarks/mcmc.py's runners, on this model's log density."""
    import mcmc

    def logdensity(x):
        c = centre(dim)
        return jnp.sum(dist.Normal(0.0, 5.0).log_prob(x)) + jnp.logaddexp(
            jnp.log(WEIGHTS[0]) - 0.5 * jnp.sum((x + c) ** 2) / sd**2,
            jnp.log(WEIGHTS[1]) - 0.5 * jnp.sum((x - c) ** 2) / sd**2,
        )

    target = mcmc.Target(
        name="two modes", dim=dim, logdensity=logdensity,
        init=lambda key, n: one_mode_starts(key, dim, n)["x"], modes=None, weights=None,
        first=lambda x: x, first_truth=np.zeros(dim), first_sd=np.ones(dim),
        second=lambda x: x**2, second_truth=np.ones(dim))
    x0 = target.init(key_start, mcmc.N_CHAINS)
    run = mcmc.run_neutra if method == "NeuTra" else mcmc.run_flowmc("flowmc")
    draws, evals, _ = run(key_run, target, x0, mcmc.QUICK if quick else mcmc.FULL)
    return np.asarray(draws), evals


def run_method(method, seed, dim, sd, budget):
    warmup, samples, learning_chains = budget
    key = jax.random.key(seed)
    key_start, key_learn_start, key_run = jax.random.split(key, 3)
    starts = one_mode_starts(key_start, dim, N_CHAINS)
    tic = time.perf_counter()
    if method in ("NeuTra", "flowMC"):
        x, evals = run_peer(method, key_start, key_run, dim, sd, quick=warmup < 100)
        major = in_major_mode(x)
        return {
            "method": method, "seed": seed, "weight": float(major.mean()),
            "error": abs(float(major.mean()) - WEIGHTS[1]),
            "chains_both": int(np.sum((major.min(axis=1) == 0) & (major.max(axis=1) == 1))),
            "r_hat": largest_r_hat(x),
            "n_chains": int(x.shape[0]), "learning_evals": 0, "mcmc_evals": int(evals),
            "seconds": time.perf_counter() - tic,
        }
    learning_evals = 0
    if method == "NUTS":
        kernel = NUTS(model)
        init_params = starts
    else:
        learning = dict(n_chains=learning_chains, show_progress=False)
        if not method.startswith("SIFlowBoost, learned from the prior"):
            learning["start"] = one_mode_starts(key_learn_start, dim, learning_chains)
        if method.endswith("tempering=None"):
            learning["tempering"] = None
        kernel = SIFlowBoost(NUTS(model), learning=FlowLearning(**learning))
        init_params = None  # the chains start where learning ended
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, num_chains=N_CHAINS,
                chain_method="vectorized", progress_bar=False)
    # target gradients of the MCMC run: NUTS's leapfrog steps, plus one per flow move
    steps_field = "num_steps" if method == "NUTS" else "inner_state.num_steps"
    mcmc.run(key_run, dim, sd, init_params=init_params, extra_fields=(steps_field,))
    x = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    seconds = time.perf_counter() - tic
    if method != "NUTS":
        result = kernel.learned.result
        learning_evals = int(result.grad_evals_warmup + result.grad_evals_production)
    major = in_major_mode(x)
    num_steps = np.asarray(mcmc.get_extra_fields()[steps_field])
    flow_moves = 0 if method == "NUTS" else num_steps.size
    return {
        "method": method, "seed": seed, "weight": float(major.mean()),
        "error": abs(float(major.mean()) - WEIGHTS[1]),
        "chains_both": int(np.sum((major.min(axis=1) == 0) & (major.max(axis=1) == 1))),
        "r_hat": largest_r_hat(x),
        "n_chains": N_CHAINS,
        "learning_evals": learning_evals, "mcmc_evals": int(num_steps.sum()) + flow_moves,
        "seconds": seconds,
    }



def render(rows, seeds, budget, loads, command):
    warmup, samples, learning_chains = budget
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()},"
               f" jax {jax.__version__}, numpyro {numpyro.__version__}")
    lines = [
        "## Boosting with no draws, from chains all in one mode",
        "",
        f"Command: {command} (every row from this one run; seeds {seeds}, seeds outermost)."
        f" Machine: {machine}; 1-minute load average {min(loads):.1f} to {max(loads):.1f}"
        f" between rows. NUTS and SIFlowBoost: {N_CHAINS} chains, {warmup} warm-up and"
        f" {samples} sampling iterations, vectorized; SIFlowBoost learns with {learning_chains}"
        " chains and `FlowLearning`'s other defaults (NUTS local steps, four tempered rounds"
        " and three on the posterior). NeuTra"
        " and flowMC: as in the MCMC table's budget and peer-settings tables. Every chain"
        " starts in the minor mode (weight 0.3); the true weight of the other is 0.7. Cells:"
        " mean ± sd over the seeds,"
        " then the per-seed values. The script's docstring has the set-up.",
        "",
        "| target | method | weight of the major mode (truth 0.7) | per seed | abs. error |"
        " chains that visited both modes | split R-hat, largest | gradients, learning |"
        " gradients, MCMC (peers: the whole run) | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for target in TARGETS:
        for method in METHODS:
            group = [r for r in rows if r["target"] == target and r["method"] == method]
            if not group:
                continue
            col = {k: [r[k] for r in group] for k in group[0]}
            lines.append(
                f"| {target} | {method} | {pm(col['weight'], '.3f')} |"
                f" {', '.join(f'{w:.2f}' for w in col['weight'])} | {pm(col['error'], '.3f')} |"
                f" {', '.join(str(c) for c in col['chains_both'])} of {col['n_chains'][0]} |"
                f" {max(col['r_hat']):.3f} |"
                f" {pm(col['learning_evals'], '.0f')} | {pm(col['mcmc_evals'], '.0f')} |"
                f" {pm(col['seconds'], '.0f')} |"
            )
    return lines


def main(argv=None):
    args = row_run_args(__doc__.splitlines()[0], argv)
    seeds = args.seed_list
    budget = (50, 50, 8) if args.quick else (500, 1000, 16)
    units = []
    for seed in seeds:
        for index, target in enumerate(TARGETS):
            # a rotating order, so machine load falls on every method alike
            shift = (seed + index) % len(METHODS)
            units += [{"target": target, "seed": seed, "method": method}
                      for method in METHODS[shift:] + METHODS[:shift]]
    run, loads = run_rows(
        RESULTS, units,
        lambda unit: run_method(unit["method"], unit["seed"], *TARGETS[unit["target"]], budget),
        meta={"budget": list(budget), "seeds": seeds}, resume=args.resume, quick=args.quick)
    rows = run["rows"]
    command = run_command("no_draws.py", args, run)
    lines = render(rows, args.seeds, budget, loads, command)
    finish_run(run, lines, args, path=RESULTS, out=OUT, start=START, end=END)


if __name__ == "__main__":
    main()
