"""Independence Metropolis-Hastings with an `SIFlow` proposal, as a BlackJAX kernel module.

Every step draws y ~ q from the flow, independent of the current state x, and accepts it with
probability min(1, w(y) / w(x)), where w = pi / q is the importance weight of the target pi
(unnormalised) against the flow density q (docs/math.md section 5). The state keeps log pi(x) and
log q(x), so a step costs one flow draw (a forward ODE solve), one flow density (a backward ODE
solve with the exact divergence, docs/math.md section 4) and one target log density.

Exactness. The MH ratio needs q's true density at the draws:

- the divergence must be exact: a `HutchinsonDivergence` makes log q a random estimate, which
  biases the chain, so it is refused (`ValueError`);
- the draws must follow the ODE's density: an SDE sampler's draws do not (their density is not
  the probability-flow ODE's), so it is refused too; use `flow.with_settings(sampler="ode")`;
- what remains is the solver error: the draw y = T_h(z) comes from an adaptive forward solve and
  log q(y) from an adaptive backward solve, each accurate to about the flow's `rtol` / `atol`.
  The chain targets pi up to a perturbation of that size in log q; use tight tolerances, e.g.
  `flow.with_settings(rtol=1e-7, atol=1e-7)` (the tests use 1e-7 in float64: the log q error is
  then below 1e-7 nats). A fixed-step solve (`ODESampler(n_steps=...)`, `ODELikelihood(n_steps=...)`)
  has no error control,
  so the error is whatever the step count gives; a warning says so.
- a density solve that exhausts its step budget returns log q = -inf: the proposal is then
  rejected (never accepted), and a current state whose log q failed accepts nothing until a
  local move (see `numpyro_si.inference.mixed`) takes it elsewhere. Rejecting every move into or
  out of the failure set keeps detailed balance, so the chain stays pi-invariant; it only loses
  ergodicity if the failure set carries mass. `IMHInfo.proposal_logdensity_failed` reports it.
- a forward (sampling) solve that exhausts its budget makes `SIFlow.sample` raise at run time.

Example:

```python
from numpyro_si.inference import independence, run_chain

flow = flow.with_settings(sampler="ode", rtol=1e-7, atol=1e-7)
imh = independence.as_top_level_api(logdensity_fn, flow)
state = imh.init(position)
states, infos = jax.jit(lambda k, s: run_chain(k, imh.step, s, 1000))(key, state)
```
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from blackjax.base import SamplingAlgorithm, build_sampling_algorithm
from blackjax.mcmc.proposal import static_binomial_sampling
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree

from .._conditional import ConditionalSIFlow
from .._constrained import ConstrainedSIFlow
from .._distribution import SIFlow
from .._solvers import HutchinsonDivergence, ODELikelihood, ODESampler, SDESampler
from ._map_density import check_map_flow, map_log_density, map_sample_with_log_prob

__all__ = [
    "IMHState", "IMHInfo", "init", "build_kernel", "as_top_level_api", "GlobalMove", "global_move",
]

#: A flow that can propose Metropolis-Hastings moves: a density with exact samples.
Proposal = SIFlow | ConstrainedSIFlow


class IMHState(NamedTuple):
    """State of the independence MH chain.

    - `position`: the current point x, an array of shape `(d,)` or any pytree whose ravelled
      size is the flow's d.
    - `logdensity`: log pi(x), the target's (unnormalised) log density.
    - `proposal_logdensity`: log q(x), the flow's log density at x (-inf if its solve failed),
      stored so each step evaluates q only at the new draw.

    No gradient is stored: the independence kernel never uses one (the mixed kernel keeps the
    local kernel's own state, gradient included).
    """

    position: PyTree
    logdensity: Float[Array, ""]
    proposal_logdensity: Float[Array, ""]


class IMHInfo(NamedTuple):
    """What one independence MH step did.

    - `acceptance_rate`: min(1, w(y) / w(x)), 0 when the proposal's density solve failed.
    - `is_accepted`: whether the chain moved to the proposal.
    - `proposal_logdensity_failed`: whether the proposal's density solve exhausted its step
      budget (the proposal is then rejected).
    - `proposal_solver_steps`: steps taken by the proposal's density solve (its cost).
    """

    acceptance_rate: Float[Array, ""]
    is_accepted: Bool[Array, ""]
    proposal_logdensity_failed: Bool[Array, ""]
    proposal_solver_steps: Int[Array, ""]


def check_flow(
    flow: Proposal, *, constrained: bool = True, proposal_density: str = "backward"
) -> None:
    """Raise unless `flow` gives an exact Metropolis-Hastings proposal: an `SIFlow` (or, with
    `constrained`, a `ConstrainedSIFlow`, whose positions are points of its support) with the ODE
    sampler and an exact (non-random) divergence; warn if a solve has a fixed step count. With
    `proposal_density="map"` the sampler must have a fixed step count instead (its map is
    scored exactly) and the divergence is not used."""
    kinds = (SIFlow, ConstrainedSIFlow) if constrained else (SIFlow,)
    if isinstance(flow, ConditionalSIFlow):
        raise TypeError(
            "A ConditionalSIFlow is a family of densities; condition it on the observed context"
            " first (flow.condition(y)) and propose with that flow."
        )
    if isinstance(flow, ConstrainedSIFlow) and not constrained:
        raise TypeError(
            "This kernel moves in an unconstrained space; pass a flow on it (an SIFlow, e.g. the"
            " ConstrainedSIFlow's .flow fitted to unconstrained draws)."
        )
    if not isinstance(flow, kinds):
        names = " or ".join(kind.__name__ for kind in kinds)
        raise TypeError(f"flow must be a numpyro_si {names}, got {type(flow).__name__}.")
    if proposal_density == "map":
        check_map_flow(flow)
        return
    if isinstance(flow.sampler, SDESampler):
        raise ValueError(
            "The independence MH proposal must be drawn with the probability-flow ODE: SDE draws"
            " do not follow the ODE density that log_prob computes, so the MH ratio would be"
            " wrong. Pass flow.with_settings(sampler='ode', rtol=1e-7, atol=1e-7)."
        )
    dummy = jnp.zeros(flow.dim)
    if isinstance(flow.divergence, HutchinsonDivergence) or (
        flow.divergence.probe(jax.random.key(0), dummy) is not None
    ):
        raise ValueError(
            f"flow.divergence is {type(flow.divergence).__name__}, a random estimate of div b:"
            " log q would be noisy and the Metropolis-Hastings ratio biased (docs/math.md"
            " section 4). Pass flow.with_settings(divergence='exact')."
        )
    fixed = [
        name for name, solve in (("sampler", flow.sampler), ("likelihood", flow.likelihood))
        if isinstance(solve, ODESampler | ODELikelihood) and solve.n_steps is not None
    ]
    if fixed:
        warnings.warn(
            f"flow.settings.{' and flow.settings.'.join(fixed)} use(s) a fixed step count: the"
            " proposal's draws and its log density then disagree by an uncontrolled"
            " discretisation error, which biases the MH ratio. Prefer adaptive solves with tight"
            " tolerances, e.g. flow.with_settings(sampler='ode', rtol=1e-7, atol=1e-7).",
            stacklevel=3,
        )


def _flat_dim_check(position: PyTree, flow: Proposal) -> tuple[Array, Callable]:
    flat, unravel = ravel_pytree(position)
    size = math.prod(flow.event_shape)
    if flat.shape != (size,):
        raise ValueError(
            f"The position must ravel to shape ({size},) for this flow of event shape"
            f" {tuple(flow.event_shape)}, got {flat.shape}."
        )
    return flat, unravel


def flow_log_density(
    flow: Proposal, position: PyTree, proposal_density: str = "backward"
) -> tuple[Float[Array, ""], Bool[Array, ""]]:
    """log q(position) with the flow's exact-divergence solve (or, with `proposal_density="map"`,
    the exact density of its fixed-step map), and whether it failed."""
    flat, _ = _flat_dim_check(position, flow)
    if proposal_density == "map":
        return map_log_density(flow, flat.reshape(flow.event_shape))
    log_q, info = flow.log_prob_with_info(flat.reshape(flow.event_shape))
    return log_q, ~info.succeeded


#: How a proposal's log q is computed: `"backward"` (the default), a draw by the flow's ODE
#: sampler and then `log_prob`'s backward solve from it; `"forward"`, one forward solve that
#: integrates the divergence along the draw (`SIFlow.sample_with_log_prob`); `"map"`, a draw by
#: the flow's fixed-step sampler scored with that map's exact density (Jacobian
#: log-determinant; Newton inversion at other points: no solver-tolerance error in the ratio).
PROPOSAL_DENSITIES = ("backward", "forward", "map")


def check_proposal_density(proposal_density: str) -> str:
    if proposal_density not in PROPOSAL_DENSITIES:
        raise ValueError(
            f"proposal_density must be one of {PROPOSAL_DENSITIES}, got {proposal_density!r}."
        )
    return proposal_density


def flow_proposal(
    rng_key: PRNGKeyArray, flow: Proposal, unravel: Callable, proposal_density: str = "backward"
) -> tuple[PyTree, Float[Array, ""], Bool[Array, ""], Int[Array, ""]]:
    """One draw y ~ q and log q(y): by the flow's ODE sampler and then its backward solve
    (`proposal_density="backward"`), or both from one forward solve (`"forward"`), or by the
    fixed-step map and its exact density (`"map"`).

    Returns `(y, log q(y), failed, steps)`, y shaped like the chain position via `unravel`.
    """
    if proposal_density == "map":
        y, log_q, failed, steps = map_sample_with_log_prob(rng_key, flow)
        return unravel(y.reshape(-1)), log_q, failed, jnp.asarray(steps)
    if proposal_density == "forward":
        y, log_q, info = flow.sample_with_log_prob(rng_key, ())
        return unravel(y.reshape(-1)), log_q, ~info.succeeded, info.num_steps
    y = flow.sample(rng_key, ())
    log_q, info = flow.log_prob_with_info(y)
    return unravel(y.reshape(-1)), log_q, ~info.succeeded, info.num_steps


class GlobalMove(NamedTuple):
    """What `global_move` did: the chain `state` after the move, log q at its position
    (`proposal_logdensity`), min(1, w(y) / w(x)) (`acceptance_rate`), `is_accepted`, and
    whether a flow density solve `failed` (at the current point or the proposal)."""

    state: Any
    proposal_logdensity: Float[Array, ""]
    acceptance_rate: Float[Array, ""]
    is_accepted: Bool[Array, ""]
    failed: Bool[Array, ""]


def global_move(
    key_proposal: PRNGKeyArray, key_accept: PRNGKeyArray, flow: Proposal, state: Any,
    position: PyTree, logdensity: ArrayLike, previous_position: PyTree,
    previous_proposal_logdensity: ArrayLike, rebuild: Callable, proposal_density: str = "backward",
) -> GlobalMove:
    """One independence Metropolis-Hastings move with the flow, from a chain that other moves
    (a local kernel) may have moved since log q was last evaluated: the move of `mixed` and of
    `SIFlowBoost`.

    **Arguments:**

    - `key_proposal`, `key_accept`: keys of the flow draw and of the accept/reject choice.
    - `flow`: the proposal (see `check_flow`).
    - `state`, `position`, `logdensity`: the chain's state (any pytree), its position and
      log pi there.
    - `previous_position`, `previous_proposal_logdensity`: where log q was last evaluated and
      its value (reused if the chain has not moved since; a failed value stays failed).
    - `rebuild`: `rebuild(y) -> (state at y, log pi(y))`, the chain's state at a proposal.
    - `proposal_density`: how log q(y) is computed (`PROPOSAL_DENSITIES`).

    **Returns:** a `GlobalMove`.
    """
    previous, _ = ravel_pytree(previous_position)
    current, unravel = _flat_dim_check(position, flow)
    log_q_x, failed_x = jax.lax.cond(
        jnp.any(previous != current),
        lambda: flow_log_density(flow, position, proposal_density),
        lambda: (previous_proposal_logdensity, ~jnp.isfinite(previous_proposal_logdensity)),
    )
    y, log_q_y, failed_y, _ = flow_proposal(key_proposal, flow, unravel, proposal_density)
    proposed_state, logdensity_y = rebuild(y)
    log_ratio = log_acceptance_ratio(logdensity_y, log_q_y, logdensity, log_q_x, failed_y)
    (new_state, log_q), (is_accepted, acceptance_rate, _) = static_binomial_sampling(
        key_accept, log_ratio, (state, log_q_x), (proposed_state, log_q_y)
    )
    return GlobalMove(new_state, log_q, acceptance_rate, is_accepted, failed_x | failed_y)


def log_acceptance_ratio(
    logdensity_new: ArrayLike, proposal_logdensity_new: ArrayLike, logdensity: ArrayLike,
    proposal_logdensity: ArrayLike, proposal_failed: ArrayLike,
) -> Float[Array, ""]:
    """log [w(y) / w(x)] = [log pi(y) - log q(y)] - [log pi(x) - log q(x)], with -inf (reject)
    when the proposal's density solve failed or the ratio is NaN (e.g. both weights infinite)."""
    log_ratio = (logdensity_new - proposal_logdensity_new) - (logdensity - proposal_logdensity)
    reject = jnp.logical_or(proposal_failed, jnp.isnan(log_ratio))
    return jnp.where(reject, -jnp.inf, log_ratio)


