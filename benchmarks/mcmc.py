"""MCMC benchmark: NUTS, SIFlow-boosted MALA/NUTS, flowMC and NeuTra on targets with known answers.

Run: `.venv/bin/python benchmarks/mcmc.py` (every target and method, seeds 0, 1, 2: several
hours on 2 CPU cores); `--quick` for a smoke run with small budgets that writes nothing;
`--targets gmm2,funnel10`, `--methods nuts,si-mala`, `--seeds 0,1,2,3` for a subset or more
seeds. One invocation is one run: its rows go to `docs/figures/mcmc/results.json` (replacing the
stored run) after each row, with the 1-minute load average at the row's start and end, and the
table of that run's rows goes to `docs/benchmarks.md` between `<!-- mcmc:start -->` and
`<!-- mcmc:end -->` (nothing else there is touched). `--resume` continues the stored run where it
stopped (same settings; resumptions are named in the header). Rendering refuses rows from more
than one run unless `--allow-mixed-runs` is given (which keeps the earlier runs' rows and names
every run in the header). `--render-only` re-renders the stored rows.

Seeds are outermost: for each seed, every target, and each target's methods in an order rotated
by seed and target, so machine load falls on every method alike; each seed draws new start
points (shared by every method) and new keys. Cells are the mean ± standard deviation over the
seeds.

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

`--suite real` runs the same methods on models nobody here wrote, from the Inference Gym
(`_gym_targets.py`; their published ground truths): `eight_schools` (centred eight schools,
d = 10), `brownian_motion` (a Brownian motion with missing observations and unknown noise scales,
d = 32), `stochastic_volatility` (S&P 500 returns, d = 103). They are
scored on the first and second moments of every variable; the starting points are uniform on
[-2, 2] in every unconstrained coordinate (NumPyro's `init_to_uniform`). Their rows go to
`docs/figures/mcmc/results-real.json` and the region `<!-- mcmc-real:start -->`.

Methods, all from the same initial points (spread over the modes), 16 chains unless said:

- `nuts`: NumPyro NUTS (vectorised chains, default settings and warm-up).
- `si-mala`, `si-nuts`: `numpyro_si.inference.adaptive.run` with MALA or NUTS local steps.
- `flowmc`: flowMC 0.6.4 `RQSpline_MALA_Bundle` (its RQSpline flow + MALA) with the settings of
  its dual-moon tutorial (20 chains: the shared 16 and 4 more drawn alike; 100 Adam steps of flow
  training); `flowmc-long`: the same with 3000 Adam steps, SIFlow's training budget;
  `flowmc-pt`: that with its parallel-tempering bundle (`RQSpline_MALA_PT_Bundle`).
- `neutra`: NumPyro `AutoBNAFNormal` fitted by SVI as in NumPyro's `examples/neutra.py`, then
  `NeuTraReparam` + NUTS started at the shared points' pre-images in the guide's latent space.

The budgets and every peer setting, against what the peer's documentation recommends, are
rendered as tables above the results (`budget_table`, `peer_settings`).

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
import os
import platform
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
from _bench_io import write_docs_region, write_json  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
# the rows of the table's run (`read_store`)
STORE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "mcmc" / "results.json"
START, END = "<!-- mcmc:start -->", "<!-- mcmc:end -->"
# the models of the Inference Gym (`--suite real`): their own store and docs region
STORE_REAL = STORE.with_name("results-real.json")
START_REAL, END_REAL = "<!-- mcmc-real:start -->", "<!-- mcmc-real:end -->"
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


def gym_target(target_id: str) -> Callable[[], Target]:
    def build() -> Target:
        from _gym_targets import gym_parts

        parts = gym_parts(target_id)
        dim = parts.pop("dim")

        def init(key, n):  # NumPyro's init_to_uniform: U(-2, 2) per unconstrained coordinate
            return jax.random.uniform(key, (n, dim), minval=-2.0, maxval=2.0)

        return Target(name=target_id, dim=dim, init=init, modes=None, weights=None, **parts)

    return build


REAL_TARGETS = {name: gym_target(name) for name in
                ("eight_schools", "brownian_motion", "stochastic_volatility")}
# every target by name; the synthetic ones first, so their keys (`run_row`) are unchanged
ALL_TARGETS = {**TARGETS, **REAL_TARGETS}
SUITES = {"synthetic": (TARGETS, STORE, START, END),
          "real": (REAL_TARGETS, STORE_REAL, START_REAL, END_REAL)}


# ------------------------------------------------------------------------------------------------
# methods: each returns samples (chains, draws, d), target evaluations, extra columns
# ------------------------------------------------------------------------------------------------


# flowMC's dual-moon tutorial (docs/tutorials/dualmoon.ipynb, cell 8, GW-JAX-Team/flowMC@2416b11,
# the same in kazewong/flowMC@b6a06e5): the settings its documentation recommends, as
# RQSpline_MALA_Bundle arguments; everything not named here is the 0.6.4 bundle's default.
FLOWMC_TUTORIAL = dict(
    n_chains=20, n_local_steps=100, n_global_steps=10, n_training_loops=20,
    n_production_loops=20, n_epochs=5, learning_rate=5e-3, batch_size=5000, n_max_examples=5000,
)
# The flowMC variants of the table: the tutorial's settings; the same with a flow training budget
# equal to SIFlow's (3000 Adam steps: batches of 500 from its 5000 examples, 15 epochs per
# training loop); and that with its parallel-tempering bundle (5 temperatures up to 20 as in its
# parallel-tempering tutorial, MALA steps at each temperature as many as the local steps).
FLOWMC_VARIANTS = {
    "flowmc": {},
    "flowmc-long": dict(batch_size=500, n_epochs=15),
    "flowmc-pt": dict(batch_size=500, n_epochs=15, n_temperatures=5, max_temperature=20.0),
}


@dataclasses.dataclass(frozen=True)
class Budget:
    """Every method's settings; the peers' follow their own documentation and examples
    (`peer_settings` cites them)."""

    warmup: int  # NUTS / NeuTra warm-up iterations
    draws: int  # production draws per chain (NUTS, NeuTra, SIFlow)
    si_rounds: int
    si_round_steps: int
    si_fit_steps: int
    si_n_local: int
    flowmc: dict  # RQSpline_MALA_Bundle arguments
    neutra_svi_steps: int
    neutra_learning_rate: float

    def flowmc_settings(self, variant: str) -> dict:
        settings = self.flowmc | FLOWMC_VARIANTS[variant]
        settings["n_max_examples"] = max(settings["n_max_examples"], settings["batch_size"])
        if "n_temperatures" in settings:  # the bundle's default (-1) means this, with a warning
            settings.setdefault("n_tempered_steps", settings["n_local_steps"])
        return settings


FULL = Budget(
    warmup=500, draws=500, si_rounds=3, si_round_steps=100, si_fit_steps=1000, si_n_local=5,
    flowmc=FLOWMC_TUTORIAL, neutra_svi_steps=10_000, neutra_learning_rate=3e-3,
)
QUICK = Budget(
    warmup=100, draws=100, si_rounds=2, si_round_steps=50, si_fit_steps=200, si_n_local=3,
    flowmc=dict(FLOWMC_TUTORIAL, n_local_steps=10, n_global_steps=5, n_training_loops=4,
                n_production_loops=4, n_epochs=2, batch_size=1000, n_max_examples=1000),
    neutra_svi_steps=300, neutra_learning_rate=3e-3,
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
    return samples, evals, {"flow steps": 0}


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
            "flow steps": budget.si_rounds * budget.si_fit_steps,
        }
        evals = result.grad_evals_warmup + result.grad_evals_production
        return np.asarray(result.samples), evals, extra

    return run


def flowmc_starts(key, target: Target, x0, n_chains: int):
    """The shared start points, then (if flowMC runs more chains) more drawn as they were."""
    if n_chains <= len(x0):
        return x0[:n_chains]
    return jnp.concatenate([x0, target.init(jax.random.fold_in(key, 99), n_chains - len(x0))])


def flowmc_adam_steps(settings: dict) -> int:
    """Adam steps of flowMC's flow training: each training loop draws `n_max_examples` points
    (with replacement) from the last `history_window` steps of every chain and runs `n_epochs`
    epochs over them in batches of `batch_size` (its `train_epoch` drops a last partial batch and
    takes one step on all the points when they are fewer than a batch)."""
    per_epoch = max(settings["n_max_examples"] // settings["batch_size"], 1)
    return settings["n_training_loops"] * settings["n_epochs"] * per_epoch


def flowmc_evals(settings: dict) -> int:
    """Target evaluations of a flowMC run: its MALA evaluates the density and gradient at the
    current point and at the proposal (2 per step), a global step the density at the flow's
    proposal (1), and the tempering step MALA steps at every temperature."""
    local, global_ = settings["n_local_steps"], settings["n_global_steps"]
    per_loop = 2 * local + global_
    if "n_temperatures" in settings:
        per_loop += 2 * settings["n_temperatures"] * settings.get("n_tempered_steps", local)
    loops = settings["n_training_loops"] + settings["n_production_loops"]
    return settings["n_chains"] * loops * per_loop


def run_flowmc(variant: str):
    def run(key, target: Target, x0, budget: Budget):
        from flowMC.resource_strategy_bundle.RQSpline_MALA import RQSpline_MALA_Bundle
        from flowMC.resource_strategy_bundle.RQSpline_MALA_PT import RQSpline_MALA_PT_Bundle
        from flowMC.Sampler import Sampler

        logging.getLogger("flowMC").setLevel(logging.WARNING)
        key_bundle, key_sampler, key_init = jax.random.split(key, 3)
        settings = budget.flowmc_settings(variant)
        bundle_type = RQSpline_MALA_PT_Bundle if "n_temperatures" in settings \
            else RQSpline_MALA_Bundle
        bundle = bundle_type(key_bundle, n_dims=target.dim,
                             logpdf=lambda x, data: target.logdensity(x), **settings)
        sampler = Sampler(
            n_dim=target.dim, n_chains=settings["n_chains"], rng_key=key_sampler,
            resource_strategy_bundles=bundle, checkpoint_interval=0,
        )
        sampler.sample(flowmc_starts(key_init, target, x0, settings["n_chains"]), {})
        samples = np.asarray(sampler.resources["positions_production"].data)
        global_acc = np.asarray(sampler.resources["global_accs_production"].data)
        step_size = np.asarray(sampler.resources["local_sampler"].step_size)
        # the global-acceptance buffer holds 0/1 per stored step; its global steps are the last
        # n_global_steps of every loop of n_local_steps + n_global_steps stored steps
        period = settings["n_local_steps"] + settings["n_global_steps"]
        is_global = (np.arange(samples.shape[1]) % period) >= settings["n_local_steps"]
        return samples, flowmc_evals(settings), {
            "global acc": float(np.mean(global_acc[:, is_global])),
            "flow steps": flowmc_adam_steps(settings),
            "mala step size": [float(step_size.min()), float(step_size.max())],
        }

    return run


def latent_start(transform: Callable, x0, iterations: int = 100):
    """z with transform(z) close to x0, per row of x0, by damped Newton steps from z = x0 (the
    guide's flow has no closed-form inverse): each step takes the largest of 1, 1/2, ..., 1/64
    of the Newton step that lowers the residual. Returns z and each row's max |transform(z) - x|."""
    damping = 2.0 ** -jnp.arange(7)

    def solve(x):
        def residual(z):
            return jnp.max(jnp.abs(transform(z) - x))

        def step(z, _):
            delta = jnp.linalg.solve(jax.jacfwd(transform)(z), transform(z) - x)
            candidates = z - damping[:, None] * delta
            errors = jax.vmap(residual)(candidates)
            errors = jnp.where(jnp.isfinite(errors), errors, jnp.inf)
            best = jnp.argmin(errors)
            return jnp.where(errors[best] < residual(z), candidates[best], z), None

        z, _ = jax.lax.scan(step, x, None, length=iterations)
        return z, residual(z)

    z, error = jax.vmap(solve)(x0)
    return z, np.asarray(error)


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
    svi = SVI(model, guide, optim.Adam(budget.neutra_learning_rate), Trace_ELBO())
    svi_result = svi.run(key_svi, budget.neutra_svi_steps, progress_bar=False)
    neutra = NeuTraReparam(guide, svi_result.params)

    def transform(z):
        return neutra.transform_sample(z)["x"]

    # start NUTS at the shared points: their pre-images under the guide's flow (as near as
    # Newton's method gets; the largest miss is reported)
    z0, residual = latent_start(transform, jnp.asarray(x0))
    mcmc = MCMC(
        NUTS(neutra.reparam(model)), num_warmup=budget.warmup, num_samples=budget.draws,
        num_chains=N_CHAINS, chain_method="vectorized", progress_bar=False,
    )
    mcmc.warmup(key_mcmc, init_params={"auto_shared_latent": z0}, extra_fields=("num_steps",),
                collect_warmup=True)
    warm_steps = int(np.sum(mcmc.get_extra_fields()["num_steps"]))
    mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("num_steps",))
    latent = mcmc.get_samples(group_by_chain=True)["auto_shared_latent"]
    samples = np.asarray(jax.vmap(transform)(latent.reshape(-1, target.dim))).reshape(
        N_CHAINS, budget.draws, target.dim)
    # one model gradient per SVI step (one ELBO particle) and per leapfrog step
    evals = budget.neutra_svi_steps + N_CHAINS + warm_steps + int(
        np.sum(mcmc.get_extra_fields()["num_steps"])
    )
    return samples, evals, {"flow steps": budget.neutra_svi_steps,
                            "start miss": float(residual.max())}


