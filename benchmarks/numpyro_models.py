"""NumPyro models with several modes and constrained sites, exact answers known: boosting with no
draws (`MCMC(SIFlowBoost(NUTS(model)))`, default learning) against NUTS, NeuTra and flowMC.

Targets:

- **change point** (PyMC's coal-mining disasters tutorial model, ported to NumPyro with a
  continuous switch point): yearly counts of British coal-mining disasters 1851-1961 (Jarrett
  1979, as shipped in PyMC's tutorials; 111 counts), `switchpoint ~ Uniform(0, 111)`,
  `early_rate, late_rate ~ Exponential(1)`, count_t ~ Poisson(early if t < switchpoint else
  late). Three constrained sites (an interval, two positive). The likelihood is a step function
  of the switch point (zero gradient, a jump at every year), and the switch point's posterior
  has several peaks over 1886-1896. Exact answers: with the switch point in [k, k + 1) the rates
  are conjugate, so P(floor(switchpoint) = k) and the rates' means and variances are sums of
  Gamma integrals (`change_point_truth`). Modes: the 111 years of the switch point.
- **signal on background** (a line on a flat background, the mixture of a Gaussian of known width
  and a uniform): 85 observations on (-10, 10): 60 evenly spread (background), 12 and 13 at
  -3 and +3 (two identical bumps of width 0.3, placed at normal quantiles); `mu ~ Uniform(-10,
  10)`, `w ~ Uniform(0, 1)`, y ~ w N(mu, 0.3^2) + (1 - w) U(-10, 10). The line sits on one bump
  or the other: two modes (mu < 0, mu > 0) about 12 nats below the top across a plateau at
  w -> 0. Exact answers by quadrature on a 4000 x 1000 midpoint grid in (mu, w)
  (`signal_truth`).

Methods (chains start as a user would start them):

- `NUTS`: NumPyro's NUTS from its default starts (`init_to_uniform`), 4 chains, vectorized.
- `SIFlowBoost`: `SIFlowBoost(NUTS(model))` with no flow: the default `FlowLearning()` (16
  chains from the prior, tempered from prior to posterior, then frozen); the 4 MCMC chains start
  where learning ended.
- `NeuTra` and `flowMC` (its dual-moon tutorial's settings): the peers as `benchmarks/mcmc.py`
  runs them (`run_neutra`, `run_flowmc("flowmc")`, their full budget, 16 / 20 chains) on the
  model's unconstrained log density (`log_target_from_model`), started uniform on (-2, 2) in every
  unconstrained coordinate (NumPyro's `init_to_uniform`).

Reported per target and method (mean ± sd over seeds, and per seed): the largest absolute error
over the mode weights (the switch point's year probabilities; the two modes' weights); the
largest error of a posterior mean (the rates; w), in posterior standard deviations; the largest
split R-hat over the constrained sites; the bulk ESS of the multimodal quantity (the switch
point; mu) per second and per 1000 target gradient evaluations; target gradients of learning and
of the MCMC run; wall-clock seconds (learning and compilation included).

Run: `.venv/bin/python benchmarks/numpyro_models.py` (3 seeds; `--quick` for a smoke run that
writes nothing; `--resume` continues a stored run). The table goes to `docs/benchmarks.md`
between `<!-- numpyro-models:start -->` and `<!-- numpyro-models:end -->`, results to
`docs/figures/numpyro_models/results.json`.
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
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
from numpyro.infer import MCMC, NUTS
from scipy.special import gammaln
from scipy.stats import norm

from numpyro_si.diagnostics import log_target_from_model
from numpyro_si.inference import SIFlowBoost

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_io import finish_run, row_run_args, run_command, run_rows  # noqa: E402
from _bench_io import mean_sd as pm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "docs" / "figures" / "numpyro_models" / "results.json"
START, END = "<!-- numpyro-models:start -->", "<!-- numpyro-models:end -->"
METHODS = ("NUTS", "SIFlowBoost", "NeuTra", "flowMC")
N_CHAINS = 4

# Coal-mining disasters in Great Britain per year, 1851-1961 (Jarrett 1979), as in PyMC's
# tutorials.
DISASTERS = np.array([
    4, 5, 4, 0, 1, 4, 3, 4, 0, 6, 3, 3, 4, 0, 2, 6, 3, 3, 5, 4, 5, 3, 1, 4, 4, 1, 5, 5, 3, 4, 2, 5,
    2, 2, 3, 4, 2, 1, 3, 2, 2, 1, 1, 1, 1, 3, 0, 0, 1, 0, 1, 1, 0, 0, 3, 1, 0, 3, 2, 2, 0, 1, 1, 1,
    0, 1, 0, 1, 0, 0, 0, 2, 1, 0, 0, 0, 1, 1, 0, 2, 3, 3, 1, 1, 2, 1, 1, 1, 1, 2, 4, 2, 0, 0, 1, 4,
    0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1,
])
FIRST_YEAR = 1851


def change_point(disasters):
    n_years = disasters.shape[0]
    switchpoint = numpyro.sample("switchpoint", dist.Uniform(0.0, n_years))
    early_rate = numpyro.sample("early_rate", dist.Exponential(1.0))
    late_rate = numpyro.sample("late_rate", dist.Exponential(1.0))
    rate = jnp.where(jnp.arange(n_years) < switchpoint, early_rate, late_rate)
    numpyro.sample("disasters", dist.Poisson(rate), obs=disasters)


def change_point_truth(disasters=DISASTERS):
    """P(floor(switchpoint) = k), k = 0..T-1, and the rates' posterior means and sds."""
    counts = np.asarray(disasters, dtype=np.float64)
    n = counts.size
    s1 = np.cumsum(counts)  # disasters in years 0..k (the early rate's)
    n1 = np.arange(1, n + 1)
    s2, n2 = counts.sum() - s1, n - n1
    # Exponential(1) prior x Poisson likelihood: Gamma(s + 1, n + 1) posterior per rate
    log_w = (gammaln(s1 + 1) - (s1 + 1) * np.log(n1 + 1)
             + gammaln(s2 + 1) - (s2 + 1) * np.log(n2 + 1))
    p = np.exp(log_w - log_w.max())
    p /= p.sum()
    means, sds = [], []
    for s, m in ((s1, n1), (s2, n2)):
        mean_k, var_k = (s + 1) / (m + 1), (s + 1) / (m + 1) ** 2
        mean = float(np.sum(p * mean_k))
        means.append(mean)
        sds.append(float(np.sqrt(np.sum(p * (var_k + mean_k**2)) - mean**2)))
    return p, np.array(means), np.array(sds)


