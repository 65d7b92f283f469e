"""MCMC benchmark: NUTS, SIFlow-boosted MALA/NUTS, flowMC and NeuTra on targets with known answers.

Run: `.venv/bin/python benchmarks/mcmc.py` (all targets, about an hour on 2 CPU cores);
`--quick` for a smoke run with small budgets; `--targets gmm2,funnel10` for a subset (names below);
`--methods nuts,si-mala` for a subset of methods; `--no-write` to print only. Each row is stored
in `docs/figures/mcmc/results.json` by target and method id (a run with `--targets`/`--methods`
replaces only its own rows), and the table of every stored row goes to `docs/benchmarks.md`
between the markers `<!-- mcmc:start -->` and `<!-- mcmc:end -->` (only that region is
rewritten).

Targets (all with known answers; `TARGETS` below):

- `gmm{2,8,16}`: two Gaussians N(-m, I) (weight 0.25) and N(+m, 0.5 I) (weight 0.75) in d = 2, 8,
  16 with m = 5 u, u = (1, ..., 1) / sqrt(d): 10 standard deviations apart, ~12 nats of barrier.
  Mode = side of the hyperplane u . x = 0. Weights and moments in closed form.
- `funnel10`: Neal's funnel, v ~ N(0, 3^2), x_1..9 | v ~ N(0, e^v). Unimodal; moments of v
  (E v = 0, E v^2 = 9) are the reported ones (the x moments' Monte Carlo error is unbounded in
  practice: E x^4 = 3 e^18).
- `dualmoon5`: the flowMC dual moon in d = 5, log pi(x) = -(|x| - 2)^2 / (2 0.1^2)
  + logsumexp_{s=+-1}(-(x_0 - 3 s)^2 / (2 0.8^2)) + logsumexp_{s=+-1}(-(x_1 - 3 s)^2 / (2 0.6^2)).
  Four modes (signs of x_0, x_1), each of weight 1/4 by symmetry; odd moments vanish; the second
  moments come from a quadrature in (x_0, x_1, rho = |x_2:5|) (`dualmoon_reference`).
- `phi4`: the 1-d phi^4 (Ginzburg-Landau) field on N = 64 periodic sites,
  log pi(phi) = -beta sum_i [ a / (2 h) (phi_{i+1} - phi_i)^2 + h / (4 a) (1 - phi_i^2)^2 ],
  h = 1/N, a = 0.1, beta = 20 (the parameters of Gabrie, Rotskoff & Vanden-Eijnden, PNAS 2022,
  with a periodic boundary). Two modes phi ~ +1 and phi ~ -1 (mode = sign of the mean field),
  weight 1/2 each by the symmetry phi -> -phi; switching needs two domain walls, ~38 nats. Odd
  moments vanish; E[mean_i phi_i^2] comes from a long within-mode NUTS reference (`PHI4_REF`;
  phi -> -phi maps one mode onto the other, so a within-mode chain gives the even moments).

Methods, all from the same initial points (spread over the modes), 16 chains each:

- `nuts`: NumPyro NUTS (vectorised chains, default warm-up).
- `si-mala`, `si-nuts`: `numpyro_si.inference.adaptive.run` with MALA or NUTS local steps.
- `flowmc`: flowMC 0.6 `RQSpline_MALA_Bundle` (its RQSpline flow + MALA).
- `neutra`: NumPyro `AutoBNAFNormal` fitted by SVI, then `NeuTraReparam` + NUTS.

Reported per target and method: mode-weight error (max over modes of |estimate - truth|), error of
the first moments (max over the reported coordinates of |mean - truth| / true sd) and of the second
moments (max relative error), the minimum over coordinates of ArviZ's bulk ESS, ESS per 1000
target evaluations (gradient evaluations plus density-only evaluations, over the whole run
including warm-up and flow/guide training), ESS per second and wall-clock (whole run, compilation
included). The 2 cores are shared with other jobs, so ESS per evaluation is the noise-free figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_io import write_json, write_text  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
# the table's numbers of every run, {"schema": 1, "rows": {target id: {method id: fields}}}
STORE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "mcmc" / "results.json"
START, END = "<!-- mcmc:start -->", "<!-- mcmc:end -->"
N_CHAINS = 16

# E[mean_i phi_i^2] of the phi^4 target, its standard error, and how it was obtained.
# From `benchmarks/mcmc.py --phi4-reference`: NumPyro NUTS, 16 chains x 20000 draws after 1000
# warm-up steps, all in the phi ~ +1 mode; bulk ESS 107567.
PHI4_REF = (0.963803, 0.000309)


# ------------------------------------------------------------------------------------------------
# targets
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    """A target with known answers.

    - `logdensity`: log pi of one point `(d,)`.
    - `init`: `init(key, n) -> (n, d)` starting points spread over the modes.
    - `modes`: `modes(x (..., d)) -> int labels (...)`, or None if unimodal; `weights`: truth.
    - `first`: `first(x) -> (..., k)` quantities whose means are checked against `first_truth`,
      in units of `first_sd`; `second`: `second(x) -> (..., m)` checked relative to
      `second_truth`.
    """

    name: str
    dim: int
    logdensity: Callable
    init: Callable
    modes: Callable | None
    weights: np.ndarray | None
    first: Callable
    first_truth: np.ndarray
    first_sd: np.ndarray
    second: Callable
    second_truth: np.ndarray
    note: str = ""


def gmm_target(dim: int) -> Target:
    u = jnp.ones(dim) / math.sqrt(dim)
    means = jnp.stack([-5.0 * u, 5.0 * u])
    variances = jnp.array([1.0, 0.5])
    weights = jnp.array([0.25, 0.75])

    def logdensity(x):
        sq = jnp.sum((x - means) ** 2, axis=-1)
        comp = -0.5 * sq / variances - 0.5 * dim * jnp.log(2 * jnp.pi * variances)
        return logsumexp(comp + jnp.log(weights))

    def init(key, n):
        return 3.0 * jax.random.normal(key, (n, dim))

    mean = np.asarray(weights @ means)
    second = np.asarray(weights @ (means**2 + variances[:, None]))
    return Target(
        f"gmm{dim}", dim, logdensity, init,
        modes=lambda x: (np.asarray(x) @ np.asarray(u) > 0).astype(int),
        weights=np.asarray(weights), first=lambda x: x, first_truth=mean,
        first_sd=np.sqrt(second - mean**2), second=lambda x: x**2, second_truth=second,
    )


def funnel_target(dim: int = 10) -> Target:
    def logdensity(x):
        v, rest = x[0], x[1:]
        return -0.5 * v**2 / 9.0 - 0.5 * jnp.sum(rest**2) * jnp.exp(-v) - 0.5 * (dim - 1) * v

    def init(key, n):
        return jax.random.normal(key, (n, dim))

    return Target(
        f"funnel{dim}", dim, logdensity, init, modes=None, weights=None,
        first=lambda x: x[..., :1], first_truth=np.zeros(1), first_sd=np.array([3.0]),
        second=lambda x: x[..., :1] ** 2, second_truth=np.array([9.0]),
        note="moments of v only",
    )


def dualmoon_logdensity(x):
    term_radius = -0.5 * ((jnp.linalg.norm(x) - 2.0) / 0.1) ** 2
    term0 = logsumexp(-0.5 * ((x[0] + jnp.array([-3.0, 3.0])) / 0.8) ** 2)
    term1 = logsumexp(-0.5 * ((x[1] + jnp.array([-3.0, 3.0])) / 0.6) ** 2)
    return term_radius + term0 + term1


def dualmoon_reference(step: float = 0.01) -> np.ndarray:
    """E[x_0^2], E[x_1^2], E[x_k^2] (k >= 2) of the 5-d dual moon by quadrature: the density
    depends on x only through x_0, x_1 and rho = |x_2:5|, whose volume element is 4 pi rho^2."""
    g = np.arange(step / 2, 2.6, step)  # x_0, x_1 >= 0 (the density is even in each)
    rho = np.arange(step / 2, 2.6, step)
    x0, x1 = np.meshgrid(g, g, indexing="ij")
    sums = np.zeros(4)
    for r in np.array_split(rho, 20):
        radius = np.sqrt(x0[..., None] ** 2 + x1[..., None] ** 2 + r**2)
        log_p = (
            -0.5 * ((radius - 2.0) / 0.1) ** 2
            + np.logaddexp(-0.5 * ((x0 - 3) / 0.8) ** 2, -0.5 * ((x0 + 3) / 0.8) ** 2)[..., None]
            + np.logaddexp(-0.5 * ((x1 - 3) / 0.6) ** 2, -0.5 * ((x1 + 3) / 0.6) ** 2)[..., None]
        )
        p = np.exp(log_p) * r**2
        sums += [p.sum(), (p * x0[..., None] ** 2).sum(), (p * x1[..., None] ** 2).sum(),
                 (p * r**2).sum() / 3.0]
    return sums[1:] / sums[0]


def dualmoon_target() -> Target:
    reference = dualmoon_reference()
    second_truth = np.array([reference[0], reference[1], reference[2]])

    def init(key, n):
        return jax.random.uniform(key, (n, 5), minval=-3.0, maxval=3.0)

    def second(x):
        return jnp.stack([x[..., 0] ** 2, x[..., 1] ** 2, jnp.mean(x[..., 2:] ** 2, -1)], -1)

    sd = np.sqrt(np.array([reference[0], reference[1], *[reference[2]] * 3]))
    return Target(
        "dualmoon5", 5, dualmoon_logdensity, init,
        modes=lambda x: 2 * (np.asarray(x)[..., 0] > 0) + (np.asarray(x)[..., 1] > 0),
        weights=np.full(4, 0.25), first=lambda x: x, first_truth=np.zeros(5), first_sd=sd,
        second=second, second_truth=second_truth,
    )


PHI4_N, PHI4_A, PHI4_BETA = 64, 0.1, 20.0


def phi4_logdensity(phi):
    h = 1.0 / PHI4_N
    gradient = jnp.sum((jnp.roll(phi, -1) - phi) ** 2) * PHI4_A / (2 * h)
    potential = jnp.sum((1.0 - phi**2) ** 2) * h / (4 * PHI4_A)
    return -PHI4_BETA * (gradient + potential)


def phi4_target() -> Target:
    def init(key, n):
        key_sign, key_noise = jax.random.split(key)
        signs = jnp.where(jax.random.bernoulli(key_sign, 0.5, (n, 1)), 1.0, -1.0)
        return signs + 0.3 * jax.random.normal(key_noise, (n, PHI4_N))

    second_truth = np.array([PHI4_REF[0]])
    return Target(
        "phi4", PHI4_N, phi4_logdensity, init,
        modes=lambda x: (np.asarray(x).mean(-1) > 0).astype(int), weights=np.array([0.5, 0.5]),
        first=lambda x: x, first_truth=np.zeros(PHI4_N),
        first_sd=np.full(PHI4_N, math.sqrt(PHI4_REF[0])),
        second=lambda x: jnp.mean(x**2, -1, keepdims=True), second_truth=second_truth,
        note="second moment: site-averaged phi^2 against a within-mode NUTS reference",
    )


TARGETS = {
    "gmm2": lambda: gmm_target(2),
    "gmm8": lambda: gmm_target(8),
    "gmm16": lambda: gmm_target(16),
    "funnel10": funnel_target,
    "dualmoon5": dualmoon_target,
    "phi4": phi4_target,
}


# ------------------------------------------------------------------------------------------------
# methods: each returns samples (chains, draws, d), target evaluations, extra columns
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Budget:
    warmup: int  # NUTS / NeuTra warm-up iterations
    draws: int  # production draws per chain
    si_rounds: int
    si_round_steps: int
    si_fit_steps: int
    si_n_local: int
    flowmc_training_loops: int
    flowmc_production_loops: int
    flowmc_local: int
    flowmc_global: int
    flowmc_epochs: int
    neutra_svi_steps: int


FULL = Budget(
    warmup=500, draws=500, si_rounds=3, si_round_steps=100, si_fit_steps=1000, si_n_local=5,
    flowmc_training_loops=10, flowmc_production_loops=25, flowmc_local=10, flowmc_global=10,
    flowmc_epochs=10, neutra_svi_steps=2000,
)
QUICK = Budget(
    warmup=200, draws=200, si_rounds=2, si_round_steps=50, si_fit_steps=300, si_n_local=3,
    flowmc_training_loops=4, flowmc_production_loops=10, flowmc_local=10, flowmc_global=10,
    flowmc_epochs=5, neutra_svi_steps=500,
)


def run_nuts(key, target: Target, x0, budget: Budget):
    from numpyro.infer import MCMC, NUTS

    def potential(x):
        return -target.logdensity(x)

    mcmc = MCMC(
        NUTS(potential_fn=potential), num_warmup=budget.warmup, num_samples=budget.draws,
        num_chains=N_CHAINS, chain_method="vectorized", progress_bar=False,
    )
    mcmc.warmup(key, init_params=x0, extra_fields=("num_steps",), collect_warmup=True)
    warm_steps = int(np.sum(mcmc.get_extra_fields()["num_steps"]))
    mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("num_steps",))
    samples = np.asarray(mcmc.get_samples(group_by_chain=True))
    evals = N_CHAINS + warm_steps + int(np.sum(mcmc.get_extra_fields()["num_steps"]))
    return samples, evals, {}


def run_si(local: str):
    def run(key, target: Target, x0, budget: Budget):
        from numpyro_si.inference import adaptive

        result = adaptive.run(
            key, target.logdensity, x0, local=local, n_local=budget.si_n_local,
            n_warmup_rounds=budget.si_rounds, n_warmup_steps=budget.si_round_steps,
            n_production=budget.draws, fit_steps=budget.si_fit_steps, show_progress=False,
        )
        extra = {
            "global acc": float(jnp.mean(result.global_acceptance)),
            "log q solver error": result.log_q_solver_error,
            "timing": {k: round(v, 1) for k, v in result.timing.items()},
        }
        evals = result.grad_evals_warmup + result.grad_evals_production
        return np.asarray(result.samples), evals, extra

    return run


def run_flowmc(key, target: Target, x0, budget: Budget):
    from flowMC.resource_strategy_bundle.RQSpline_MALA import RQSpline_MALA_Bundle
    from flowMC.Sampler import Sampler

    logging.getLogger("flowMC").setLevel(logging.WARNING)
    key_bundle, key_sampler = jax.random.split(key)
    bundle = RQSpline_MALA_Bundle(
        key_bundle, N_CHAINS, target.dim, lambda x, data: target.logdensity(x),
        n_local_steps=budget.flowmc_local, n_global_steps=budget.flowmc_global,
        n_training_loops=budget.flowmc_training_loops,
        n_production_loops=budget.flowmc_production_loops, n_epochs=budget.flowmc_epochs,
    )
    sampler = Sampler(
        n_dim=target.dim, n_chains=N_CHAINS, rng_key=key_sampler,
        resource_strategy_bundles=bundle, checkpoint_interval=0,
    )
    sampler.sample(x0, {})
    samples = np.asarray(sampler.resources["positions_production"].data)
    global_acc = np.asarray(sampler.resources["global_accs_production"].data)
    loops = budget.flowmc_training_loops + budget.flowmc_production_loops
    # its MALA evaluates the gradient at the current point and at the proposal (2 per step); a
    # global step evaluates the density at the flow's proposal (1)
    evals = N_CHAINS * loops * (2 * budget.flowmc_local + budget.flowmc_global)
    # the global-acceptance buffer holds 0/1 per stored step; its global steps are the last
    # flowmc_global of every loop of flowmc_local + flowmc_global stored steps
    period = budget.flowmc_local + budget.flowmc_global
    is_global = (np.arange(samples.shape[1]) % period) >= budget.flowmc_local
    return samples, evals, {"global acc": float(np.mean(global_acc[:, is_global]))}


def run_neutra(key, target: Target, x0, budget: Budget):
    import numpyro
    import numpyro.distributions as dist
    from numpyro import optim
    from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoBNAFNormal
    from numpyro.infer.reparam import NeuTraReparam

    def model():
        x = numpyro.sample(
            "x", dist.ImproperUniform(dist.constraints.real_vector, (), (target.dim,))
        )
        numpyro.factor("log_pi", target.logdensity(x))

    key_svi, key_mcmc = jax.random.split(key)
    guide = AutoBNAFNormal(model, num_flows=1, hidden_factors=[8, 8])
    svi = SVI(model, guide, optim.Adam(1e-3), Trace_ELBO())
    svi_result = svi.run(key_svi, budget.neutra_svi_steps, progress_bar=False)
    neutra = NeuTraReparam(guide, svi_result.params)
    mcmc = MCMC(
        NUTS(neutra.reparam(model)), num_warmup=budget.warmup, num_samples=budget.draws,
        num_chains=N_CHAINS, chain_method="vectorized", progress_bar=False,
    )
    del x0  # NUTS starts in the latent space of the guide (NumPyro's default initialisation)
    mcmc.warmup(key_mcmc, extra_fields=("num_steps",), collect_warmup=True)
    warm_steps = int(np.sum(mcmc.get_extra_fields()["num_steps"]))
    mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("num_steps",))
    latent = mcmc.get_samples(group_by_chain=True)["auto_shared_latent"]
    samples = np.asarray(
        jax.vmap(lambda z: neutra.transform_sample(z)["x"])(latent.reshape(-1, target.dim))
    ).reshape(N_CHAINS, budget.draws, target.dim)
    # one model gradient per SVI step (one ELBO particle) and per leapfrog step
    evals = budget.neutra_svi_steps + N_CHAINS + warm_steps + int(
        np.sum(mcmc.get_extra_fields()["num_steps"])
    )
    return samples, evals, {}


METHODS = {
    "nuts": run_nuts,
    "si-mala": run_si("mala"),
    "si-nuts": run_si("nuts"),
    "flowmc": run_flowmc,
    "neutra": run_neutra,
}
# the table's labels of the method ids, in the table's order
METHOD_LABELS = {
    "nuts": "NUTS",
    "si-mala": "SIFlow + MALA",
    "si-nuts": "SIFlow + NUTS",
    "flowmc": "flowMC (RQSpline + MALA)",
    "neutra": "NeuTra (AutoBNAFNormal + NUTS)",
}


# ------------------------------------------------------------------------------------------------
# scoring
# ------------------------------------------------------------------------------------------------


def score(target: Target, samples: np.ndarray, evals: int, seconds: float) -> dict:
    samples = np.asarray(samples, dtype=np.float64)
    finite = bool(np.all(np.isfinite(samples)))
    out = {"evals": evals, "seconds": seconds, "finite": finite}
    if not finite:
        return out | {"weight error": float("nan"), "m1 error": float("nan"),
                      "m2 error": float("nan"), "ess": 0.0}
    if target.modes is not None:
        labels = np.asarray(target.modes(samples)).reshape(-1)
        estimate = np.bincount(labels, minlength=len(target.weights)) / labels.size
        out["weight error"] = float(np.max(np.abs(estimate - target.weights)))
    else:
        out["weight error"] = float("nan")
    first = np.asarray(target.first(samples)).reshape(-1, len(target.first_truth))
    second = np.asarray(target.second(samples)).reshape(-1, len(target.second_truth))
    out["m1 error"] = float(np.max(np.abs(first.mean(0) - target.first_truth) / target.first_sd))
    out["m2 error"] = float(np.max(np.abs(second.mean(0) / target.second_truth - 1.0)))
    ess = az.ess(az.convert_to_dataset(samples), method="bulk")["x"].values
    out["ess"] = float(np.min(ess))
    return out


def fmt(value, spec):
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else \
        format(value, spec)


HEADER = (
    "| target | method | mode-weight error | 1st-moment error (sd) | 2nd-moment error (rel.) |"
    " min ESS (bulk) | ESS / 1000 evals | ESS / s | wall-clock (s) | global acc. |"
)


def table_fields(result) -> dict:
    """The numbers a scored run contributes to the table (None where not applicable)."""
    fields = {
        "weight_error": result["weight error"], "m1_error": result["m1 error"],
        "m2_error": result["m2 error"], "ess": result["ess"],
        "ess_per_1000_evals": 1000 * result["ess"] / result["evals"] if result["evals"] else None,
        "ess_per_s": result["ess"] / result["seconds"], "seconds": result["seconds"],
        "global_acc": result.get("global acc"),
    }
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in fields.items()}


def row(target: str, method: str, fields: dict) -> str:
    """A table row of target and method ids from their stored `table_fields`."""
    return (
        f"| {target} | {METHOD_LABELS[method]} | {fmt(fields['weight_error'], '.3f')} |"
        f" {fmt(fields['m1_error'], '.3f')} | {fmt(fields['m2_error'], '.3f')} |"
        f" {fmt(fields['ess'], '.0f')} | {fmt(fields['ess_per_1000_evals'], '.2f')} |"
        f" {fmt(fields['ess_per_s'], '.2f')} | {fields['seconds']:.0f} |"
        f" {fmt(fields['global_acc'], '.2f')} |"
    )


def read_store() -> dict:
    return json.loads(STORE.read_text())["rows"] if STORE.exists() else {}


def store_row(target: str, method: str, fields: dict) -> None:
    rows = read_store()
    rows.setdefault(target, {})[method] = fields
    write_json(STORE, {"schema": 1, "rows": rows})


# ------------------------------------------------------------------------------------------------
# phi^4 reference
# ------------------------------------------------------------------------------------------------


def phi4_reference(key, n_chains=16, n_warmup=1000, n_draws=20_000):
    """E[mean_i phi_i^2] from within-mode NUTS chains all started in the phi ~ +1 mode."""
    from numpyro.infer import MCMC, NUTS

    mcmc = MCMC(
        NUTS(potential_fn=lambda x: -phi4_logdensity(x)), num_warmup=n_warmup,
        num_samples=n_draws, num_chains=n_chains, chain_method="vectorized", progress_bar=False,
    )
    x0 = 1.0 + 0.1 * jax.random.normal(jax.random.key(1), (n_chains, PHI4_N))
    mcmc.run(key, init_params=x0)
    samples = np.asarray(mcmc.get_samples(group_by_chain=True), dtype=np.float64)
    assert np.all(samples.mean(-1) > 0), "a reference chain left the +1 mode"
    values = (samples**2).mean(-1)
    ess = float(az.ess(values, method="mean"))
    return float(values.mean()), float(values.std() / math.sqrt(ess)), ess


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def write_region(out: Path, header_lines: list[str]):
    """The table of every stored row, under `header_lines`, into `out`'s mcmc region."""
    text = out.read_text() if out.exists() else "# Benchmarks\n"
    if START in text and END in text:
        old = text[text.index(START) : text.index(END)]
        # stored rows come from several runs: name every command that produced the table
        old_commands = re.findall(r"`([^`]*benchmarks/mcmc.py[^`]*)`", old.split("\n\n")[0])
        new_commands = re.findall(r"`([^`]*benchmarks/mcmc.py[^`]*)`", header_lines[0])
        commands = list(dict.fromkeys(old_commands + new_commands))
        first = header_lines[0]
        rest = first[first.index("Machine:"):]
        header_lines = [
            "Commands (rows from each run): " + ", ".join(f"`{c}`" for c in commands) + ". " + rest,
            *header_lines[1:],
        ]
    stored = read_store()
    table = [row(target, method, stored[target][method])
             for target in [*TARGETS, *(t for t in stored if t not in TARGETS)] if target in stored
             for method in METHOD_LABELS if method in stored[target]]
    region = "\n".join(
        [START, *header_lines, "", HEADER, "| " + " | ".join(["---"] * 10) + " |", *table, END]
    )
    if START in text and END in text:
        text = text[: text.index(START)] + region + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n## MCMC: SIFlow boosting against NUTS, flowMC, NeuTra\n\n" \
            + region + "\n"
    write_text(out, text)