METHODS = {
    "nuts": run_nuts,
    "si-mala": run_si("mala"),
    "si-nuts": run_si("nuts"),
    "flowmc": run_flowmc("flowmc"),
    "flowmc-long": run_flowmc("flowmc-long"),
    "flowmc-pt": run_flowmc("flowmc-pt"),
    "neutra": run_neutra,
}
# the table's labels of the method ids, in the table's order
METHOD_LABELS = {
    "nuts": "NUTS",
    "si-mala": "SIFlow + MALA",
    "si-nuts": "SIFlow + NUTS",
    "flowmc": "flowMC, its tutorial's settings",
    "flowmc-long": "flowMC, 3000 Adam steps",
    "flowmc-pt": "flowMC + tempering, 3000 Adam steps",
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
        labels = np.asarray(target.modes(samples))  # (chains, draws)
        estimate = np.bincount(labels.reshape(-1), minlength=len(target.weights)) / labels.size
        out["weight error"] = float(np.max(np.abs(estimate - target.weights)))
        # mode changes along each chain, averaged over chains: chains that never change mode
        # keep the split they started with, right or wrong
        out["mode switches"] = float(np.mean(np.sum(labels[:, 1:] != labels[:, :-1], axis=1)))
    else:
        out["weight error"] = out["mode switches"] = float("nan")
    first = np.asarray(target.first(samples)).reshape(-1, len(target.first_truth))
    second = np.asarray(target.second(samples)).reshape(-1, len(target.second_truth))
    out["m1 error"] = float(np.max(np.abs(first.mean(0) - target.first_truth) / target.first_sd))
    out["m2 error"] = float(np.max(np.abs(second.mean(0) / target.second_truth - 1.0)))
    ess = az.ess(az.convert_to_dataset(samples), method="bulk")["x"].values
    out["ess"] = float(np.min(ess))
    return out


def table_fields(result) -> dict:
    """The numbers a scored run contributes to the table (None where not applicable)."""
    fields = {
        "weight_error": result["weight error"], "m1_error": result["m1 error"],
        "m2_error": result["m2 error"], "ess": result["ess"], "evals": result["evals"],
        "ess_per_1000_evals": 1000 * result["ess"] / result["evals"] if result["evals"] else None,
        "ess_per_s": result["ess"] / result["seconds"], "seconds": result["seconds"],
        "global_acc": result.get("global acc"), "flow_steps": result.get("flow steps"),
        "mode_switches": result.get("mode switches"),
    }
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in fields.items()}


