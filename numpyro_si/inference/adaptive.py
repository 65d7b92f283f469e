"""An adaptive driver: learn an `SIFlow` proposal from the chains during warm-up, then run exact
MCMC with the frozen flow.

For an unnormalised target pi of unknown shape, `run` alternates two things during warm-up:

1. **sampling rounds**: every chain (parallel chains by `jax.vmap`, one jitted `lax.scan` per
   round) takes `n_local` local steps (MALA, HMC, NUTS or any BlackJAX kernel) and then one
   global independence Metropolis-Hastings move proposed by the current flow (the `mixed`
   kernel); the first round has no flow yet and takes local steps only. The local step size is
   tuned by dual averaging on the chains' mean local acceptance rate (one step size for all
   chains);
2. **training rounds**: the flow is trained further by `numpyro_si.train` (the interpolant
   objectives) on the states all chains visited in the latest sampling round: the first round
   builds it (`build_flow`), every later one continues from the previous flow and optimiser state
   (one optimiser, its schedule spanning every round's steps). By default the states are first
   whitened (`whitened_flow`) by their mean and within-chain covariance, measured once on the
   first (local-only) round and kept for every round: a correlated target then looks roughly
   isotropic to the network, the density stays exact (the linear map only adds a constant
   log-Jacobian), and chains stuck in different modes keep the modes' separation as a direction
   of large variance, which the network finds at once (whitened by the pooled covariance, a
   multimodal field's modes can become a direction of unit variance that the network does not
   learn: see `_whitening`).

Then the flow and the step size are frozen and `n_production` transitions of the same `mixed`
kernel are run: a fixed pi-invariant kernel, so the production draws are a valid MCMC.

What the flow can learn. It is fitted to where the chains have been, so every mode must be
visited by some chain during warm-up: start the chains spread out (e.g. from the prior or a wide
box). The chains' split between modes need not be right: the global moves' MH ratio w(y)/w(x),
w = pi/q, moves chains between modes until their split follows pi, and each refit follows the
chains. A mode no chain ever visits is never proposed.

Exactness (docs/math.md sections 4-5 and `numpyro_si.inference.independence`): the MH ratio uses log q
from the flow's ODE with the exact divergence (trace of the Jacobian). What is left is the ODE
solver's error: the proposal y comes from an adaptive forward solve and log q(y) from an adaptive
backward solve, each accurate to about the tolerance `flow_tol`; the production chain targets pi
up to a perturbation of log q of that size (default 1e-7 in float64, 1e-5 in float32), far below
the Monte Carlo error of any run. `AdaptiveResult.log_q_solver_error` measures it at a few
production states by re-solving with a 100 times tighter tolerance.

Example:

```python
from numpyro_si.inference import adaptive

x0 = jax.random.uniform(key_init, (16, 2), minval=-6.0, maxval=6.0)
result = adaptive.run(key, logdensity_fn, x0, local="mala", n_production=2000)
result.samples  # (16, 2000, 2)
az.ess(result.to_inference_data())
```
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from blackjax.adaptation.step_size import dual_averaging_adaptation
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray
from tqdm.auto import tqdm

from .._build import build_flow
from .._checks import check_positive_int, check_real, reject_unknown
from .._devices import points_axis, split_leading
from .._distribution import SIFlow
from .._interpolants import LinearInterpolant, OneSidedLinearInterpolant
from .._networks import FieldMLPSpec
from .._training import (
    RENAMED_TRAIN_OPTIONS,
    TRAIN_DEFAULTS,
    check_train_options,
    default_optimizer,
    train,
)
from . import mixed
from .independence import flow_log_density

__all__ = [
    "AdaptiveResult", "run", "LocalKernel", "LOCAL_KERNELS", "ADAPTIVE_NETWORK",
    "ADAPTIVE_LEARNING_RATE", "WhitenedVelocity", "whitened_flow", "Tempering",
]

#: Local kernels `run` builds by name, with the acceptance rate dual averaging aims at.
LOCAL_KERNELS = {"mala": 0.574, "hmc": 0.8, "nuts": 0.8}


@dataclasses.dataclass(frozen=True)
class AdaptiveResult:
    """What `run` returns.

    - `samples`: production draws, shape `(n_chains, n_production, d)` (the state after each
      transition: `n_local` local steps and one global flow move).
    - `logdensity`: log pi of the draws, `(n_chains, n_production)`.
    - `flow`: the frozen `SIFlow` used as the production proposal.
    - `step_size`: the frozen local step size; `inverse_mass_matrix`: the local kernel's (HMC,
      NUTS; `None` for MALA and custom kernels).
    - `local_acceptance`: per transition, the mean acceptance probability of its local steps,
      `(n_chains, n_production)`.
    - `global_acceptance`, `global_accepted`: the flow move's MH acceptance probability and
      whether it was taken, `(n_chains, n_production)`.
    - `global_failed`: whether a flow density solve failed in that move (it is then rejected).
    - `grad_evals_warmup`, `grad_evals_production`: target log-density gradient evaluations,
      summed over chains (local integration steps, plus one per global move at the proposal,
      plus one per chain at initialisation); production counts every transition run, including
      those of its last round beyond `n_production`.
    - `timing`: wall-clock seconds: `"warmup_sampling"`, `"training"`, `"production"`, `"total"`
      (compilation included).
    - `warmup`: per warm-up round, lists `"beta"` (the round's temperature, 1 without
      tempering), `"local_acceptance"`, `"global_acceptance"` (nan in the
      first, flow-less round), `"step_size"` (at the round's end), `"n_training_points"` and
      `"train_history"` (the `TrainHistory` of each round's `numpyro_si.train`).
    - `log_q_solver_error`: max |log q(x) at `flow_tol` - log q(x) at `flow_tol / 100`| over up to
      16 production states (nats): the size of the remaining solver error in the MH ratio (nan if
      not checked).
    - `interrupted`: whether the run was stopped by Ctrl-C (KeyboardInterrupt). Nothing done is
      lost: the result holds the latest flow (`None` if no round had trained one yet) and the
      production draws made so far (none if warm-up was interrupted).
    - `final_positions`: `(n_chains, d)`, where each chain ended (its last production draw, or
      its last warm-up state when there is no production).
    """

    samples: Float[Array, "chains draws d"]
    logdensity: Float[Array, "chains draws"]
    flow: SIFlow
    step_size: float
    inverse_mass_matrix: Array | None
    local_acceptance: Float[Array, "chains draws"]
    global_acceptance: Float[Array, "chains draws"]
    global_accepted: Bool[Array, "chains draws"]
    global_failed: Bool[Array, "chains draws"]
    grad_evals_warmup: int
    grad_evals_production: int
    timing: dict[str, float]
    warmup: dict[str, list]
    log_q_solver_error: float
    interrupted: bool = False
    final_positions: Float[Array, "chains d"] | None = None

    @property
    def n_chains(self) -> int:
        return self.samples.shape[0]

    def to_inference_data(self, var_name: str = "x"):
        """The production draws as `arviz.InferenceData`: posterior `var_name` with dims
        `(chain, draw, {var_name}_dim_0)`, and `sample_stats` with `lp` (log pi),
        `acceptance_rate` (local), `global_acceptance_rate` and `global_is_accepted`."""
        import arviz as az

        return az.from_dict(
            posterior={var_name: np.asarray(self.samples)},
            sample_stats={
                "lp": np.asarray(self.logdensity),
                "acceptance_rate": np.asarray(self.local_acceptance),
                "global_acceptance_rate": np.asarray(self.global_acceptance),
                "global_is_accepted": np.asarray(self.global_accepted),
            },
        )


class WhitenedVelocity(eqx.Module):
    """A velocity learned in whitened coordinates w = L^{-1} (x - shift), mapped to x:
    b_x(t, x) = L b_w(t, L^{-1} (x - shift)). Its divergence equals that of b_w (trace is
    invariant under similarity), so the flow's log density is the whitened one minus log|det L|.

    **Arguments:**

    - `network`: b_w(t, w) on one point of shape `(d,)`.
    - `shift`: the mean, shape `(d,)`; `chol`: L, lower-triangular `(d, d)` with L L^T the
      covariance.
    """

    network: Callable
    shift: Float[Array, " d"]
    chol: Float[Array, "d d"]

    def __call__(self, t: Float[ArrayLike, ""], x: Float[Array, " d"]) -> Float[Array, " d"]:
        w = jax.scipy.linalg.solve_triangular(self.chol, x - self.shift, lower=True)
        return self.chol @ self.network(t, w)


def whitened_flow(
    flow_w: SIFlow, shift: Float[ArrayLike, " d"], chol: Float[ArrayLike, "d d"]
) -> SIFlow:
    """The x-space `SIFlow` of a flow `flow_w` fitted to whitened data w = L^{-1} (x - shift).

    x = shift + L w maps the one-sided linear interpolant (1 - t) z + t w, z ~ N(0, I), to the
    two-sided deterministic linear interpolant (1 - t) x0 + t x1 with base x0 ~ N(shift, L L^T),
    whose velocity is `WhitenedVelocity`; so log q(x) = log q_w(w) - log|det L| exactly, and the
    ODE solves are the whitened ones up to the linear map.

    **Arguments:**

    - `flow_w`: a flow with the default `OneSidedLinearInterpolant` and no standardisation
      (`build_flow(..., standardize=False)`), trained on the whitened data.
    - `shift`, `chol`: the whitening mean `(d,)` and lower Cholesky factor `(d, d)`.

    **Returns:** an `SIFlow` on x with the ODE sampler and the rest of `flow_w`'s settings.
    """
    if not isinstance(flow_w.interpolant, OneSidedLinearInterpolant):
        raise ValueError(
            "whitening needs the default OneSidedLinearInterpolant, got"
            f" {type(flow_w.interpolant).__name__}; pass whiten=False for other interpolants."
        )
    if flow_w.standardization is not None:
        raise ValueError("build the flow for whitened data with standardize=False.")
    shift, chol = jnp.asarray(shift), jnp.asarray(chol)
    interpolant = LinearInterpolant(
        time_min=flow_w.interpolant.time_min, time_max=flow_w.interpolant.time_max
    )
    return SIFlow(
        interpolant, WhitenedVelocity(flow_w.velocity, shift, chol),
        base=dist.MultivariateNormal(shift, scale_tril=chol), dim=flow_w.dim,
        settings=flow_w.settings.replace(sampler="ode"),
    )


def _whitening(path: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and lower Cholesky factor of the within-chain covariance of a time-ordered
    `(draws, chains, d)` path (each chain's covariance about its own mean, averaged over the
    chains: the W of R-hat), with a ridge of 1e-6 times the mean variance so that a
    rank-deficient sample still factorises. A `(n, d)` array is one chain.

    Why within-chain: chains stuck in different modes differ in their means, and the pooled
    covariance would whiten that between-mode spread to unit variance too. The flow then has
    to find the mode direction from higher moments alone, which a network trained by SGD does
    only after a plateau that lengthens with d (benchmarks/phi4_flow_check.py measures it). The
    within-chain covariance keeps the modes' separation as a direction of large variance.
    """
    if path.ndim == 2:
        path = path[:, None]
    if path.shape[0] < 2:  # one draw per chain: no within-chain spread to measure
        path = path.reshape(1, -1, path.shape[-1]).swapaxes(0, 1)
    d = path.shape[-1]
    shift = path.reshape(-1, d).mean(axis=0)
    centred = (path - path.mean(axis=0)).astype(np.float64)
    covariance = np.einsum("tci,tcj->ij", centred, centred) / (
        (path.shape[0] - 1) * path.shape[1]
    )
    ridge = 1e-6 * max(float(np.trace(covariance)) / d, 1e-12)
    chol = np.linalg.cholesky(covariance + ridge * np.eye(d))
    return shift.astype(path.dtype), chol.astype(path.dtype)


class _Local(NamedTuple):
    """How to build the local kernel for a given step size, and what it aims at."""

    make: Callable  # (logdensity_fn, step_size) -> SamplingAlgorithm
    target_acceptance: float
    inverse_mass_matrix: Array | None


def _check_inputs(logdensity_fn, initial_positions) -> Array:
    if not callable(logdensity_fn):
        raise TypeError(f"logdensity_fn must be callable, got {logdensity_fn!r}.")
    positions = jnp.asarray(initial_positions)
    if not jnp.issubdtype(positions.dtype, jnp.floating):
        raise TypeError(
            f"initial_positions must be a floating-point array, got dtype {positions.dtype}."
        )
    if positions.ndim != 2 or positions.shape[0] < 1 or positions.shape[1] < 1:
        raise ValueError(
            "initial_positions must have shape (n_chains, d), one row per chain, got shape"
            f" {positions.shape}."
        )
    bad = ~np.asarray(jnp.all(jnp.isfinite(positions), axis=1))
    if bad.any():
        raise ValueError(
            f"initial_positions has NaN or inf in chain(s) {np.flatnonzero(bad).tolist()}."
        )
    try:
        shape = getattr(jax.eval_shape(logdensity_fn, positions[0]), "shape", None)
    except Exception as error:  # noqa: BLE001 - a model, or a function of something else
        raise TypeError(
            f"logdensity_fn must map one position of shape ({positions.shape[1]},) to a scalar"
            f" log density; calling it failed ({type(error).__name__}: {error}). For a NumPyro"
            " model use numpyro_si.diagnostics.log_target_from_model(model, *args, **kwargs)."
        ) from error
    if shape is None:
        raise TypeError(
            "logdensity_fn returned no array (is it a NumPyro model? Use"
            " numpyro_si.diagnostics.log_target_from_model(model, *args, **kwargs))."
        )
    if shape != ():
        raise ValueError(
            "logdensity_fn must return a scalar for one position of shape"
            f" ({positions.shape[1]},); got shape {shape}."
        )
    logdensity, gradient = jax.jit(jax.vmap(jax.value_and_grad(logdensity_fn)))(positions)
    bad = ~np.asarray(jnp.isfinite(logdensity))
    if bad.any():
        raise ValueError(
            f"logdensity_fn is not finite at the initial position(s) of chain(s)"
            f" {np.flatnonzero(bad).tolist()} (values {np.asarray(logdensity)[bad].tolist()});"
            " start the chains inside the support."
        )
    bad = ~np.asarray(jnp.all(jnp.isfinite(gradient), axis=1))
    if bad.any():
        raise ValueError(
            f"The gradient of logdensity_fn is not finite at the initial position(s) of chain(s)"
            f" {np.flatnonzero(bad).tolist()}."
        )
    return positions


def _grad_evals(local_info) -> Array:
    """Target-gradient evaluations of local steps: HMC/NUTS report their integration steps; a
    kernel that does not (MALA) takes one per step."""
    steps = getattr(local_info, "num_integration_steps", None)
    if steps is None:
        return jnp.asarray(local_info.acceptance_rate.size)
    return jnp.sum(steps)


def _recording(step: Callable) -> Callable:
    """A local step that also returns the position it reached (training data for free)."""

    def recorded(rng_key, state):
        state, info = step(rng_key, state)
        return state, (info, state.position)

    return recorded


def _thin(points: np.ndarray, max_points: int) -> np.ndarray:
    """Every k-th point of the time-ordered `(draws, chains, d)` array, at most max_points."""
    flat = points.reshape(-1, points.shape[-1])
    stride = max(1, math.ceil(flat.shape[0] / max_points))
    return flat[::stride]


class LocalKernel(eqx.Module):
    """The chains' local moves in `run`.

    **Arguments:**

    - `kernel`: `"mala"` (default), `"hmc"`, `"nuts"`, or a factory
      `kernel(logdensity_fn, step_size) -> blackjax.SamplingAlgorithm` whose states have
      `position` and `logdensity` (then `target_acceptance` is required).
    - `step_size`: the initial step size (the frozen one if `adapt_step_size=False`).
    - `adapt_step_size`: tune the step size by dual averaging during warm-up (one step size for
      all chains, aimed at their mean acceptance rate).
    - `target_acceptance`: the acceptance rate aimed at (default 0.574 for MALA, 0.8 for
      HMC/NUTS: `LOCAL_KERNELS`).
    - `inverse_mass_matrix`: for HMC/NUTS, `(d,)` or `(d, d)` (default identity); fixed.
    - `num_integration_steps`: leapfrog steps of an HMC step.
    """

    kernel: str | Callable = eqx.field(default="mala", static=True)
    step_size: float = 0.1
    adapt_step_size: bool = eqx.field(default=True, static=True)
    target_acceptance: float | None = None
    inverse_mass_matrix: Array | None = None
    num_integration_steps: int = eqx.field(default=10, static=True)

    def __check_init__(self):
        check_real("step_size", self.step_size, low=0.0, low_open=True)
        if self.target_acceptance is not None:
            check_real("target_acceptance", self.target_acceptance, low=0.0, high=1.0,
                       low_open=True, high_open=True)
        if isinstance(self.kernel, str) and self.kernel not in LOCAL_KERNELS:
            raise ValueError(
                f"kernel must be one of {sorted(LOCAL_KERNELS)} or a kernel factory"
                f" kernel(logdensity_fn, step_size) -> SamplingAlgorithm, got {self.kernel!r}."
            )
        if not isinstance(self.kernel, str) and not callable(self.kernel):
            raise TypeError(
                f"kernel must be 'mala', 'hmc', 'nuts' or a factory kernel(logdensity_fn,"
                f" step_size) -> SamplingAlgorithm, got {self.kernel!r}."
            )
        if self.kernel == "hmc":
            check_positive_int("num_integration_steps", self.num_integration_steps)
        if self.kernel == "mala" and self.inverse_mass_matrix is not None:
            raise ValueError("BlackJAX's MALA has no mass matrix; omit inverse_mass_matrix.")
        if callable(self.kernel) and self.target_acceptance is None:
            raise ValueError(
                "A custom local kernel factory needs target_acceptance (the acceptance rate the"
                " step size is tuned to, e.g. 0.574 for MALA-like, 0.8 for HMC-like kernels)."
            )

    def spec(self, dim: int, dtype) -> _Local:
        """How to build the kernel for a target and a step size."""
        kernel = self.kernel
        if callable(kernel):
            return _Local(kernel, self.target_acceptance, None)
        target = LOCAL_KERNELS[kernel] if self.target_acceptance is None else self.target_acceptance
        if kernel == "mala":
            return _Local(blackjax.mala, target, None)
        imm = self.inverse_mass_matrix
        imm = jnp.ones(dim, dtype) if imm is None else jnp.asarray(imm, dtype)
        if imm.shape not in ((dim,), (dim, dim)):
            raise ValueError(
                f"inverse_mass_matrix must have shape ({dim},) or ({dim}, {dim}), got {imm.shape}."
            )
        if kernel == "hmc":
            steps = self.num_integration_steps
            return _Local(lambda logdensity_fn, step: blackjax.hmc(logdensity_fn, step, imm, steps),
                          target, imm)
        return _Local(lambda logdensity_fn, step: blackjax.nuts(logdensity_fn, step, imm), target,
                      imm)


#: `Tempering`'s temperatures unless given others (ratios of about 3 above the first).
DEFAULT_BETAS = (0.0, 0.03, 0.1, 0.3)


class Tempering(eqx.Module):
    """Warm-up on tempered targets, so that the flow learns modes no chain starts in.

    Warm-up round r samples the geometric path between a reference density rho and pi,

        log pi_beta(x) = log rho(x) + beta_r (log pi(x) - log rho(x)),

    with `betas[r]` for the first rounds and beta = 1 (pi itself) for the rest. At small beta
    the chains roam the reference (for a model, its prior) across the barriers between pi's
    modes, the flow is fitted to them, and its global moves carry chains between the modes as
    beta rises; the flow is trained last on pi's own chains, and production samples pi exactly
    (tempering only shapes the warm-up, from which nothing is kept).

    **Arguments:**

    - `reference_logdensity_fn`: log rho of one position `(d,)`, finite wherever pi is (for a
      NumPyro model, `ModelLogDensity.log_prior`: the model without its observations). With
      `betas[0] = 0` the first round samples rho alone, so rho must then be normalisable.
    - `betas`: the temperatures of the first warm-up rounds, non-decreasing in [0, 1). Each
      round's flow proposes for the next one, so consecutive temperatures should not be far
      apart where pi is much narrower than rho (ratios of about 3 work on the tested targets).
    """

    reference_logdensity_fn: Callable = eqx.field(static=True)
    betas: tuple[float, ...] = eqx.field(
        default=DEFAULT_BETAS, static=True,
        converter=lambda b: tuple(b) if isinstance(b, list | np.ndarray) else b,
    )

    def __check_init__(self):
        if not callable(self.reference_logdensity_fn):
            raise TypeError(
                "reference_logdensity_fn must be callable (log rho of one position), got"
                f" {self.reference_logdensity_fn!r}."
            )
        betas = self.betas
        if not isinstance(betas, tuple) or not betas:
            raise ValueError(f"betas must be a non-empty tuple of floats, got {betas!r}.")
        for beta in betas:
            check_real("each of betas", beta, low=0.0, high=1.0, high_open=True)
        if any(b < a for a, b in zip(betas, betas[1:], strict=False)):
            raise ValueError(f"betas must be non-decreasing, got {betas!r}.")

    def targets(self, logdensity_fn: Callable) -> Callable:
        """`beta -> log pi_beta` (beta may be traced)."""
        reference = self.reference_logdensity_fn

        def target(beta):
            def logdensity(x):
                log_rho = reference(x)
                return log_rho + beta * (logdensity_fn(x) - log_rho)

            return logdensity

        return target

    def check_reference(self, positions: Array) -> None:
        """The reference must be finite, with a finite gradient, at the starting points."""
        values, gradients = jax.jit(jax.vmap(jax.value_and_grad(self.reference_logdensity_fn)))(
            positions
        )
        bad = ~np.asarray(jnp.isfinite(values) & jnp.all(jnp.isfinite(gradients), axis=-1))
        if bad.any():
            raise ValueError(
                "tempering.reference_logdensity_fn (or its gradient) is not finite at the initial"
                f" position(s) of chain(s) {np.flatnonzero(bad).tolist()}."
            )


#: The network of every round's flow unless `run` is given another: the MCMC benchmark's
#: setting (docs/benchmarks.md), wider and shallower than `build_flow`'s low-dimensional default.
ADAPTIVE_NETWORK = FieldMLPSpec(width=128, depth=3)

#: The learning rate of the rounds' optimiser unless `train_options` sets one (lower than
#: `train`'s: the later rounds refine a flow that is already close).
ADAPTIVE_LEARNING_RATE = 2e-3

# `train` options that `run` sets itself
_RUN_SETS = ("num_steps", "opt_state", "show_progress")


class _FlowLearner:
    """The flow of the warm-up, built in the first round and trained further in every round (one
    optimiser whose schedule spans all rounds), in whitened coordinates when `whiten`."""

    def __init__(self, key, network, fit_steps, train_options, whiten, flow_tol):
        self.key, self.network, self.fit_steps = key, network, fit_steps
        self.whiten, self.flow_tol = whiten, flow_tol
        options = dict(train_options)
        learning_rate = options.pop("learning_rate", ADAPTIVE_LEARNING_RATE)
        weight_decay = options.pop("weight_decay", 0.0)
        if options.get("optimizer") is None:
            options["optimizer"] = default_optimizer(learning_rate, sum(fit_steps), weight_decay)
        self.options = options
        self.flow_w = self.opt_state = self.shift = self.chol = None

    def train_round(self, round_index: int, path: np.ndarray, training: np.ndarray):
        """Train on this round's points; returns `(flow for the MH moves, TrainHistory)`."""
        self.key, key_build, key_train = jax.random.split(self.key, 3)
        if self.whiten:
            if round_index == 0:
                # fixed from the first (local-only) round: the same coordinates for every round,
                # and chains not yet moved between modes by the flow
                self.shift, self.chol = _whitening(path)
            training = np.linalg.solve(self.chol, (training - self.shift).T).T.astype(
                training.dtype
            )
        if self.flow_w is None:
            self.flow_w = build_flow(key_build, training, network=self.network,
                                     standardize=not self.whiten)
        self.flow_w, history = train(
            key_train, self.flow_w, training, num_steps=self.fit_steps[round_index],
            opt_state=self.opt_state, show_progress=False, **self.options,
        )
        self.opt_state = history.opt_state
        flow = self.flow_w
        if self.whiten:
            flow = whitened_flow(flow, self.shift, self.chol)
        return flow.with_settings(sampler="ode", rtol=self.flow_tol, atol=self.flow_tol), history


class _Rounds(NamedTuple):
    """The jitted sampling rounds for one target family: `local_round(states, da_state, key,
    beta)` (the flow-less first round) and `flow_round(states, da_state, key, adapt, flow, beta)`,
    each `n_round` transitions of every chain, returning `(states, da_state, record, path,
    gradient evaluations)`; `attach_flow(local_states, flow)` (the mixed kernel's states); and
    `init(positions, step, beta)` (local states at positions). `beta` is traced, so one
    compilation serves every temperature."""

    local_round: Callable
    flow_round: Callable
    attach_flow: Callable
    init: Callable


def _rounds(spec: _Local, target: Callable, n_chains, dim, dtype, n_local, n_round,
            adapt_step_size, da_update) -> _Rounds:
    """The `_Rounds` of the targets `target(beta)` (a log density for each beta)."""

    def local_transition(states, step, key, logdensity_fn):
        """n_local local steps on every chain (the first, flow-less round)."""
        recorded = _recording(spec.make(logdensity_fn, step).step)

        def one_chain(chain_key, state):
            return jax.lax.scan(
                lambda s, k: recorded(k, s), state, jax.random.split(chain_key, n_local)
            )

        states, (infos, path) = jax.vmap(one_chain)(jax.random.split(key, n_chains), states)
        nan = jnp.full((n_chains,), jnp.nan, dtype)
        false = jnp.zeros((n_chains,), bool)
        return states, states, infos, path, (nan, false, false)

    def flow_transition(states, step, key, flow, logdensity_fn):
        """One `mixed` transition on every chain with the flow."""
        algorithm = spec.make(logdensity_fn, step)
        mixed_algorithm = mixed.as_top_level_api(
            logdensity_fn, flow, _recording(algorithm.step), n_local=n_local,
            local_init=algorithm.init,
        )
        states, info = jax.vmap(mixed_algorithm.step)(jax.random.split(key, n_chains), states)
        infos, path = info.local_info
        global_record = (
            info.global_acceptance_rate, info.global_is_accepted, info.global_proposal_failed
        )
        return states, states.local_state, infos, path, global_record

    def sampling_round(states, da_state, key, adapt, flow, beta):
        logdensity_fn = target(beta)

        def transition(carry, k):
            states, da_state = carry
            step = jnp.exp(da_state.log_step_size)
            if flow is None:
                states, local_states, infos, path, global_record = local_transition(
                    states, step, k, logdensity_fn
                )
            else:
                states, local_states, infos, path, global_record = flow_transition(
                    states, step, k, flow, logdensity_fn
                )
            local_rate = jnp.mean(infos.acceptance_rate, axis=-1)  # per chain
            if adapt_step_size:
                updated = da_update(da_state, jnp.mean(local_rate))
                da_state = jax.tree.map(lambda a, b: jnp.where(adapt, a, b), updated, da_state)
            grads = _grad_evals(infos) + (0 if flow is None else n_chains)
            record = (local_states.position, local_states.logdensity, local_rate, *global_record)
            return (states, da_state), (record, path, grads)

        (states, da_state), (record, path, grads) = jax.lax.scan(
            transition, (states, da_state), jax.random.split(key, n_round)
        )
        # record: (steps, chains, ...) -> (chains, steps, ...); path -> time-ordered
        # (steps * n_local, chains, d)
        record = jax.tree.map(lambda leaf: jnp.swapaxes(leaf, 0, 1), record)
        path = jnp.swapaxes(path, 1, 2).reshape(-1, n_chains, dim)
        return states, da_state, record, path, jnp.sum(grads)

    # The same compiled round serves warm-up (step size adapted) and production (`adapt` False:
    # the step size stays at the frozen value), so the mixed kernel is compiled once.
    local_round = jax.jit(_spread_chains(
        lambda s, da, k, beta: sampling_round(s, da, k, True, None, beta)
    ))
    flow_round = jax.jit(_spread_chains(sampling_round))

    @jax.jit
    def attach_flow(local_states, flow):
        log_q = jax.vmap(lambda x: flow_log_density(flow, x)[0])(local_states.position)
        return mixed.MixedState(local_states, log_q)

    @jax.jit
    def init(positions, step, beta):
        return jax.vmap(spec.make(target(beta), step).init)(positions)

    return _Rounds(local_round, flow_round, attach_flow, init)


def _spread_chains(round_fn: Callable) -> Callable:
    """`round_fn(states, *args)` with the chains (the leading axis of `states`) split over the
    devices of the current one-axis mesh (`jax.set_mesh`); unchanged without one."""

    def spread(states, *args):
        axis = points_axis()
        if axis is None:
            return round_fn(states, *args)

        def split_round(states, *args):
            states = jax.tree.map(lambda a: split_leading(a, axis), states)
            return round_fn(states, *args)

        return split_round(states, *args)

    return spread


def _round_family(spec, logdensity_fn, tempering, *round_options) -> Callable:
    """`beta -> _Rounds`: pi's own rounds at beta = 1 (pi is never evaluated through the tempered
    formula), the tempered targets' (one compilation for every beta < 1) below."""
    plain = _rounds(spec, lambda beta: logdensity_fn, *round_options)
    tempered = (None if tempering is None
                else _rounds(spec, tempering.targets(logdensity_fn), *round_options))
    return lambda beta: plain if beta == 1.0 else tempered


class _WarmUp(NamedTuple):
    """What the warm-up hands to production."""

    local_states: Any
    da_state: Any
    flow: SIFlow
    grad_evals: int
    history: dict
    interrupted: bool = False


def _warm_up(key, rounds, betas, learner: _FlowLearner, local_states, da_state, *,
             max_training_points, n_chains, timing, bar) -> _WarmUp:
    """Sampling and training rounds (round r on the target at `betas[r]`, `rounds(beta)` its
    compiled rounds); returns the last states, the flow and the history (what was done so far,
    `interrupted`, on Ctrl-C)."""
    history = {name: [] for name in (
        "beta", "local_acceptance", "global_acceptance", "step_size", "n_training_points",
        "train_history",
    )}
    grad_evals, flow = n_chains, None
    for round_index, beta in enumerate(betas):
        if round_index and beta != betas[round_index - 1]:  # a new target: fresh log densities
            local_states = rounds(beta).init(
                local_states.position, jnp.exp(da_state.log_step_size), beta
            )
            grad_evals += n_chains
        history["beta"].append(beta)
        try:
            key, local_states, da_state, flow, grads, stopped = _warm_up_round(
                key, round_index, rounds(beta), beta, learner, local_states, da_state, flow,
                history, n_warmup_rounds=len(betas), max_training_points=max_training_points,
                timing=timing, bar=bar,
            )
        except KeyboardInterrupt:
            return _WarmUp(local_states, da_state, flow, grad_evals, history, True)
        grad_evals += grads
        if stopped:  # Ctrl-C inside training: the flow trained so far is kept
            return _WarmUp(local_states, da_state, flow, grad_evals, history, True)
    return _WarmUp(local_states, da_state, flow, grad_evals, history)


def _warm_up_round(key, round_index, rounds: _Rounds, beta, learner, local_states, da_state, flow,
                   history, *, n_warmup_rounds, max_training_points, timing, bar):
    """One sampling round, then one training round. Returns `(key, local_states, da_state, flow,
    gradient evaluations, whether training was interrupted)`."""
    local_round, flow_round, attach_flow, _ = rounds
    tempered = "" if beta == 1.0 else f" (beta {beta:g})"
    bar.set_description(f"warm-up round {round_index + 1}/{n_warmup_rounds}{tempered}: sampling")
    tic = time.perf_counter()
    key, key_round = jax.random.split(key)
    if flow is None:
        local_states, da_state, record, path, grads = local_round(
            local_states, da_state, key_round, beta
        )
    else:
        states, da_state, record, path, grads = flow_round(
            attach_flow(local_states, flow), da_state, key_round, True, flow, beta
        )
        local_states = states.local_state
    path = np.asarray(path)
    timing["warmup_sampling"] += time.perf_counter() - tic
    local_rate, global_rate = float(jnp.mean(record[2])), float(jnp.mean(record[3]))
    history["local_acceptance"].append(local_rate)
    history["global_acceptance"].append(global_rate)
    history["step_size"].append(float(jnp.exp(da_state.log_step_size)))
    if not np.all(np.isfinite(path)):
        raise FloatingPointError(
            f"Warm-up round {round_index + 1}: a chain reached a non-finite position; lower"
            " step_size or check logdensity_fn."
        )
    bar.update()

    bar.set_description(f"warm-up round {round_index + 1}/{n_warmup_rounds}{tempered}: training")
    tic = time.perf_counter()
    training = _thin(path, max_training_points)
    flow, train_history = learner.train_round(round_index, path, training)
    timing["training"] += time.perf_counter() - tic
    history["n_training_points"].append(int(training.shape[0]))
    history["train_history"].append(train_history)
    bar.set_postfix(local_acc=f"{local_rate:.2f}", global_acc=f"{global_rate:.2f}",
                    refresh=False)
    bar.update()
    return key, local_states, da_state, flow, int(grads), train_history.interrupted


def _production(key, rounds, warm: _WarmUp, step_size, *, n_production, n_round, bar, empty):
    """`n_production` transitions of the mixed kernel with the flow and the step size frozen:
    `(samples, logdensity, local rate, global rate, accepted, failed)`, gradient evaluations,
    and whether Ctrl-C stopped it (the draws are then those of the rounds completed). None (the
    arrays `empty`) when there is no production or warm-up was interrupted."""
    if warm.interrupted or n_production == 0:
        return empty, 0, warm.interrupted
    _, flow_round, attach_flow, _ = rounds
    frozen_da = warm.da_state._replace(
        log_step_size=jnp.log(jnp.asarray(step_size, warm.da_state.log_step_size.dtype))
    )
    # the production chain starts where warm-up ended (BlackJAX's local states do not depend on
    # the step size, so the last warm-up states carry over)
    states = attach_flow(warm.local_states, warm.flow)
    records, grad_evals, interrupted = [], 0, False
    try:
        for chunk_key in jax.random.split(key, math.ceil(n_production / n_round)):
            states, _, record, _, grads = flow_round(
                states, frozen_da, chunk_key, False, warm.flow, 1.0
            )
            records.append(jax.device_get(record))
            grad_evals += int(grads)
            bar.update()
    except KeyboardInterrupt:
        interrupted = True
    if not records:  # no whole round: empty draws of the right shapes
        shapes = jax.eval_shape(
            lambda: flow_round(states, frozen_da, key, False, warm.flow, 1.0)
        )[2]
        records = [jax.tree.map(
            lambda s: np.zeros((s.shape[0], 0, *s.shape[2:]), s.dtype), shapes
        )]
    draws = tuple(
        jnp.concatenate(parts, axis=1)[:, :n_production] for parts in zip(*records, strict=True)
    )
    return draws, grad_evals, interrupted


def _solver_error(flow: SIFlow, states: Array, flow_tol: float) -> float:
    """max |log q at flow_tol - log q at flow_tol / 100| over up to 16 states."""
    check = states[:16]
    tight = flow.with_settings(sampler="ode", rtol=flow_tol / 100, atol=flow_tol / 100)
    log_q, log_q_tight = jax.jit(lambda x: (flow.log_prob(x), tight.log_prob(x)))(check)
    return float(jnp.max(jnp.abs(log_q - log_q_tight)))


#: Options of earlier versions of `run` and where they are now.
RENAMED_RUN_OPTIONS = {
    name: f"local=adaptive.LocalKernel(..., {name}=...)"
    for name in ("step_size", "adapt_step_size", "target_acceptance", "inverse_mass_matrix",
                 "num_integration_steps")
} | {"fit_options": "network= (a FieldMLPSpec) and train_options= (options of nsi.train)"}


def run(
    key: PRNGKeyArray,
    logdensity_fn: Callable[[Float[Array, " d"]], Float[Array, ""]],
    initial_positions: Float[ArrayLike, "chains d"],
    *,
    local: str | LocalKernel = "mala",
    n_local: int = 5,
    n_warmup_rounds: int = 4,
    n_warmup_steps: int = 200,
    n_production: int = 1000,
    fit_steps: int | Sequence[int] = 2000,
    network: FieldMLPSpec = ADAPTIVE_NETWORK,
    train_options: dict[str, Any] | None = None,
    max_training_points: int = 20_000,
    whiten: bool = True,
    tempering: Tempering | None = None,
    flow_tol: float | None = None,
    check_solver_error: bool = True,
    show_progress: bool = True,
    **renamed,
) -> AdaptiveResult:
    """Warm up parallel chains while learning an `SIFlow` proposal, then sample with it frozen.

    See the module docstring for the scheme, what the flow can learn and the remaining error.

    **Arguments:**

    - `key`: a `jax.random` key.
    - `logdensity_fn`: log pi of ONE position of shape `(d,)` (unnormalised, differentiable).
    - `initial_positions`: `(n_chains, d)` starting points, finite, with finite log pi and
      gradient. Spread them over the region where mass may be: the flow only learns the modes
      the chains visit.
    - `local`: the local moves, a `LocalKernel` (kernel, step size and its adaptation, mass
      matrix) or just the kernel's name, `"mala"`, `"hmc"` or `"nuts"`.
    - `n_local`: local steps per transition (each transition ends with one global flow move).
    - `n_warmup_rounds`: sampling-then-training rounds (at least 1: the flow is trained after
      each, the first round samples with local steps only).
    - `n_warmup_steps`: transitions per warm-up round. Production reuses the same compiled
      round: it runs whole rounds of `n_warmup_steps` transitions and keeps the first
      `n_production`.
    - `n_production`: transitions of the production chain (draws per chain); 0 runs the
      warm-up only (the result then has the flow, `final_positions` and no draws).
    - `fit_steps`: optimiser steps of each round's training (an int, or one per round).
    - `network`: the `FieldMLPSpec` of the flow built in the first round (default
      `ADAPTIVE_NETWORK`, width 128, depth 3).
    - `train_options`: further options of `numpyro_si.train` (e.g. `batch_size`,
      `learning_rate` (default `ADAPTIVE_LEARNING_RATE`), `weight_decay`, `validation`); not
      `num_steps`, `opt_state` or `show_progress`, which `run` sets.
    - `max_training_points`: cap on each round's training set (every local step's state of
      every chain, thinned evenly in time).
    - `whiten`: train on the points whitened by their mean and within-chain covariance
      (Cholesky; measured on the first round's path and then fixed), `whitened_flow`, so
      correlated targets are well conditioned; `False` uses the flow's per-coordinate
      standardisation (measured on the first round's points).
    - `tempering`: a `Tempering` (reference density and temperatures): the first warm-up rounds
      sample tempered targets between the reference and pi, so that the flow learns modes no
      chain starts in. `None` (default): every round samples pi.
    - `flow_tol`: `rtol = atol` of the flow's ODE solves in the MH ratio (default 1e-7 in
      float64, 1e-5 in float32).
    - `check_solver_error`: measure `log_q_solver_error` at the end.
    - `show_progress`: a tqdm progress bar over rounds and production chunks.

    **Returns:** an `AdaptiveResult` (production draws `(n_chains, n_production, d)`, frozen
    flow, local and global acceptance, gradient-evaluation counts, timing, warm-up history).

    The module docstring has an example.
    """
    t_start = time.perf_counter()
    reject_unknown(renamed, "adaptive.run", RENAMED_RUN_OPTIONS)
    positions = _check_inputs(logdensity_fn, initial_positions)
    (n_chains, dim), dtype = positions.shape, positions.dtype
    local = _check_run_options(local, network, n_local, n_warmup_rounds, n_warmup_steps,
                               n_production)
    betas = _round_betas(tempering, n_warmup_rounds, positions)
    max_training_points = check_positive_int("max_training_points", max_training_points, 2)
    learner = _FlowLearner(
        jax.random.fold_in(key, 1), network, _per_round(fit_steps, n_warmup_rounds),
        _check_train_options(train_options), whiten, _flow_tol(flow_tol, dtype),
    )
    spec = local.spec(dim, dtype)
    da_init, da_update, da_final = dual_averaging_adaptation(spec.target_acceptance)
    rounds = _round_family(spec, logdensity_fn, tempering, n_chains, dim, dtype, n_local,
                           n_warmup_steps, local.adapt_step_size, da_update)
    n_chunks = math.ceil(n_production / n_warmup_steps)
    bar = tqdm(total=2 * n_warmup_rounds + n_chunks, desc="adaptive", disable=not show_progress)
    timing = {"warmup_sampling": 0.0, "training": 0.0, "production": 0.0}
    key_warmup, key_production = jax.random.split(key)
    step_size = jnp.asarray(local.step_size, dtype)
    warm = _warm_up(
        key_warmup, rounds, betas, learner, rounds(betas[0]).init(positions, step_size, betas[0]),
        da_init(step_size), max_training_points=max_training_points, n_chains=n_chains,
        timing=timing, bar=bar,
    )
    step_size = (float(da_final(warm.da_state)) if local.adapt_step_size
                 else float(local.step_size))
    if warm.flow is not None:
        _warn_if_target_is_nan(warm.flow, logdensity_fn, jax.random.fold_in(key, 2))
    bar.set_description("production")
    tic = time.perf_counter()
    draws, grad_evals_production, interrupted = _production(
        key_production, rounds(1.0), warm, step_size, n_production=n_production,
        n_round=n_warmup_steps, bar=bar, empty=_no_draws(n_chains, dim, dtype),
    )
    bar.close()
    samples, logdensity, local_rate, global_rate, accepted, failed = draws
    timing["production"] = time.perf_counter() - tic
    solver_error = (_solver_error(warm.flow, samples[:, -1], learner.flow_tol)
                    if check_solver_error and samples.shape[1] else float("nan"))
    timing["total"] = time.perf_counter() - t_start
    if interrupted:
        _warn_interrupted(warm.interrupted, samples.shape[1])
    return AdaptiveResult(
        samples=samples, logdensity=logdensity, flow=warm.flow, step_size=step_size,
        inverse_mass_matrix=spec.inverse_mass_matrix, local_acceptance=local_rate,
        global_acceptance=global_rate, global_accepted=accepted, global_failed=failed,
        grad_evals_warmup=warm.grad_evals, grad_evals_production=grad_evals_production,
        timing=timing, warmup=warm.history, log_q_solver_error=solver_error,
        interrupted=interrupted,
        final_positions=samples[:, -1] if samples.shape[1] else warm.local_states.position,
    )


def _flow_tol(flow_tol, dtype) -> float:
    return (1e-7 if dtype == jnp.float64 else 1e-5) if flow_tol is None else flow_tol


def _check_run_options(local, network, n_local, n_warmup_rounds, n_warmup_steps,
                       n_production) -> LocalKernel:
    """The options `run` checks by hand; returns the `LocalKernel`."""
    local = LocalKernel(local) if isinstance(local, str) else local
    if not isinstance(local, LocalKernel):
        raise TypeError(f"local must be a LocalKernel or a kernel name, got {local!r}.")
    if not isinstance(network, FieldMLPSpec):
        raise TypeError(f"network must be an nsi.FieldMLPSpec, got {network!r}.")
    for name, value in (("n_local", n_local), ("n_warmup_rounds", n_warmup_rounds),
                        ("n_warmup_steps", n_warmup_steps)):
        check_positive_int(name, value)
    check_positive_int("n_production", n_production, 0)
    return local


def _round_betas(tempering, n_warmup_rounds: int, positions) -> list[float]:
    """Each warm-up round's temperature: the tempering's, then 1 (pi itself)."""
    if tempering is None:
        return [1.0] * n_warmup_rounds
    if not isinstance(tempering, Tempering):
        raise TypeError(f"tempering must be an adaptive.Tempering or None, got {tempering!r}.")
    if n_warmup_rounds < len(tempering.betas) + 1:
        raise ValueError(
            f"tempering has {len(tempering.betas)} temperatures below 1, so n_warmup_rounds must"
            f" be at least {len(tempering.betas) + 1} (at least one round on the target itself,"
            f" which the flow is trained on last); got {n_warmup_rounds}."
        )
    tempering.check_reference(positions)
    return [*tempering.betas, *[1.0] * (n_warmup_rounds - len(tempering.betas))]


def _warn_interrupted(in_warm_up: bool, n_draws: int) -> None:
    phase = "warm-up" if in_warm_up else "production"
    warnings.warn(
        f"adaptive.run was interrupted during {phase}: the result holds the latest flow and"
        f" {n_draws} production draws per chain (result.interrupted is True).",
        stacklevel=3,
    )


def _no_draws(n_chains: int, dim: int, dtype) -> tuple:
    """The production arrays with no draws (warm-up was interrupted)."""
    def empty(*shape, kind=dtype):
        return jnp.zeros((n_chains, 0, *shape), kind)

    return empty(dim), empty(), empty(), empty(), empty(kind=bool), empty(kind=bool)


#: Points drawn from the warm-up's flow at which `run` checks that the target is not NaN.
NAN_CHECK_POINTS = 256


def _warn_if_target_is_nan(flow: SIFlow, logdensity_fn: Callable, key) -> None:
    """Warn when log pi is NaN where the flow proposes: MCMC takes NaN as zero density (the move
    is rejected), which is silent unless the user meant it."""
    points = eqx.filter_jit(lambda f, k: f.sample(k, (NAN_CHECK_POINTS,)))(flow, key)
    values = np.asarray(jax.jit(jax.vmap(logdensity_fn))(points))
    nan = np.isnan(values)
    if nan.any():
        example = np.asarray(points)[np.flatnonzero(nan)[0]]
        warnings.warn(
            f"logdensity_fn is NaN at {int(nan.sum())} of {NAN_CHECK_POINTS} points the flow"
            f" proposes (e.g. at {np.array2string(example, precision=3)}). MCMC treats NaN as"
            " zero density, so those moves are rejected: return -inf where the target has no"
            " mass (outside its support) and fix the target elsewhere.",
            stacklevel=3,
        )


def _per_round(fit_steps, n_rounds: int) -> list[int]:
    if isinstance(fit_steps, int | np.integer) and not isinstance(fit_steps, bool):
        fit_steps = [int(fit_steps)] * n_rounds
    fit_steps = [check_positive_int("fit_steps", steps) for steps in fit_steps]
    if len(fit_steps) != n_rounds:
        raise ValueError(
            f"fit_steps must be an int or have one entry per warm-up round ({n_rounds}),"
            f" got {len(fit_steps)}."
        )
    return fit_steps


def _check_train_options(train_options) -> dict:
    """`train_options` checked now, not at the first round's training: `train`'s options
    without those `run` sets."""
    train_options = dict(train_options or {})
    allowed = [name for name in TRAIN_DEFAULTS if name not in _RUN_SETS]
    unknown = {name: value for name, value in train_options.items() if name not in allowed}
    for name in _RUN_SETS:
        if name in train_options:
            raise ValueError(f"train_options must not set {name!r}; run sets it.")
    reject_unknown(unknown, "adaptive.run(train_options=...)", RENAMED_TRAIN_OPTIONS,
                   known=allowed)
    if train_options.get("optimizer") is not None and (
        "learning_rate" in train_options or "weight_decay" in train_options
    ):
        raise ValueError(
            "learning_rate and weight_decay configure the default optimiser; with your own"
            " `optimizer`, set them there."
        )
    # the values (the optimiser's own options are checked apart: run builds the optimiser)
    optimizer_options = ("optimizer", "learning_rate", "weight_decay")
    check_train_options({k: v for k, v in train_options.items() if k not in optimizer_options},
                        "adaptive.run(train_options=...)")
    for name in ("learning_rate", "weight_decay"):
        if name in train_options:
            check_real(name, train_options[name], low=0.0, low_open=name == "learning_rate")
    return train_options