def header_lines(args, budget: Budget) -> list[str]:
    command = "`.venv/bin/python benchmarks/mcmc.py" + (" --quick" if args.quick else "") + \
        (f" --targets {args.targets}" if args.targets != ",".join(TARGETS) else "") + \
        (f" --methods {args.methods}" if args.methods != ",".join(METHODS) else "") + "`"
    return [
        f"Command: {command}. Machine: {platform.machine()}, {platform.processor() or 'cpu'},"
        f" Python {sys.version.split()[0]}, jax {jax.__version__}, {jax.device_count()} CPU"
        " device(s); the 2 cores were shared with other jobs, so wall-clock and ESS/s are"
        " indicative and ESS per 1000 target evaluations is the noise-free figure.",
        f"{N_CHAINS} chains per method, {budget.draws} production draws per chain, float32;"
        " all methods start from the same points, spread over the modes. Targets, methods and"
        " columns are defined in the docstring of `benchmarks/mcmc.py`.",
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budgets (smoke run)")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument("--json", type=Path, help="also dump the raw results here")
    parser.add_argument("--phi4-reference", action="store_true",
                        help="compute the phi^4 second-moment reference and exit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.phi4_reference:
        tic = time.perf_counter()
        mean, se, ess = phi4_reference(jax.random.key(2024))
        print(f"E[mean phi^2] = {mean:.6f} +- {se:.6f} (ESS {ess:.0f},"
              f" {time.perf_counter() - tic:.0f} s)")
        return

    targets = args.targets.split(",")
    methods = args.methods.split(",")
    for name in targets:
        if name not in TARGETS:
            parser.error(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    for name in methods:
        if name not in METHODS:
            parser.error(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    budget = QUICK if args.quick else FULL

    raw = {}
    print(HEADER, flush=True)
    for t_index, name in enumerate(targets):
        target = TARGETS[name]()
        key = jax.random.fold_in(jax.random.key(args.seed), t_index)
        x0 = target.init(jax.random.fold_in(key, 0), N_CHAINS)
        for m_index, method in enumerate(methods):
            tic = time.perf_counter()
            try:
                samples, evals, extra = METHODS[method](jax.random.fold_in(key, m_index + 1),
                                                        target, x0, budget)
            except Exception as error:  # a failed method is a result too
                print(f"| {name} | {method} | failed: {type(error).__name__}: {error} |",
                      flush=True)
                raw[f"{name}/{method}"] = {"error": repr(error)}
                continue
            seconds = time.perf_counter() - tic
            result = score(target, samples, evals, seconds) | extra
            raw[f"{name}/{method}"] = result
            print(row(name, method, table_fields(result)), flush=True)
            if extra.get("timing"):
                print(f"    {name}/{method}: {json.dumps(extra)}", flush=True)
            if not args.no_write:  # after every row, so an interrupted run keeps what it measured
                store_row(name, method, table_fields(result))
                write_region(DEFAULT_OUT, header_lines(args, budget))

    if args.json:
        write_json(args.json, raw, default=str)


if __name__ == "__main__":
    main()