# ------------------------------------------------------------------------------------------------
# the run's store: every row of one run, with the load it ran under
# ------------------------------------------------------------------------------------------------


class MixedRunsError(RuntimeError):
    """The stored rows come from more than one run."""


def new_run(command: str, budget: Budget, seeds: list[int], targets: list[str],
            methods: list[str]) -> dict:
    return {
        "id": time.strftime("%Y%m%dT%H%M%S"), "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M"), "resumed": [], "machine": machine(),
        "budget": dataclasses.asdict(budget), "seeds": seeds, "targets": targets,
        "methods": methods,
    }


def read_store(path: Path = STORE) -> dict:
    """`{"schema": 2, "runs": {run id: run}, "rows": [row, ...]}`; each row carries its run id,
    seed, target, method, `table_fields`, and the 1-minute load average at its start and end."""
    if path.exists():
        store = json.loads(path.read_text())
        if store.get("schema") == 2:
            return store
    return {"schema": 2, "runs": {}, "rows": []}


def save_store(store: dict, path: Path = STORE) -> None:
    write_json(path, store)


def is_done(store: dict, run_id: str, seed: int, target: str, method: str) -> bool:
    return any(r["run"] == run_id and r["seed"] == seed and r["target"] == target
               and r["method"] == method for r in store["rows"])