def init(
    position: PyTree, logdensity_fn: Callable, flow: Proposal, proposal_density: str = "backward"
) -> IMHState:
    """The chain state at `position`: evaluates log pi and log q there.

    **Arguments:**

    - `position`: the starting point, shaped like a draw of the flow (or a pytree of that size).
    - `logdensity_fn`: log pi, the target's unnormalised log density of one position.
    - `flow`: the proposal, an `SIFlow` (or a `ConstrainedSIFlow`, positions on its support) with
      the ODE sampler and the exact divergence.
    - `proposal_density`: how log q is computed (`PROPOSAL_DENSITIES`).

    **Returns:** an `IMHState`. If the flow's solve fails at `position`, its log q is -inf and
    the chain rejects every proposal from there (choose another start).
    """
    check_flow(flow, proposal_density=proposal_density)
    log_q, _ = flow_log_density(flow, position, proposal_density)
    return IMHState(position, jnp.asarray(logdensity_fn(position)), log_q)


def build_kernel(proposal_density: str = "backward") -> Callable:
    """Build the independence MH kernel (`proposal_density`: how log q of a proposal is
    computed, `PROPOSAL_DENSITIES`).

    **Returns:** `kernel(rng_key, state, logdensity_fn, flow) -> (IMHState, IMHInfo)`, a pure
    function: one flow draw, one flow density, one target log density per call.
    """

    def kernel(
        rng_key: PRNGKeyArray, state: IMHState, logdensity_fn: Callable, flow: Proposal
    ) -> tuple[IMHState, IMHInfo]:
        """One independence MH step with the flow proposal."""
        check_flow(flow, proposal_density=proposal_density)
        key_proposal, key_accept = jax.random.split(rng_key)
        _, unravel = _flat_dim_check(state.position, flow)
        y, log_q_y, failed, steps = flow_proposal(key_proposal, flow, unravel, proposal_density)
        log_pi_y = jnp.asarray(logdensity_fn(y))
        log_ratio = log_acceptance_ratio(
            log_pi_y, log_q_y, state.logdensity, state.proposal_logdensity, failed
        )
        proposal = IMHState(y, log_pi_y.astype(state.logdensity.dtype), log_q_y)
        new_state, (is_accepted, acceptance_rate, _) = static_binomial_sampling(
            key_accept, log_ratio, state, proposal
        )
        return new_state, IMHInfo(acceptance_rate, is_accepted, failed, steps)

    return kernel


