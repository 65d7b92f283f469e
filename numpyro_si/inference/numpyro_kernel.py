"""`SIFlowBoost`: flow moves for any NumPyro model, as a NumPyro `MCMCKernel`.

`MCMC(SIFlowBoost(NUTS(model), flow), ...)` runs the inner kernel's steps and, after every
`n_local` of them, one global independence Metropolis-Hastings move with the `SIFlow` proposal
(see `numpyro_si.inference.independence` and `mixed`). Everything happens in the unconstrained
space of `numpyro.infer.util.initialize_model`: the flow must be a density on the ravelled
unconstrained latent vector (sites in `jax.flatten_util.ravel_pytree` order, i.e. sorted by
name), for instance fitted to `unconstrained_draws(model, samples)` of a pilot run.

With no flow, `MCMC(SIFlowBoost(NUTS(model)), ...)` learns one at its first `init`, before
NumPyro's warm-up, by `learn_flow` (chains from the prior, the adaptive scheme, optionally
tempered), freezes it, and starts the MCMC chains where the learning chains ended.

Exactness and cost are those of `mixed`: the flow needs the ODE sampler, the exact divergence and
tight tolerances; a global move costs a flow draw, one or two flow densities and one potential
energy and gradient at the proposal (the inner kernel's `refresh`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree
from numpyro.infer.mcmc import MCMCKernel
from numpyro.util import is_prng_key

from .._distribution import FAST_MAP_CANDIDATES, SIFlow
from .._solvers import ODESampler
from ._learning import FlowLearning, LearnedFlow, learn_flow
from .independence import check_flow, check_proposal_density, flow_log_density, global_move

__all__ = ["SIFlowBoost", "SIFlowBoostState"]


class SIFlowBoostState(NamedTuple):
    """State of `SIFlowBoost`.

    - `z`: the unconstrained sample (the same as `inner_state.z`).
    - `potential_energy`: the inner kernel's at `z`.
    - `diverging`: whether any of the transition's `n_local` inner steps diverged.
    - `accept_prob`: the inner steps' mean acceptance probability (the local one; ArviZ calls
      it `acceptance_rate`).
    - `global_accept_prob`: min(1, w(y) / w(x)) of the last flow move (0 if a density failed).
    - `global_is_accepted`: whether the last flow move was accepted.
    - `global_proposal_failed`: whether a flow density solve failed in the last flow move.
    - `global_mean_accept_prob`: running mean of `global_accept_prob` over the transitions.
    - `proposal_logdensity`: log q(z) of the ravelled z.
    - `inner_state`: the inner kernel's state; `i`: transitions so far; `rng_key`: for flow moves.
    """

    z: PyTree
    potential_energy: Float[Array, ""]
    diverging: Bool[Array, ""]
    accept_prob: Float[Array, ""]
    global_accept_prob: Float[Array, ""]
    global_is_accepted: Bool[Array, ""]
    global_proposal_failed: Bool[Array, ""]
    global_mean_accept_prob: Float[Array, ""]
    proposal_logdensity: Float[Array, ""]
    inner_state: NamedTuple
    i: Int[Array, ""]
    rng_key: PRNGKeyArray


class SIFlowBoost(MCMCKernel):
    """An inner NumPyro kernel (NUTS, HMC) plus global `SIFlow` independence-MH moves.

    **Arguments:**

    - `inner_kernel`: a NumPyro kernel whose state has `z` and `potential_energy` and which
      implements `refresh` (NUTS, HMC, and kernels built on them), e.g. `NUTS(model)`.
    - `flow`: an `SIFlow` on the ravelled unconstrained latent vector, with the ODE sampler, the
      exact divergence and tight tolerances (e.g. `rtol = atol = 1e-7`); or `None` (default):
      learn it with no posterior draws (below).
    - `n_local`: inner steps per transition (each transition ends with one flow move). The inner
      kernel's warm-up spans `num_warmup * n_local` of its steps, i.e. the whole warm-up phase.
    - `learning`: how the flow is learned when none is given, a `FlowLearning` (default
      `FlowLearning()`: 16 chains from the prior, NUTS local steps, four tempered rounds from
      the prior towards the posterior, then three on the posterior; `tempering=None` skips the
      tempered rounds).
    - `proposal_density`: how log q of a flow proposal is computed: `"backward"` (default: a
      flow draw, then a backward density solve), `"forward"` (draw and log q from one forward
      solve that integrates the divergence along it: one solve instead of two, the same density
      to the solver's tolerance) or `"map"` (the flow's fixed-step sampling map, scored with its
      exact density: no solver-tolerance error in the acceptance ratio; a given flow needs a
      fixed-step sampler, e.g. `flow.with_fast_map(key)[0]`, and a learned one gets its
      `with_fast_map` map).

    **With no flow**, the first `init` (at `mcmc.run`) runs `learn_flow` on the inner kernel's
    model and the run's model arguments (its own progress bar), freezes the flow
    (`kernel.flow`; `kernel.learned` holds the `LearnedFlow` with the learning run's
    diagnostics) and, unless `init_params` is given, starts the MCMC chains at the learning
    chains' final states, which the flow moves have spread over the modes. NumPyro's warm-up
    then adapts the inner kernel with the frozen flow's moves on, and sampling is exact MCMC. The
    flow is learned once per kernel: later runs reuse it. Learning needs
    `chain_method="vectorized"` or `"sequential"` (under `"parallel"`, `init` is traced: learn
    first with `learn_flow` and pass its flow).

    Flow moves also happen during warm-up (they help the adaptation see every mode; warm-up
    draws are discarded anyway). `default_fields` collect `accept_prob`, `global_accept_prob`
    and `global_is_accepted`, so `arviz.from_numpyro(mcmc)` has local and global acceptance in
    `sample_stats`. Chains: `chain_method="vectorized"` vmaps the flow moves; "sequential" and
    "parallel" work as for the inner kernel.
    """

    def __init__(self, inner_kernel: MCMCKernel, flow: SIFlow | None = None, *, n_local: int = 1,
                 learning: FlowLearning | None = None, proposal_density: str = "backward"):
        if not isinstance(inner_kernel, MCMCKernel):
            raise TypeError(f"inner_kernel must be a NumPyro MCMCKernel, got {inner_kernel!r}.")
        if type(inner_kernel).refresh is MCMCKernel.refresh:
            raise TypeError(
                f"{type(inner_kernel).__name__} does not implement `refresh`, which SIFlowBoost"
                " needs to rebuild its state at an accepted flow proposal; use NUTS or HMC."
            )
        if not (isinstance(n_local, int) and n_local >= 1):
            raise ValueError(f"n_local must be a positive int, got {n_local!r}.")
        proposal_density = check_proposal_density(proposal_density)
        if flow is None:
            if getattr(inner_kernel, "model", None) is None:
                raise ValueError(
                    "SIFlowBoost learns its flow from the inner kernel's model, but"
                    f" {type(inner_kernel).__name__} was built from a potential_fn; pass a flow."
                )
            learning = FlowLearning() if learning is None else learning
            if not isinstance(learning, FlowLearning):
                raise TypeError(f"learning must be a FlowLearning, got {learning!r}.")
        else:
            if learning is not None:
                raise ValueError("learning= configures how a flow is learned: pass a flow or"
                                 " learning, not both.")
            check_flow(flow, constrained=False, proposal_density=proposal_density)
        self.inner_kernel = inner_kernel
        self.flow = flow
        self.n_local = n_local
        self.learning = learning
        self.proposal_density = proposal_density
        self.learned: LearnedFlow | None = None
        self._starts_used = 0

    # -- MCMCKernel interface -----------------------------------------------------------------

    @property
    def model(self):
        return getattr(self.inner_kernel, "model", None)

    @property
    def sample_field(self):
        return "z"

    @property
    def default_fields(self):
        return ("z", "diverging", "accept_prob", "global_accept_prob", "global_is_accepted")

    @property
    def _sample_fn(self):
        # `MCMC` re-runs `init` while this is None (it reads the attribute of its sampler)
        return getattr(self.inner_kernel, "_sample_fn", None)

    def postprocess_fn(self, model_args, model_kwargs):
        return self.inner_kernel.postprocess_fn(model_args, model_kwargs)

    def get_diagnostics_str(self, state):
        return (
            f"{self.inner_kernel.get_diagnostics_str(state.inner_state)},"
            f" flow acc. prob={float(state.global_mean_accept_prob):.2f}"
        )

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs={}):  # noqa: B006
        vectorized = not is_prng_key(rng_key)
        if self.flow is None:
            self._learn(rng_key[0] if vectorized else rng_key, model_args, model_kwargs)
        if self.learned is not None and init_params is None:
            n_chains = rng_key.shape[0] if vectorized else None
            init_params = self._learned_starts(n_chains)
        if vectorized:
            key_inner, key_flow = jnp.swapaxes(jax.vmap(jax.random.split)(rng_key), 0, 1)
        else:
            key_inner, key_flow = jax.random.split(rng_key)
        inner_state = self.inner_kernel.init(
            key_inner, num_warmup * self.n_local, init_params, model_args, model_kwargs
        )
        for field in ("z", "potential_energy"):
            if not hasattr(inner_state, field):
                raise TypeError(
                    f"The inner kernel's state {type(inner_state).__name__} has no `{field}`."
                )
        z_one = jax.tree.map(lambda leaf: leaf[0], inner_state.z) if vectorized else inner_state.z
        size = ravel_pytree(z_one)[0].shape[0]
        if size != self.flow.dim:
            shapes = jax.tree.map(jnp.shape, z_one)
            raise ValueError(
                f"The model's unconstrained latent vector has {size} entries (sites {shapes}), but"
                f" the flow is {self.flow.dim}-dimensional. Fit the flow to the ravelled"
                " unconstrained draws (see `unconstrained_draws`)."
            )

        def log_q(z):
            return flow_log_density(self.flow, z, self.proposal_density)[0]

        log_q_z = jax.jit(jax.vmap(log_q) if vectorized else log_q)(inner_state.z)
        return self._state(inner_state, log_q_z, key_flow, vectorized)

    def sample(self, state: SIFlowBoostState, model_args, model_kwargs) -> SIFlowBoostState:
        inner_state = state.inner_state
        diverging, accept_prob = [], []
        for _ in range(self.n_local):
            inner_state = self.inner_kernel.sample(inner_state, model_args, model_kwargs)
            diverging.append(_field(inner_state, "diverging", False))
            accept_prob.append(_field(inner_state, "accept_prob", 1.0))
        vectorized = not is_prng_key(state.rng_key)
        global_step = self._global_step(model_args, model_kwargs)
        if vectorized:
            global_step = jax.vmap(global_step)
        new_inner, log_q, acc_prob, accepted, failed, rng_key = global_step(
            state.rng_key, state.inner_state.z, state.proposal_logdensity, inner_state
        )
        i = state.i + 1
        mean = state.global_mean_accept_prob + (acc_prob - state.global_mean_accept_prob) / i
        return SIFlowBoostState(
            new_inner.z, new_inner.potential_energy, jnp.any(jnp.stack(diverging), axis=0),
            jnp.mean(jnp.stack(accept_prob), axis=0), acc_prob, accepted, failed, mean, log_q,
            new_inner, i, rng_key,
        )

    # -- learning the flow ----------------------------------------------------------------------

    def _learn(self, rng_key, model_args, model_kwargs) -> None:
        if isinstance(rng_key, jax.core.Tracer):
            raise RuntimeError(
                "SIFlowBoost cannot learn its flow inside a traced init (chain_method='parallel'"
                " runs init under pmap). Use chain_method='vectorized' or 'sequential', or learn"
                " first: flow = inference.learn_flow(key, model, model_args).flow, then"
                " SIFlowBoost(NUTS(model), flow)."
            )
        # a key of its own, so the MCMC chains' keys are not reused by the learning run
        self.learned = learn_flow(
            jax.random.fold_in(rng_key, 0x51F), self.inner_kernel.model, tuple(model_args),
            dict(model_kwargs), learning=self.learning,
        )
        self.flow = self.learned.flow
        if self.proposal_density == "map":
            self.flow = _fixed_step_map(self.flow, jax.random.fold_in(rng_key, 0x3A9))

    def _learned_starts(self, n_chains):
        """The learning chains' final states: all chains at once (vectorized), or the next one
        for each chain of a sequential run."""
        if n_chains is not None:
            return self.learned.init_params(n_chains)
        final = self.learned.result.final_positions
        start = final[self._starts_used % final.shape[0]]
        self._starts_used += 1
        return self.learned.log_density.unravel(start)

    # -- the flow move --------------------------------------------------------------------------

    def _state(self, inner_state, log_q, rng_key, vectorized):
        shape = log_q.shape
        zeros = jnp.zeros(shape, dtype=log_q.dtype)
        false = jnp.zeros(shape, dtype=bool)
        return SIFlowBoostState(
            inner_state.z, inner_state.potential_energy, _field(inner_state, "diverging", False),
            _field(inner_state, "accept_prob", 1.0), zeros, false, false, zeros, log_q,
            inner_state, jnp.zeros(shape, dtype=jnp.int32), rng_key,
        )

    def _global_step(self, model_args, model_kwargs) -> Callable:
        flow, inner_kernel, proposal_density = self.flow, self.inner_kernel, self.proposal_density

        def step(rng_key, previous_z, previous_log_q, inner_state):
            rng_key, key_proposal, key_accept = jax.random.split(rng_key, 3)

            def rebuild(y):
                proposed = inner_kernel.refresh(inner_state._replace(z=y), model_args,
                                                model_kwargs)
                return proposed, -proposed.potential_energy

            move = global_move(
                key_proposal, key_accept, flow, inner_state, inner_state.z,
                -inner_state.potential_energy, previous_z, previous_log_q, rebuild,
                proposal_density,
            )
            return (move.state, move.proposal_logdensity, move.acceptance_rate,
                    move.is_accepted, move.failed, rng_key)

        return step


def _fixed_step_map(flow: SIFlow, key) -> SIFlow:
    """The learned flow's `with_fast_map` map, or, if no candidate is within its distance, the
    most steps it tries (the map's density is exact either way; a cruder map only accepts
    less often)."""
    fast, report = flow.with_fast_map(key)
    if report["n_steps"] is None:
        steps = max(FAST_MAP_CANDIDATES)
        warnings.warn(
            "No midpoint map within 0.05 sd of the learned flow's ODE map (RMS"
            f" distances {report['distances']}); proposing with {steps} midpoint steps, scored"
            " exactly: expect a lower flow acceptance.", stacklevel=4,
        )
        return flow.with_settings(sampler=ODESampler(diffrax.Midpoint(), n_steps=steps))
    return fast


def _field(state, name, default):
    value = getattr(state, name, None)
    return jnp.full(jnp.shape(state.potential_energy), default) if value is None else value