def aggregate(rows: list[dict], allow_mixed: bool = False) -> dict:
    """{(target, method): {field: (mean, sd, n)}} over the rows' seeds.

    Raises `MixedRunsError` when the rows come from more than one run, unless `allow_mixed`."""
    runs = sorted({r["run"] for r in rows})
    if len(runs) > 1 and not allow_mixed:
        raise MixedRunsError(
            f"the stored rows come from {len(runs)} runs ({', '.join(runs)}); a table's rows"
            " must come from one run. Re-run every row (or pass --allow-mixed-runs to render"
            " them anyway, each run named in the header)."
        )
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["target"], r["method"]), []).append(r["fields"])
    out = {}
    for key, fields in groups.items():
        out[key] = {}
        for name in fields[0]:
            values = [f[name] for f in fields if isinstance(f.get(name), (int, float))]
            if not values:
                out[key][name] = (None, None, 0)
                continue
            values = np.asarray(values, dtype=float)
            sd = float(values.std(ddof=1)) if len(values) > 1 else None
            out[key][name] = (float(values.mean()), sd, len(values))
    return out


def cell(stat: tuple, spec: str) -> str:
    mean, sd, _ = stat
    if mean is None:
        return "n/a"
    return format(mean, spec) + ("" if sd is None else " ± " + format(sd, spec))


HEADER = (
    "| target | method | seeds | mode-weight error | mode switches per chain |"
    " 1st-moment error (sd) | 2nd-moment error (rel.) | min ESS (bulk) | target evals (k) |"
    " ESS / 1000 evals | ESS / s | wall-clock (s) | global acc. |"
)