SIGMA, LOW, HIGH = 0.3, -10.0, 10.0


def signal_data():
    background = LOW + (HIGH - LOW) * (np.arange(60) + 0.5) / 60
    bump = [c + SIGMA * norm.ppf((np.arange(n) + 0.5) / n) for c, n in ((-3.0, 12), (3.0, 13))]
    return np.concatenate([background, *bump])


def signal_on_background(y):
    mu = numpyro.sample("mu", dist.Uniform(LOW, HIGH))
    w = numpyro.sample("w", dist.Uniform(0.0, 1.0))
    line = dist.Normal(mu, SIGMA).log_prob(y)
    flat = -jnp.log(HIGH - LOW)
    with numpyro.plate("n", y.shape[0]):
        numpyro.factor("y", jnp.logaddexp(jnp.log(w) + line, jnp.log1p(-w) + flat))


def signal_truth(y=None, n_mu=4000, n_w=1000):
    """P(mu > 0), and E[w], sd[w], by the midpoint rule on (mu, w) (flat priors)."""
    y = signal_data() if y is None else y
    mu = LOW + (np.arange(n_mu) + 0.5) * (HIGH - LOW) / n_mu
    w = (np.arange(n_w) + 0.5) / n_w
    line = norm.pdf(y[None, :], mu[:, None], SIGMA)  # (mu, n)
    log_p = np.zeros((n_mu, n_w))
    for i in range(y.size):
        log_p += np.log(w[None, :] * line[:, i:i + 1] + (1 - w[None, :]) / (HIGH - LOW))
    p = np.exp(log_p - log_p.max())
    p /= p.sum()
    p_w = p.sum(axis=0)
    mean_w = float(np.sum(p_w * w))
    return (float(p[mu > 0].sum()), np.array([mean_w]),
            np.array([float(np.sqrt(np.sum(p_w * w**2) - mean_w**2))]))


