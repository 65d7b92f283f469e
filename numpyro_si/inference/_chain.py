"""Running a BlackJAX-style kernel for many steps with `jax.lax.scan`."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
from jaxtyping import PRNGKeyArray, PyTree

__all__ = ["run_chain"]


def run_chain(
    rng_key: PRNGKeyArray, kernel_step: Callable, initial_state: NamedTuple, n_steps: int
) -> tuple[PyTree, PyTree]:
    """Run `n_steps` transitions of `kernel_step(rng_key, state) -> (state, info)` by `lax.scan`.

    **Arguments:**

    - `rng_key`: split into one key per step.
    - `kernel_step`: a step function, e.g. `SamplingAlgorithm.step` of `independence` or `mixed`.
    - `initial_state`: the state the chain starts from (not included in the output).
    - `n_steps`: a Python int, the number of transitions.

    **Returns:** `(states, infos)`, each a pytree with a leading axis of length `n_steps`.

    Pure and traceable: jit it with the step closed over,
    `jax.jit(lambda k, s: run_chain(k, algo.step, s, n))`, and run parallel chains with
    `jax.vmap` of that over keys and initial states.
    """

    def one_step(state, key):
        state, info = kernel_step(key, state)
        return state, (state, info)

    keys = jax.random.split(rng_key, n_steps)
    _, (states, infos) = jax.lax.scan(one_step, initial_state, keys)
    return states, infos