def table(stats: dict, targets: list[str]) -> list[str]:
    lines = [HEADER, "| " + " | ".join(["---"] * 13) + " |"]
    for target in targets:
        for method in METHOD_LABELS:
            if (target, method) not in stats:
                continue
            s = stats[target, method]
            evals = s["evals"]
            lines.append(
                f"| {target} | {METHOD_LABELS[method]} | {s['ess'][2]} |"
                f" {cell(s['weight_error'], '.3f')} | {cell(s.get('mode_switches', (None,) * 3), '.1f')} |"
                f" {cell(s['m1_error'], '.3f')} |"
                f" {cell(s['m2_error'], '.3f')} | {cell(s['ess'], '.0f')} |"
                f" {evals[0] / 1000:.0f} | {cell(s['ess_per_1000_evals'], '.2f')} |"
                f" {cell(s['ess_per_s'], '.2f')} | {cell(s['seconds'], '.0f')} |"
                f" {cell(s['global_acc'], '.2f')} |"
            )
    return lines


# What counts as a right answer in the verdicts: the mode weights within this of the truth (mean
# over the seeds) and the reported second moments within this relative error.
WEIGHT_OK, M2_OK, SWITCHES_OK = 0.05, 0.10, 1.0
SI_METHODS = ("si-mala", "si-nuts")


def _per_seed(store: dict) -> dict:
    """{(target, method): {seed: fields}} of the stored rows."""
    out: dict = {}
    for row in store["rows"]:
        out.setdefault((row["target"], row["method"]), {})[row["seed"]] = row["fields"]
    return out


def _mean(fields_by_seed: dict, name: str) -> float | None:
    values = [f[name] for f in fields_by_seed.values() if f.get(name) is not None]
    return float(np.mean(values)) if values else None


def right(fields_by_seed: dict) -> bool:
    """Whether a method's rows are within tolerance: weights (if multimodal; and its chains
    changed mode, at least `SWITCHES_OK` times per chain on average, since chains that never do
    keep the split they started with), second moments."""
    weights, m2 = _mean(fields_by_seed, "weight_error"), _mean(fields_by_seed, "m2_error")
    if weights is not None:
        switches = _mean(fields_by_seed, "mode_switches")
        if weights > WEIGHT_OK or switches is None or switches < SWITCHES_OK:
            return False
    return m2 is not None and m2 <= M2_OK


def ratio_text(a: dict, b: dict, name: str) -> str:
    """Per seed the ratio a / b of field `name`; their median and range over the seeds."""
    seeds = sorted(set(a) & set(b))
    ratios = [a[s][name] / b[s][name] for s in seeds if b[s].get(name)]
    if not ratios:
        return "n/a"
    text = f"{np.median(ratios):.1f}x"
    return text + (f" ({min(ratios):.1f}-{max(ratios):.1f}x over {len(ratios)} seeds)"
                   if len(ratios) > 1 else " (1 seed)")


def verdict(target: str, per_seed: dict) -> str:
    methods = [m for m in METHOD_LABELS if (target, m) in per_seed]
    rows = {m: per_seed[target, m] for m in methods}
    good = [m for m in methods if right(rows[m])]

    def describe(m):
        weights, m2 = _mean(rows[m], "weight_error"), _mean(rows[m], "m2_error")
        switches = _mean(rows[m], "mode_switches")
        parts = ([] if weights is None else [f"weights {weights:.3f}"]) + \
            ([] if switches is None else [f"{switches:.1f} mode switches per chain"]) + \
            ([] if m2 is None else [f"2nd moments {m2:.3f}"])
        return f"{METHOD_LABELS[m]} ({', '.join(parts)})"

    line = f"- **{target}**: within tolerance: " + (
        ", ".join(describe(m) for m in good) if good else "none") + "; outside: " + (
        ", ".join(describe(m) for m in methods if m not in good) or "none") + "."
    si = [m for m in good if m in SI_METHODS]
    peers = [m for m in good if m not in SI_METHODS]
    if si and peers:
        best_si = max(si, key=lambda m: _mean(rows[m], "ess_per_1000_evals"))
        best_peer = max(peers, key=lambda m: _mean(rows[m], "ess_per_1000_evals"))
        line += (f" {METHOD_LABELS[best_si]} against {METHOD_LABELS[best_peer]}, the peer within"
                 " tolerance with the most ESS per evaluation: ESS / 1000 evals"
                 f" {ratio_text(rows[best_si], rows[best_peer], 'ess_per_1000_evals')},"
                 f" ESS / s {ratio_text(rows[best_si], rows[best_peer], 'ess_per_s')}.")
    return line


def verdicts(store: dict, targets: list[str]) -> list[str]:
    """One line per target, computed from the stored rows, so the words follow the numbers."""
    per_seed = _per_seed(store)
    return [
        f"Verdicts, computed from the rows above. Within tolerance: mode weights within"
        f" {WEIGHT_OK} of the truth with at least {SWITCHES_OK:g} mode switch per chain"
        " (multimodal targets: chains that never switch keep their starting split, which can be"
        f" right by chance) and the reported second moments within {M2_OK:.0%} (means over the"
        " seeds); ratios are per seed, the SIFlow row's over the"
        " peer's, as their median and range. An ESS of chains that missed a mode (or sit in"
        " one) is not compared: it measures mixing within what the chains saw.",
        "",
        *(verdict(t, per_seed) for t in targets),
    ]