def targets():
    """target -> (model, args, truths, mode labels of constrained draws, ESS quantity)."""
    p_years, rate_means, rate_sds = change_point_truth()
    p_major, w_mean, w_sd = signal_truth()
    return {
        "change point (coal-mining disasters)": dict(
            model=change_point, args=(jnp.asarray(DISASTERS),), weights=p_years,
            modes=lambda d: np.floor(np.asarray(d["switchpoint"])).astype(int).clip(0, 110),
            moments=lambda d: np.stack([d["early_rate"], d["late_rate"]], -1),
            moment_truth=rate_means, moment_sd=rate_sds, ess_site="switchpoint"),
        "signal on background": dict(
            model=signal_on_background, args=(jnp.asarray(signal_data()),),
            weights=np.array([1 - p_major, p_major]),
            modes=lambda d: (np.asarray(d["mu"]) > 0).astype(int),
            moments=lambda d: np.asarray(d["w"])[..., None],
            moment_truth=w_mean, moment_sd=w_sd, ess_site="mu"),
    }


def run_peer(method, key, spec, quick):
    """NeuTra or flowMC through benchmarks/mcmc.py's runners, on the model's unconstrained log
    density; their draws mapped back to the constrained sites."""
    import mcmc

    log_density = log_target_from_model(spec["model"], *spec["args"])
    dim = log_density.dim

    def init(key, n):  # NumPyro's init_to_uniform
        return jax.random.uniform(key, (n, dim), minval=-2.0, maxval=2.0)

    target = mcmc.Target(
        name="model", dim=dim, logdensity=log_density, init=init, modes=None, weights=None,
        first=lambda x: x, first_truth=np.zeros(dim), first_sd=np.ones(dim),
        second=lambda x: x**2, second_truth=np.ones(dim))
    key_start, key_run = jax.random.split(key)
    x0 = init(key_start, mcmc.N_CHAINS)
    run = mcmc.run_neutra if method == "NeuTra" else mcmc.run_flowmc("flowmc")
    draws, evals, _ = run(key_run, target, x0, mcmc.QUICK if quick else mcmc.FULL)
    draws = np.asarray(draws)
    chains, n = draws.shape[:2]
    constrained = log_density.constrain(jnp.asarray(draws.reshape(chains * n, dim)))
    return {k: np.asarray(v).reshape(chains, n, *np.shape(v)[1:]) for k, v in
            constrained.items()}, int(evals), 0


def run_numpyro(method, key, spec, budget):
    warmup, samples = budget
    if method == "NUTS":
        kernel, steps_field = NUTS(spec["model"]), "num_steps"
    else:
        kernel = SIFlowBoost(NUTS(spec["model"]))
        steps_field = "inner_state.num_steps"
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, num_chains=N_CHAINS,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(key, *spec["args"], extra_fields=(steps_field,))
    num_steps = np.asarray(mcmc.get_extra_fields()[steps_field])
    # target gradients: NUTS's leapfrog steps, plus one per flow move
    evals = int(num_steps.sum()) + (0 if method == "NUTS" else num_steps.size)
    learning = 0
    if method != "NUTS":
        result = kernel.learned.result
        learning = int(result.grad_evals_warmup + result.grad_evals_production)
    draws = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    return draws, evals, learning


