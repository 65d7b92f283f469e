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
import math
import numbers
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
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

    eps0: float = eqx.field(converter=lambda value: _eps0(value))

    def __call__(self, t):
        return jnp.full_like(jnp.asarray(t, dtype=float), self.eps0)


class DecayingEps(AbstractEps):
    """eps(t) = eps0 (1 - t): the "non-singular" schedule; eps s stays finite at t = 1."""

    eps0: float = eqx.field(converter=lambda value: _eps0(value))

    def __call__(self, t):
        return self.eps0 * (1.0 - jnp.asarray(t, dtype=float))


class ZeroEndsEps(AbstractEps):
    """eps(t) = eps0 t (1 - t): no noise at either end."""

    eps0: float = eqx.field(converter=lambda value: _eps0(value))

    def __call__(self, t):
        t = jnp.asarray(t, dtype=float)
        return self.eps0 * t * (1.0 - t)


class CustomEps(AbstractEps):
    """A user callable eps(t), finite and >= 0 on [0, 1] (checked on a grid of 33 times when it
    is made; a function JAX cannot evaluate there is refused)."""

    fn: Callable = eqx.field(static=True)

    def __check_init__(self):
        times = np.linspace(0.0, 1.0, 33)
        try:
            values = np.asarray([np.asarray(self(t)) for t in times], dtype=float)
        except Exception as error:  # noqa: BLE001 - any failure means an unusable eps
            raise TypeError(
                f"eps must be callable as eps(t) on a float t in [0, 1] and return a number:"
                f" {type(error).__name__}: {error}"
            ) from None
        if values.shape != times.shape:
            raise ValueError(f"eps(t) must return a number, got shape {values.shape[1:]}.")
        bad = ~np.isfinite(values) | (values < 0)
        if bad.any():
            t = times[np.argmax(bad)]
            raise ValueError(
                f"eps(t) must be finite and >= 0 on [0, 1]; eps({t:g}) = {values[np.argmax(bad)]}."
            )

    def __call__(self, t):
        t = jnp.asarray(t, dtype=float)
        return jnp.asarray(self.fn(t), dtype=t.dtype)


def _is_number(value) -> bool:
    """A real number: Python or NumPy scalars, or a concrete 0-d array (bools are not)."""
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, numbers.Real):
        return True
    shape = getattr(value, "shape", None)
    return (shape == () and not isinstance(value, jax.core.Tracer)
            and np.issubdtype(np.asarray(value).dtype, np.number))


def _eps0(value) -> float:
    """The noise scale of a schedule: a finite number >= 0."""
    if not _is_number(value):
        raise ValueError(f"eps0 must be a non-negative number, got {value!r}.")
    eps0 = float(value)
    if not (math.isfinite(eps0) and eps0 >= 0):
        raise ValueError(f"eps0 must be a non-negative number, got {value!r}.")
    return eps0


def as_eps(eps: float | Callable | AbstractEps) -> AbstractEps:
    """A number becomes `ConstantEps`, a callable `CustomEps`; an `AbstractEps` passes through."""
    if isinstance(eps, AbstractEps):
        return eps
    if _is_number(eps):
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