# ------------------------------------------------------------------------------------------------
# peers' settings: what was used against what their documentation recommends
# ------------------------------------------------------------------------------------------------


def budget_table(budget: Budget) -> list[str]:
    """Per method: chains, warm-up, draws, flow training steps: the budgets, stated."""
    b = budget
    rows = [
        ("NUTS", N_CHAINS, f"{b.warmup} NUTS steps (NumPyro's window adaptation)",
         f"{b.draws}", "none"),
        ("SIFlow + MALA / NUTS", N_CHAINS,
         f"{b.si_rounds} rounds of {b.si_round_steps} transitions ({b.si_n_local} local steps"
         " + 1 flow move each), a flow fitted after each",
         f"{b.draws} transitions", f"{b.si_rounds * b.si_fit_steps} Adam steps (batch 512)"),
    ]
    for variant in FLOWMC_VARIANTS:
        f = b.flowmc_settings(variant)
        tempering = (f"; before each loop, {f['n_local_steps']} MALA steps at each of"
                     f" {f['n_temperatures']} temperatures (1 to {f['max_temperature']:g}) and"
                     " swaps") if "n_temperatures" in f else ""
        rows.append((
            METHOD_LABELS[variant], f["n_chains"],
            f"{f['n_training_loops']} training loops of {f['n_local_steps']} MALA +"
            f" {f['n_global_steps']} flow steps{tempering}",
            f"{f['n_production_loops'] * (f['n_local_steps'] + f['n_global_steps'])} steps"
            f" ({f['n_production_loops']} loops)",
            f"{flowmc_adam_steps(f)} Adam steps (batch {f['batch_size']} of"
            f" {f['n_max_examples']} examples, lr {f['learning_rate']:g})"))
    rows.append(("NeuTra", N_CHAINS, f"{b.neutra_svi_steps} SVI steps, then {b.warmup} NUTS"
                 " steps", f"{b.draws}", f"{b.neutra_svi_steps} Adam steps (1 ELBO particle,"
                 f" lr {b.neutra_learning_rate:g})"))
    return ["| method | chains | warm-up | production draws per chain | flow training |",
            "| --- | --- | --- | --- | --- |",
            *(f"| {m} | {c} | {w} | {d} | {f} |" for m, c, w, d, f in rows)]


FLOWMC_SOURCE = "flowMC `docs/tutorials/dualmoon.ipynb` (GW-JAX-Team/flowMC@2416b11)"
NEUTRA_SOURCE = "NumPyro `examples/neutra.py` (pyro-ppl/numpyro@e708f34)"


def peer_settings(budget: Budget) -> list[tuple]:
    """(peer, setting, used here, the peer's documentation, source) rows."""
    f = budget.flowmc
    long = budget.flowmc_settings("flowmc-long")
    pt = budget.flowmc_settings("flowmc-pt")
    return [
        ("flowMC", "chains", f["n_chains"], 20, FLOWMC_SOURCE),
        ("flowMC", "local (MALA) / global steps per loop",
         f"{f['n_local_steps']} / {f['n_global_steps']}", "100 / 10", FLOWMC_SOURCE),
        ("flowMC", "training / production loops",
         f"{f['n_training_loops']} / {f['n_production_loops']}", "20 / 20", FLOWMC_SOURCE),
        ("flowMC", "epochs per loop, batch size, examples per loop",
         f"{f['n_epochs']}, {f['batch_size']}, {f['n_max_examples']} (3000-step rows:"
         f" {long['n_epochs']}, {long['batch_size']}, {long['n_max_examples']})",
         "5, 5000, 5000", FLOWMC_SOURCE),
        ("flowMC", "flow training (Adam steps, lr)",
         f"{flowmc_adam_steps(f)} at {f['learning_rate']:g} (3000-step rows:"
         f" {flowmc_adam_steps(long)})", "100 at 0.005", FLOWMC_SOURCE),
        ("flowMC", "MALA step size", "0.1, adapted during training (0.6.4's default: to"
         " acceptance 0.574, then per dimension)", "0.1 (adaptation came later)",
         "flowMC 0.6.4 `RQSpline_MALA_Bundle` defaults"),
        ("flowMC", "flow (RQSpline)", "4 layers, hidden (32, 32), 8 bins; history window 100",
         "the same", FLOWMC_SOURCE),
        ("flowMC", "start points", "the shared points (and 4 more drawn alike)",
         "standard normal", FLOWMC_SOURCE),
        ("flowMC + tempering", "temperatures, tempered MALA steps",
         f"{pt['n_temperatures']} up to {pt['max_temperature']:g}, {pt['n_local_steps']}",
         "5 up to 20, 3 (with 2 local steps)",
         "flowMC `docs/tutorials/parallel_tempering.ipynb` (GW-JAX-Team/flowMC@2416b11)"),
        ("NeuTra", "guide", "`AutoBNAFNormal(hidden_factors=[8, 8])`, 1 flow", "the same",
         NEUTRA_SOURCE),
        ("NeuTra", "SVI", f"{budget.neutra_svi_steps} steps, Adam"
         f" {budget.neutra_learning_rate:g}, `Trace_ELBO()`", "10000 steps, Adam 0.003,"
         " `Trace_ELBO()`", NEUTRA_SOURCE),
        ("NeuTra", "NUTS warm-up / draws, chains", f"{budget.warmup} / {budget.draws},"
         f" {N_CHAINS}", "1000 / 4000, 1", NEUTRA_SOURCE),
        ("NeuTra", "start points", "the shared points, mapped into the guide's latent space"
         " (Newton's method on its flow)", "uniform in (-2, 2) in the latent space",
         NEUTRA_SOURCE),
        ("NUTS", "settings", "NumPyro's defaults (target acceptance 0.8, tree depth 10,"
         " diagonal mass matrix)", "the same", "NumPyro 0.22 `NUTS`"),
    ]


