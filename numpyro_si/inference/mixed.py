"""Local BlackJAX moves interleaved with global `SIFlow` independence-MH moves.

Each step runs `n_local` steps of a local kernel (NUTS, HMC, MALA, ... from BlackJAX: any
kernel whose state has `position` and `logdensity`), then one global independence MH step with
the flow proposal (see `numpyro_si.inference.independence`). Both leave pi invariant, so their
composition does; the local moves explore within a mode, the flow moves jump between modes.

State and cost. `MixedState` holds the local kernel's own state (position, log pi, gradient,
...) and log q of the current position. A global step needs log q(x) at the position x the local
moves reached; it is recomputed only if they moved the chain (`lax.cond`; under `jax.vmap` a
batched `cond` evaluates both branches, so vmapped chains pay for it every global step). A
global step therefore costs one flow draw (forward ODE solve), one or two flow densities
(backward ODE solves with the exact divergence: at the proposal y and at the moved x) and one
call of the local kernel's `init` at y (log pi and its gradient), whose result becomes the local
state if y is accepted, so the local kernel restarts from a consistent state at no extra cost.

The schedule is deterministic (`n_local` local steps, then one global step), not a global step
with probability p: under `jax.vmap` a random choice compiles to both branches, so every step
would pay for the flow solves anyway. Raise `n_local` to make global moves rarer.

Exactness: the same conditions and remaining solver error as `independence` (ODE sampler, exact
divergence, tight `rtol` / `atol`); a failed density solve rejects the global move.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
from blackjax.base import SamplingAlgorithm, build_sampling_algorithm
from jaxtyping import Array, Bool, Float, PRNGKeyArray, PyTree

from .independence import (
    Proposal,
    check_flow,
    check_proposal_density,
    flow_log_density,
    global_move,
)

__all__ = ["MixedState", "MixedInfo", "init", "build_kernel", "as_top_level_api"]


class MixedState(NamedTuple):
    """State of the mixed chain.

    - `local_state`: the local kernel's state; `local_state.position` is the chain position and
      `local_state.logdensity` its log pi.
    - `proposal_logdensity`: log q at `local_state.position` (-inf if that solve failed).
    """

    local_state: NamedTuple
    proposal_logdensity: Float[Array, ""]


class MixedInfo(NamedTuple):
    """What one mixed step did.

    - `local_info`: the local kernel's infos, stacked with a leading axis of length `n_local`.
    - `global_acceptance_rate`: min(1, w(y) / w(x)) of the flow move (0 if a density failed).
    - `global_is_accepted`: whether the flow move was accepted.
    - `global_proposal_failed`: whether log q failed at the proposal or at the current point
      (the flow move is then rejected).
    """

    local_info: NamedTuple
    global_acceptance_rate: Float[Array, ""]
    global_is_accepted: Bool[Array, ""]
    global_proposal_failed: Bool[Array, ""]


def _check_local_state(local_state) -> None:
    if not (hasattr(local_state, "position") and hasattr(local_state, "logdensity")):
        raise TypeError(
            "The local kernel's state must have `position` and `logdensity` fields (as BlackJAX's"
            f" HMC/NUTS/MALA/RMH states do), got {type(local_state).__name__}."
        )


def init(
    position: PyTree, logdensity_fn: Callable, flow: Proposal, local_init: Callable,
    proposal_density: str = "backward",
) -> MixedState:
    """The mixed chain's state at `position`.

    **Arguments:**

    - `position`: the starting point, shape `(d,)` or a pytree of total size d.
    - `logdensity_fn`: log pi of one position (unnormalised); the local kernel must target it.
    - `flow`: the proposal (an `SIFlow`, or a `ConstrainedSIFlow` for positions on its support;
      ODE sampler, exact divergence, tight tolerances).
    - `local_init`: `local_init(position) -> local state`, e.g. `blackjax.nuts(...).init`.
    - `proposal_density`: how log q is computed (`independence.PROPOSAL_DENSITIES`).

    **Returns:** a `MixedState` (local state and log q at `position`).
    """
    del logdensity_fn  # the local state carries log pi
    check_flow(flow, proposal_density=proposal_density)
    local_state = local_init(position)
    _check_local_state(local_state)
    log_q, _ = flow_log_density(flow, position, proposal_density)
    return MixedState(local_state, log_q)


def build_kernel(n_local: int = 1, proposal_density: str = "backward") -> Callable:
    """Build the mixed kernel: `n_local` local steps, then one global flow step.

    **Arguments:**

    - `n_local`: local steps per transition (0 gives pure independence MH carrying the local
      state along).
    - `proposal_density`: how log q of a flow proposal is computed (`"backward"`, `"forward"`
      or `"map"`, see `independence.PROPOSAL_DENSITIES`).

    **Returns:** `kernel(rng_key, state, logdensity_fn, flow, local_step, local_init)
    -> (MixedState, MixedInfo)`, where `local_step(rng_key, local_state) -> (local_state, info)`
    and `local_init(position) -> local_state` belong to the same local kernel (e.g. the `step`
    and `init` of `blackjax.nuts(logdensity_fn, step_size, inverse_mass_matrix)`).
    """
    if not (isinstance(n_local, int) and n_local >= 0):
        raise ValueError(f"n_local must be a non-negative int, got {n_local!r}.")

    def kernel(
        rng_key: PRNGKeyArray, state: MixedState, logdensity_fn: Callable, flow: Proposal,
        local_step: Callable, local_init: Callable,
    ) -> tuple[MixedState, MixedInfo]:
        """One mixed transition."""
        del logdensity_fn  # log pi comes from the local states (`local_init` at the proposal)
        check_flow(flow, proposal_density=proposal_density)
        _check_local_state(state.local_state)
        key_local, key_proposal, key_accept = jax.random.split(rng_key, 3)

        def local_move(local_state, key):
            return local_step(key, local_state)

        local_state, local_info = jax.lax.scan(
            local_move, state.local_state, jax.random.split(key_local, n_local)
        )

        def rebuild(y):  # log pi(y) and whatever else the local kernel needs
            proposed = local_init(y)
            return proposed, proposed.logdensity

        # log q at the position the local moves reached is reused if they did not move it
        move = global_move(
            key_proposal, key_accept, flow, local_state, local_state.position,
            local_state.logdensity, state.local_state.position, state.proposal_logdensity,
            rebuild, proposal_density,
        )
        new_state = MixedState(move.state, move.proposal_logdensity)
        info = MixedInfo(local_info, move.acceptance_rate, move.is_accepted, move.failed)
        return new_state, info

    return kernel


def as_top_level_api(
    logdensity_fn: Callable, flow: Proposal, local: SamplingAlgorithm | Callable, *,
    n_local: int = 1, local_init: Callable | None = None, proposal_density: str = "backward",
) -> SamplingAlgorithm:
    """Local moves plus global `SIFlow` moves as a `blackjax.SamplingAlgorithm`.

    **Arguments:**

    - `logdensity_fn`: log pi of one position (unnormalised); `local` must target the same pi.
    - `flow`: the proposal `SIFlow` (ODE sampler, exact divergence, tight tolerances).
    - `local`: the local kernel, a `SamplingAlgorithm` built by the user (e.g.
      `blackjax.nuts(logdensity_fn, step_size, inverse_mass_matrix)`, `blackjax.mala(...)`),
      or a bare step function `step(rng_key, local_state) -> (local_state, info)`, which then
      needs `local_init`.
    - `n_local`: local steps before each global flow step.
    - `local_init`: `local_init(position) -> local state`; defaults to `local.init`. It is also
      how the local state is rebuilt at an accepted flow proposal.
    - `proposal_density`: `"backward"` (default: a flow draw, then a backward density solve),
      `"forward"` (draw and log q from one forward solve: cheaper, the same density to the
      solver's tolerance) or `"map"` (the flow's fixed-step sampling map and its exact density:
      no solver-tolerance error; needs a fixed-step sampler, e.g. `flow.with_fast_map(key)[0]`).

    **Returns:** `SamplingAlgorithm(init, step)`: `init(position) -> MixedState`,
    `step(rng_key, state) -> (MixedState, MixedInfo)`.

    Example:

    ```python
    nuts = blackjax.nuts(logdensity_fn, step_size=0.5, inverse_mass_matrix=jnp.ones(d))
    algo = mixed.as_top_level_api(logdensity_fn, flow, nuts, n_local=2)
    states, infos = run_chain(key, algo.step, algo.init(x0), 1000)
    ```
    """
    proposal_density = check_proposal_density(proposal_density)
    check_flow(flow, proposal_density=proposal_density)
    if isinstance(local, SamplingAlgorithm):
        local_step, local_init = local.step, local_init or local.init
    elif callable(local):
        if local_init is None:
            raise ValueError(
                "A bare local step function needs local_init(position) -> local state, e.g."
                " lambda x: blackjax.mcmc.mala.init(x, logdensity_fn)."
            )
        local_step = local
    else:
        raise TypeError(
            f"local must be a blackjax SamplingAlgorithm or a step function, got {local!r}."
        )
    kernel = build_kernel(n_local, proposal_density)
    return build_sampling_algorithm(
        kernel, init, logdensity_fn, init_args=(flow, local_init, proposal_density),
        kernel_args=(flow, local_step, local_init),
    )
