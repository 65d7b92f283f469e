"""Learn an `SIFlow` proposal for a NumPyro model's posterior with no posterior draws: the
adaptive scheme (`adaptive.run`) on the model's unconstrained log density, from chains started
from its prior, optionally tempered from the prior to the posterior.

`SIFlowBoost(NUTS(model))` with no flow calls `learn_flow` at its first `init`; `learn_flow` is
public for when the flow is wanted first (to reuse it, save it, or run chains in parallel).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_positive_int
from .._distribution import SIFlow
from .._model_space import ModelLogDensity, log_target_from_model
from .._networks import FieldMLPSpec
from . import adaptive

__all__ = ["FlowLearning", "LearnedFlow", "learn_flow"]

#: How `FlowLearning` starts its chains.
STARTS = ("prior", "uniform")


@dataclasses.dataclass(frozen=True)
class FlowLearning:
    """How a flow is learned for a model with no posterior draws (`learn_flow`, and
    `SIFlowBoost` given no flow).

    Chains are started from the prior and run the adaptive scheme of `adaptive.run` on the
    model's unconstrained posterior: rounds of local steps and global flow moves, the flow
    refitted after each round on all chains' states, then frozen.

    **Arguments:**

    - `n_chains`: chains of the learning run (they need not match `MCMC`'s `num_chains`: the
      MCMC chains start at their final states).
    - `start`: `"prior"` (default: draws of the model's prior, mapped to the unconstrained space;
      draws where the posterior is not finite are replaced by `"uniform"` ones), `"uniform"`
      (uniform on [-2, 2] in every unconstrained coordinate, NumPyro's `init_to_uniform`), or a
      dict of constrained values per latent site with a leading axis of `n_chains` (e.g. from a
      pilot run).
    - `local`: the chains' local moves (`"nuts"`, `"hmc"`, `"mala"` or an
      `adaptive.LocalKernel`).
    - `n_local`: local steps per transition (each transition ends with one flow move).
    - `n_rounds`: learning rounds on the posterior itself.
    - `n_steps`: transitions per round.
    - `fit_steps`: optimiser steps of each round's training.
    - `tempering`: `True` (default: the temperatures of `adaptive.Tempering`, 0, 0.03, 0.1,
      0.3), a sequence of temperatures in [0, 1), or `None` / `False` (off): before the
      `n_rounds` posterior rounds, one round per temperature samples prior x likelihood^beta,
      so that chains all started in one mode, or chains that never entered some mode's basin,
      still reach every mode the prior reaches. It costs one round per temperature (2.6-2.9x
      the learning gradients with the default temperatures, measured); without it a flow learns only the
      modes some learning chain visits, which can leave a mode out even from prior starts
      (docs/benchmarks.md, the many-modes table). Turn it off for a model known to have one
      mode when learning time matters; it needs a proper prior (the first temperature, 0,
      samples the prior alone).
    - `network`, `train_options`, `whiten`: as in `adaptive.run`.
    - `show_progress`: a progress bar over the rounds.
    """

    n_chains: int = 16
    start: str | dict = "prior"
    local: Any = "nuts"
    n_local: int = 5
    n_rounds: int = 3
    n_steps: int = 100
    fit_steps: int = 1000
    tempering: Any = True
    network: FieldMLPSpec = adaptive.ADAPTIVE_NETWORK
    train_options: dict | None = None
    whiten: bool = True
    show_progress: bool = True

    def __post_init__(self):
        for name in ("n_chains", "n_local", "n_rounds", "n_steps", "fit_steps"):
            check_positive_int(name, getattr(self, name))
        if not isinstance(self.start, dict) and self.start not in STARTS:
            raise ValueError(
                f"start must be one of {STARTS} or a dict of values per latent site, got"
                f" {self.start!r}."
            )
        if not (self.tempering is None or isinstance(self.tempering, bool)
                or (isinstance(self.tempering, Sequence) and not isinstance(self.tempering, str))):
            raise TypeError(
                "tempering must be True, None/False or a sequence of temperatures in [0, 1), got"
                f" {self.tempering!r}."
            )

    def betas(self) -> tuple[float, ...]:
        """The temperatures below 1 (empty without tempering)."""
        if self.tempering is None or self.tempering is False:
            return ()
        if self.tempering is True:
            return adaptive.DEFAULT_BETAS
        return tuple(float(beta) for beta in self.tempering)


@dataclasses.dataclass(frozen=True)
class LearnedFlow:
    """What `learn_flow` returns.

    - `flow`: the frozen `SIFlow` on the model's ravelled unconstrained latent vector, with the
      settings of an exact Metropolis-Hastings proposal (what `SIFlowBoost` takes).
    - `result`: the `adaptive.AdaptiveResult` of the learning run (acceptance per round, timing,
      gradient evaluations, `final_positions`).
    - `log_density`: the model's `ModelLogDensity` (layout, `constrain`, `unconstrain`).
    """

    flow: SIFlow
    result: adaptive.AdaptiveResult
    log_density: ModelLogDensity

    def init_params(self, n_chains: int | None = None) -> dict[str, Array]:
        """Unconstrained starting values for MCMC chains (`MCMC.run(..., init_params=)`): the
        learning chains' final states, cycled if more are asked for; a leading chain axis unless
        `n_chains` is None (then the first chain's)."""
        final = self.result.final_positions
        if n_chains is None:
            return self.log_density.unravel(final[0])
        check_positive_int("n_chains", n_chains)
        rows = final[jnp.arange(n_chains) % final.shape[0]]
        return jax.vmap(self.log_density.unravel)(rows)


def learn_flow(
    key: PRNGKeyArray,
    model,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    *,
    learning: FlowLearning | None = None,
) -> LearnedFlow:
    """Learn an `SIFlow` proposal for a NumPyro model's posterior, with no posterior draws.

    **Arguments:**

    - `key`: a `jax.random` key.
    - `model`: a NumPyro model with continuous latent sites (constrained ones are mapped to the
      unconstrained space as NUTS does).
    - `model_args`, `model_kwargs`: the model's arguments (e.g. the observed data).
    - `learning`: a `FlowLearning` (chains, starts, rounds, tempering); default `FlowLearning()`.

    **Returns:** a `LearnedFlow`: `flow` for `SIFlowBoost(NUTS(model), flow)`, the learning run's
    `result`, and `init_params(n)` to start MCMC chains where the learning chains ended.

    The flow learns the modes some learning chain visits: chains start from the prior, and
    tempering (on by default) carries them across barriers between modes before they sample the
    posterior.
    """
    learning = FlowLearning() if learning is None else learning
    if not isinstance(learning, FlowLearning):
        raise TypeError(f"learning must be a FlowLearning, got {learning!r}.")
    model_kwargs = {} if model_kwargs is None else dict(model_kwargs)
    log_density = log_target_from_model(model, *model_args, **model_kwargs)
    key_start, key_run = jax.random.split(key)
    betas = learning.betas()
    if betas and betas[0] == 0.0:
        _check_prior_is_proper(key_start, log_density)
    positions = _starts(key_start, log_density, learning)
    tempering = (adaptive.Tempering(log_density.log_prior, betas) if betas else None)
    result = adaptive.run(
        key_run, log_density, positions, local=learning.local, n_local=learning.n_local,
        n_warmup_rounds=len(betas) + learning.n_rounds, n_warmup_steps=learning.n_steps,
        n_production=0, fit_steps=learning.fit_steps, network=learning.network,
        train_options=learning.train_options, whiten=learning.whiten, tempering=tempering,
        check_solver_error=False, show_progress=learning.show_progress,
    )
    if result.interrupted:
        raise KeyboardInterrupt("learn_flow was interrupted before its flow was learned.")
    return LearnedFlow(result.flow, result, log_density)


def _starts(key, log_density: ModelLogDensity, learning: FlowLearning) -> Float[Array, "n d"]:
    """`learning.n_chains` starting points where the posterior is finite."""
    n, dim = learning.n_chains, log_density.dim
    key_prior, key_uniform = jax.random.split(key)
    uniform = jax.random.uniform(key_uniform, (n, dim), minval=-2.0, maxval=2.0)
    if isinstance(learning.start, dict):
        positions = log_density.unconstrain(learning.start).astype(uniform.dtype)
        if positions.shape[0] != n:
            raise ValueError(
                f"start has {positions.shape[0]} values per site; FlowLearning has n_chains={n}."
            )
    elif learning.start == "uniform":
        positions = uniform
    else:
        try:
            positions = log_density.sample_prior(key_prior, n).astype(uniform.dtype)
        except Exception as error:  # noqa: BLE001 - e.g. an improper prior cannot be sampled
            raise ValueError(
                f"drawing the chains' starts from the model's prior failed ({type(error).__name__}:"
                f" {error}); pass FlowLearning(start='uniform')"
                + (", and tempering=None if the prior is improper." if learning.betas() else ".")
            ) from error
    values, gradients = jax.jit(jax.vmap(jax.value_and_grad(log_density)))(positions)
    good = np.asarray(jnp.isfinite(values) & jnp.all(jnp.isfinite(gradients), axis=-1))
    positions = jnp.where(good[:, None], positions, uniform)
    values, gradients = jax.jit(jax.vmap(jax.value_and_grad(log_density)))(positions)
    bad = ~np.asarray(jnp.isfinite(values) & jnp.all(jnp.isfinite(gradients), axis=-1))
    if bad.any():
        raise ValueError(
            f"The model's log density (or its gradient) is not finite at {int(bad.sum())} of"
            f" {n} starting points, from the prior and from uniform(-2, 2) in the unconstrained"
            " space; check the model, or start the chains yourself with adaptive.run."
        )
    return positions


def _check_prior_is_proper(key, log_density: ModelLogDensity) -> None:
    """Tempering's first temperature, 0, samples the prior alone: refuse a prior that cannot be
    sampled (an improper one, e.g. `ImproperUniform`), on which those chains would drift away."""
    try:
        log_density.sample_prior(key, 1)
    except Exception as error:  # noqa: BLE001 - e.g. ImproperUniform cannot be sampled
        raise ValueError(
            "FlowLearning's tempering starts from the prior alone (temperature 0), but the"
            f" model's prior cannot be sampled ({type(error).__name__}: {error}); an improper"
            " prior has no distribution to sample there. Pass FlowLearning(tempering=None,"
            " start='uniform'), or temperatures starting above 0, e.g. tempering=(0.03, 0.1,"
            " 0.3)."
        ) from error