def peer_table(budget: Budget) -> list[str]:
    lines = ["| peer | setting | used here | the peer's documentation | source |",
             "| --- | --- | --- | --- | --- |"]
    for peer, setting, used, recommended, source in peer_settings(budget):
        lines.append(f"| {peer} | {setting} | {used} | {recommended} | {source} |")
    return lines


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]},"
            f" jax {jax.__version__}, {jax.device_count()} CPU device(s)")


def run_row(store: dict, run_id: str, seed: int, t_index: int, name: str, method: str,
            budget: Budget) -> dict | None:
    """Run one method on one target with one seed; the row, also appended to `store`."""
    target = ALL_TARGETS[name]()
    key = jax.random.fold_in(jax.random.key(seed), t_index)
    x0 = target.init(jax.random.fold_in(key, 0), N_CHAINS)
    m_index = list(METHODS).index(method)
    load_start = os.getloadavg()[0]
    tic = time.perf_counter()
    try:
        samples, evals, extra = METHODS[method](jax.random.fold_in(key, m_index + 1), target,
                                                x0, budget)
    except Exception as error:  # noqa: BLE001 - a failed method is a result too
        print(f"| {name} | {method} | seed {seed} | failed: {type(error).__name__}: {error} |",
              flush=True)
        return None
    seconds = time.perf_counter() - tic
    # every row compiles afresh; a long run accumulates compiled code until LLVM cannot map
    # more ("Cannot allocate memory"), so drop it between rows
    jax.clear_caches()
    result = score(target, samples, evals, seconds) | extra
    row = {"run": run_id, "seed": seed, "target": name, "method": method,
           "fields": table_fields(result), "load": [load_start, os.getloadavg()[0]],
           "finished": time.strftime("%Y-%m-%d %H:%M"),
           "extra": {k: v for k, v in extra.items() if k not in ("global acc", "flow steps")}}
    store["rows"].append(row)
    f = row["fields"]
    print(f"| {name} | {method} | seed {seed} | weights {fmt(f['weight_error'])} |"
          f" ESS {f['ess']:.0f} | ESS/1000 evals {fmt(f['ess_per_1000_evals'])} |"
          f" {seconds:.0f} s | load {row['load'][0]:.2f}->{row['load'][1]:.2f} |"
          f" {json.dumps(row['extra'], default=str)}", flush=True)
    return row


def fmt(value, spec=".3f"):
    return "n/a" if value is None else format(value, spec)


def run_all(store: dict, run: dict, budget: Budget, write) -> None:
    """Every (seed, target, method) row of `run` not yet in `store`: seeds outermost, and each
    target's methods in an order rotated by seed and target, so load hits every method alike."""
    for seed in run["seeds"]:
        for name in run["targets"]:
            t_index = list(ALL_TARGETS).index(name)
            methods = run["methods"]
            shift = (seed + t_index) % len(methods)
            for method in methods[shift:] + methods[:shift]:
                if is_done(store, run["id"], seed, name, method):
                    continue
                if run_row(store, run["id"], seed, t_index, name, method, budget) is not None:
                    write(store)


