"""Generative dynamics built from the fields (docs/math.md section 3).

    ODE (probability flow):  dX = b dt
    forward SDE (0 -> 1):    dX = (b + eps s) dt + sqrt(2 eps) dW
    backward SDE (1 -> 0):   dX = (b - eps s) dt + sqrt(2 eps) dW_bar

`Fields` bundles an interpolant with a velocity and (optionally) a score and knows how to form
eps(t) s(t, x): from the score field when there is one, and from the velocity alone for a one-sided
interpolant (Singh & Fischer's stochastic samplers for deterministic flow models).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._interpolants import AbstractInterpolant, AbstractOneSidedInterpolant

# ----------------------------------------------------------------------------------------------
# eps(t) schedules
# ----------------------------------------------------------------------------------------------


class AbstractEps(eqx.Module):
    """A noise level eps(t) >= 0 of the SDE family; eps = 0 is the probability-flow ODE."""

    @abc.abstractmethod
    def __call__(self, t: ArrayLike) -> Array:
        """eps(t)."""


class ConstantEps(AbstractEps):
    """eps(t) = eps0. With a velocity-only one-sided model the drift is singular near t = 1; the
    sampler finishes with a deterministic step."""

    eps0: float

    def __check_init__(self):
        _check_nonnegative(self.eps0)

    def __call__(self, t):
        return jnp.full_like(jnp.asarray(t, dtype=float), self.eps0)


class DecayingEps(AbstractEps):
    """eps(t) = eps0 (1 - t): the "non-singular" schedule; eps s stays finite at t = 1."""

    eps0: float

    def __check_init__(self):
        _check_nonnegative(self.eps0)

    def __call__(self, t):
        return self.eps0 * (1.0 - jnp.asarray(t, dtype=float))


class ZeroEndsEps(AbstractEps):
    """eps(t) = eps0 t (1 - t): no noise at either end."""

    eps0: float

    def __check_init__(self):
        _check_nonnegative(self.eps0)

    def __call__(self, t):
        t = jnp.asarray(t, dtype=float)
        return self.eps0 * t * (1.0 - t)


class CustomEps(AbstractEps):
    """A user callable eps(t) (must be >= 0)."""

    fn: Callable = eqx.field(static=True)

    def __call__(self, t):
        t = jnp.asarray(t, dtype=float)
        return jnp.asarray(self.fn(t), dtype=t.dtype)


def _check_nonnegative(eps0):
    if not (isinstance(eps0, int | float) and eps0 >= 0):
        raise ValueError(f"eps0 must be a non-negative number, got {eps0!r}.")


def as_eps(eps: float | Callable | AbstractEps) -> AbstractEps:
    """A float becomes `ConstantEps`, a callable `CustomEps`; an `AbstractEps` passes through."""
    if isinstance(eps, AbstractEps):
        return eps
    if isinstance(eps, int | float):
        return ConstantEps(float(eps))
    if callable(eps):
        return CustomEps(eps)
    raise TypeError(f"eps must be a number, a callable eps(t) or an AbstractEps, got {eps!r}.")


# ----------------------------------------------------------------------------------------------
# fields
# ----------------------------------------------------------------------------------------------


class FunctionField(eqx.Module):
    """Wraps a plain function `fn(t, x)` so it can sit inside a pytree (the function is static)."""

    fn: Callable = eqx.field(static=True)

    def __call__(self, t, x):
        return self.fn(t, x)


def as_field(field, name: str):
    """An `eqx.Module` passes through; a plain callable is wrapped in `FunctionField`."""
    if field is None:
        return None
    if isinstance(field, eqx.Module):
        if not callable(field):
            raise TypeError(f"{name} must be callable as {name}(t, x); {type(field).__name__} is not.")
        return field
    if callable(field):
        return FunctionField(field)
    raise TypeError(
        f"{name} must be a callable {name}(t, x) (an Equinox module or a function), got {field!r}."
    )


class Fields(eqx.Module):
    """An interpolant with its velocity b(t, x) and optional score s(t, x), on one point."""

    interpolant: AbstractInterpolant
    velocity: Callable
    score: Callable | None = None

    @property
    def has_score(self) -> bool:
        """Whether eps * score is available (a score field, or a one-sided interpolant)."""
        return self.score is not None or isinstance(self.interpolant, AbstractOneSidedInterpolant)

    def b(self, t: Float[ArrayLike, ""], x: Float[Array, " d"]) -> Float[Array, " d"]:
        return self.velocity(t, x)

    def eps_score(
        self, t: Float[ArrayLike, ""], x: Float[Array, " d"], eps: Float[ArrayLike, ""],
        velocity: Float[Array, " d"] | None = None,
    ) -> Float[Array, " d"]:
        """eps(t) s(t, x), finite wherever eps vanishes."""
        if self.score is not None:
            return eps * self.score(t, x)
        if isinstance(self.interpolant, AbstractOneSidedInterpolant):
            if velocity is None:
                velocity = self.velocity(t, x)
            return self.interpolant.eps_times_score(t, x, velocity, eps)
        raise ValueError(
            "This flow has no score: give `score=` or use a one-sided interpolant, whose score"
            " follows from the velocity."
        )

    def score_value(self, t, x):
        """s(t, x) (singular at t = 1 for a velocity-only one-sided model)."""
        return self.eps_score(t, x, jnp.ones((), dtype=x.dtype))

    def forward_drift(self, eps: AbstractEps) -> Callable:
        """b_F = b + eps s, as drift(t, x)."""

        def drift(t, x):
            velocity = self.velocity(t, x)
            return velocity + self.eps_score(t, x, eps(t), velocity)

        return drift

    def backward_drift(self, eps: AbstractEps) -> Callable:
        """b_B = b - eps s, as drift(t, x)."""

        def drift(t, x):
            velocity = self.velocity(t, x)
            return velocity - self.eps_score(t, x, eps(t), velocity)

        return drift