def measure(unit, specs, budget, quick):
    spec = specs[unit["target"]]
    key = jax.random.key(unit["seed"])
    tic = time.perf_counter()
    if unit["method"] in ("NeuTra", "flowMC"):
        draws, evals, learning = run_peer(unit["method"], key, spec, quick)
    else:
        draws, evals, learning = run_numpyro(unit["method"], key, spec, budget)
    seconds = time.perf_counter() - tic
    modes = spec["modes"](draws)
    weights = np.bincount(modes.reshape(-1), minlength=len(spec["weights"])) / modes.size
    moments = spec["moments"](draws).reshape(-1, len(spec["moment_truth"]))
    moment_error = np.abs(moments.mean(0) - spec["moment_truth"]) / spec["moment_sd"]
    r_hat = max(float(np.max(split_gelman_rubin(v.reshape(*v.shape[:2], -1))))
                for v in draws.values())
    ess = float(effective_sample_size(draws[spec["ess_site"]].reshape(*modes.shape[:2], 1))[0])
    gradients = evals + learning
    return {
        "error": float(np.max(np.abs(weights - spec["weights"]))),
        "moment_error": float(moment_error.max()), "r_hat": r_hat, "ess": ess,
        "ess_per_second": ess / seconds, "ess_per_1000": 1000 * ess / gradients,
        "learning_evals": learning, "mcmc_evals": evals, "seconds": seconds,
        "n_chains": int(modes.shape[0]),
    }


def render(rows, specs, seeds, budget, loads, command):
    warmup, samples = budget
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()},"
               f" jax {jax.__version__}, numpyro {numpyro.__version__}")
    lines = [
        "## NumPyro models with exact answers: a change point and a line on a background",
        "",
        f"Command: {command} (every row from this one run; seeds {seeds}). Machine: {machine};"
        f" 1-minute load average {min(loads):.1f} to {max(loads):.1f} between rows. NUTS and"
        f" SIFlowBoost: {N_CHAINS} chains, {warmup} warm-up and {samples} sampling iterations,"
        " vectorized, from NumPyro's default starts; SIFlowBoost learns its flow with the"
        " default `FlowLearning()` (16 chains from the prior, tempered). NeuTra and flowMC: as"
        " in the MCMC table's budget and peer-settings tables, on the model's unconstrained log"
        " density, started uniform on (-2, 2). Mode weights: the switch point's 111 year"
        " probabilities; the line's two positions. Mean error: the rates' (change point), w's"
        " (line), in posterior sds. ESS: bulk, of the switch point / mu. Cells: mean ± sd over"
        " the seeds, then per seed. The script's docstring has the models and their exact"
        " answers.",
        "",
        "| target | method | largest mode-weight error | per seed | largest mean error (sd) |"
        " split R-hat, largest | ESS per second | ESS per 1000 gradients | gradients,"
        " learning | gradients, MCMC (peers: the whole run) | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for target in specs:
        for method in METHODS:
            group = [r for r in rows if r["target"] == target and r["method"] == method]
            if not group:
                continue
            col = {k: [r[k] for r in group] for k in group[0]}
            lines.append(
                f"| {target} | {method} | {pm(col['error'], '.3f')} |"
                f" {', '.join(f'{e:.3f}' for e in col['error'])} |"
                f" {pm(col['moment_error'], '.2f')} | {max(col['r_hat']):.3f} |"
                f" {pm(col['ess_per_second'], '.1f')} | {pm(col['ess_per_1000'], '.2f')} |"
                f" {pm(col['learning_evals'], '.0f')} | {pm(col['mcmc_evals'], '.0f')} |"
                f" {pm(col['seconds'], '.0f')} |"
            )
    return lines


def main(argv=None):
    args = row_run_args(__doc__.splitlines()[0], argv)
    seeds = args.seed_list
    budget = (50, 50) if args.quick else (500, 1000)
    specs = targets()
    units = []
    for seed in seeds:
        for index, target in enumerate(specs):
            shift = (seed + index) % len(METHODS)  # a rotating order: load falls on all alike
            units += [{"target": target, "seed": seed, "method": method}
                      for method in METHODS[shift:] + METHODS[:shift]]
    run, loads = run_rows(RESULTS, units, lambda unit: measure(unit, specs, budget, args.quick),
                          meta={"budget": list(budget), "seeds": seeds}, resume=args.resume,
                          quick=args.quick)
    command = run_command("numpyro_models.py", args, run)
    lines = render(run["rows"], specs, args.seeds, budget, loads, command)
    finish_run(run, lines, args, path=RESULTS, out=OUT, start=START, end=END)


if __name__ == "__main__":
    main()