def render(store: dict, budget: Budget, allow_mixed: bool = False) -> list[str]:
    """The mcmc region's lines (header, budget and peer-settings tables, the table)."""
    stats = aggregate(store["rows"], allow_mixed)
    runs = [store["runs"][r] for r in sorted({row["run"] for row in store["rows"]})]
    loads = [x for row in store["rows"] for x in row["load"]]
    commands = "; ".join(
        f"`{r['command']}` (run {r['id']}, started {r['started']}"
        + (f", resumed {', '.join(r['resumed'])}" if r["resumed"] else "") + ")" for r in runs)
    seeds = sorted({row["seed"] for row in store["rows"]})
    targets = [t for t in ALL_TARGETS if any((t, m) in stats for m in METHODS)]
    return [
        f"Command: {commands}. Machine: {runs[-1]['machine']}. Every row below comes from this"
        f" {'run' if len(runs) == 1 else 'set of runs'}: seeds {', '.join(map(str, seeds))},"
        " seeds outermost and each target's methods in a rotating order, so machine load falls"
        " on every method alike. Cells are the mean ± standard deviation over the seeds (each"
        " seed draws new start points, shared by every method, and new keys). 1-minute load"
        f" average at the rows' starts and ends: {min(loads):.2f} to {max(loads):.2f}"
        " (per row in `docs/figures/mcmc/results.json`). ESS per 1000 target evaluations does"
        " not depend on load; wall-clock and ESS / s do (compilation included). float32."
        " Targets, methods and columns: the docstring of `benchmarks/mcmc.py`.",
        "",
        "Budgets:",
        "",
        *budget_table(budget),
        "",
        "Peer settings (flowMC 0.6.4, NumPyro's NUTS and NeuTra):",
        "",
        *peer_table(budget),
        "",
        *table(stats, targets),
        "",
        *verdicts(store, targets),
    ]


def write_region(out: Path, lines: list[str], suite: str = "synthetic") -> None:
    _, _, start, end = SUITES[suite]
    if suite == "real":  # the synthetic region's heading sits outside its markers
        lines = ["## MCMC on the Inference Gym's models", "", *lines]
    write_docs_region(out, start, end, lines)


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


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budgets; writes nothing")
    parser.add_argument("--suite", choices=tuple(SUITES), default="synthetic",
                        help="the synthetic targets, or the Inference Gym's models (`real`)")
    parser.add_argument("--targets", default=None,
                        help="comma-separated subset of the suite's targets (default: all)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (3 or more)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the stored run (same settings), skipping its done rows")
    parser.add_argument("--allow-mixed-runs", action="store_true",
                        help="keep the rows of earlier runs and render them with this run's")
    parser.add_argument("--render-only", action="store_true",
                        help="render the stored rows into docs/benchmarks.md and exit")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs or the store")
    parser.add_argument("--phi4-reference", action="store_true",
                        help="compute the phi^4 second-moment reference and exit")
    args = parser.parse_args(argv)
    suite_targets = SUITES[args.suite][0]
    if args.targets is None:
        args.targets = ",".join(suite_targets)
    for option, known in (("targets", suite_targets), ("methods", METHODS)):
        for name in getattr(args, option).split(","):
            if name not in known:
                parser.error(f"unknown {option[:-1]} {name!r}; choose from {', '.join(known)}")
    return args


def command_line(args) -> str:
    suite_targets = SUITES[args.suite][0]
    return ".venv/bin/python benchmarks/mcmc.py" + (" --quick" if args.quick else "") + (
        f" --suite {args.suite}" if args.suite != "synthetic" else "") + (
        f" --targets {args.targets}" if args.targets != ",".join(suite_targets) else "") + (
        f" --methods {args.methods}" if args.methods != ",".join(METHODS) else "") + (
        f" --seeds {args.seeds}" if args.seeds != "0,1,2" else "")


def main(argv=None):
    args = parse(argv)
    if args.phi4_reference:
        tic = time.perf_counter()
        mean, se, ess = phi4_reference(jax.random.key(2024))
        print(f"E[mean phi^2] = {mean:.6f} +- {se:.6f} (ESS {ess:.0f},"
              f" {time.perf_counter() - tic:.0f} s)")
        return
    budget = QUICK if args.quick else FULL
    writes = not (args.quick or args.no_write)
    store_path = SUITES[args.suite][1]
    store = read_store(store_path) if writes else {"schema": 2, "runs": {}, "rows": []}

    def write(store):
        if writes:
            save_store(store, store_path)
            write_region(DEFAULT_OUT, render(store, budget, args.allow_mixed_runs), args.suite)

    if args.render_only:
        write(store)
        return
    if args.resume:
        if not store["runs"]:
            raise SystemExit("--resume: no stored run to continue")
        run = store["runs"][max(store["runs"])]
        if run["budget"] != dataclasses.asdict(budget):
            raise SystemExit("--resume: the stored run used other settings; start a new run")
        run["resumed"].append(time.strftime("%Y-%m-%d %H:%M"))
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
        run = new_run(command_line(args), budget, seeds, args.targets.split(","),
                      args.methods.split(","))
        if not args.allow_mixed_runs:
            store = {"schema": 2, "runs": {}, "rows": []}
        store["runs"][run["id"]] = run
    run_all(store, run, budget, write)


if __name__ == "__main__":
    main()