def as_top_level_api(
    logdensity_fn: Callable, flow: Proposal, *, proposal_density: str = "backward"
) -> SamplingAlgorithm:
    """Independence MH with an `SIFlow` proposal as a `blackjax.SamplingAlgorithm`.

    **Arguments:**

    - `logdensity_fn`: log pi of one position (unnormalised).
    - `flow`: the proposal `SIFlow` (ODE sampler, exact divergence, tight `rtol`/`atol`; see the
      module docstring for the remaining solver error).
    - `proposal_density`: `"backward"` (default: draw, then a backward density solve),
      `"forward"` (draw and log q from one forward solve: cheaper, the same density to the
      solver's tolerance) or `"map"` (the flow's fixed-step sampling map and its exact density:
      no solver-tolerance error; the flow needs a fixed-step sampler, e.g.
      `flow.with_fast_map(key)[0]`).

    **Returns:** `SamplingAlgorithm(init, step)` with `init(position) -> IMHState` and
    `step(rng_key, state) -> (IMHState, IMHInfo)`; jit `step` (or the whole `run_chain`) and
    `jax.vmap` it over keys and states for parallel chains.
    """
    proposal_density = check_proposal_density(proposal_density)
    check_flow(flow, proposal_density=proposal_density)
    kernel = build_kernel(proposal_density)
    return build_sampling_algorithm(
        kernel, init, logdensity_fn, init_args=(flow, proposal_density), kernel_args=(flow,)
    )
