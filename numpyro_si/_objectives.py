"""Quadratic objectives for the interpolant fields (docs/math.md section 2).

Each per-sample loss acts on ONE draw (t, x0, x1, z) and a field `f(t, x)` on one point; batch
with `jax.vmap`. Their unique minimisers are the fields b, v, s and eta_z, and the excess loss is
half the mean squared field error, L(f^) - min L = 1/2 E|f^ - f|^2.

Time sampling is a separate object (`UniformTime`, `BetaTime`), so the integral over t can be
trimmed or importance-weighted without changing the losses.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._interpolants import AbstractInterpolant, AbstractOneSidedInterpolant, MirrorInterpolant

__all__ = [
    "AbstractTimeSampler",
    "UniformTime",
    "BetaTime",
    "velocity_loss",
    "deterministic_velocity_loss",
    "score_loss",
    "denoiser_loss",
    "sample_coupling",
]


def _dot(a, b):
    return jnp.sum(a * b, axis=-1)


def _safe_inverse(x):
    nonzero = x != 0
    return jnp.where(nonzero, 1.0 / jnp.where(nonzero, x, 1.0), 0.0)


# ----------------------------------------------------------------------------------------------
# per-sample losses
# ----------------------------------------------------------------------------------------------


def velocity_loss(
    velocity: Callable, interpolant: AbstractInterpolant, t: Float[Array, ""],
    x0: Float[Array, " d"], x1: Float[Array, " d"], z: Float[Array, " d"], *,
    antithetic: bool = True,
) -> Float[Array, ""]:
    """L_b integrand: 1/2 |b^(t, x_t)|^2 - (I_dot + gamma' z) . b^(t, x_t).

    Antithetic (for gamma > 0): averages the integrand at x_t(z) and x_t(-z); the gamma' term
    becomes gamma' z . (b^+ - b^-) / 2 = O(gamma gamma'), finite where gamma' is not.
    """
    i_dot = interpolant.deterministic_time_derivative(t, x0, x1)
    dgamma = interpolant.dgamma(t)
    plus = velocity(t, interpolant.interpolate(t, x0, x1, z))
    if not antithetic or interpolant.is_deterministic:
        return 0.5 * _dot(plus, plus) - _dot(i_dot + dgamma * z, plus)
    minus = velocity(t, interpolant.interpolate(t, x0, x1, -z))
    quadratic = 0.25 * (_dot(plus, plus) + _dot(minus, minus)) - 0.5 * _dot(i_dot, plus + minus)
    return quadratic - 0.5 * dgamma * _dot(z, plus - minus)


def deterministic_velocity_loss(
    v: Callable, interpolant: AbstractInterpolant, t: Float[Array, ""], x0: Float[Array, " d"],
    x1: Float[Array, " d"], z: Float[Array, " d"], *, antithetic: bool = True,
) -> Float[Array, ""]:
    """L_v integrand: 1/2 |v^|^2 - I_dot . v^ (antithetic: averaged over x_t(+-z)).

    v(t, x) = E[I_dot | x_t = x] is the velocity of the interpolant's deterministic part; the
    probability-flow velocity is b = v + gamma' eta_z (`velocity_loss`)."""
    i_dot = interpolant.deterministic_time_derivative(t, x0, x1)
    plus = v(t, interpolant.interpolate(t, x0, x1, z))
    if not antithetic or interpolant.is_deterministic:
        return 0.5 * _dot(plus, plus) - _dot(i_dot, plus)
    minus = v(t, interpolant.interpolate(t, x0, x1, -z))
    return 0.25 * (_dot(plus, plus) + _dot(minus, minus)) - 0.5 * _dot(i_dot, plus + minus)


def score_loss(
    score: Callable, interpolant: AbstractInterpolant, t: Float[Array, ""],
    x0: Float[Array, " d"], x1: Float[Array, " d"], z: Float[Array, " d"], *,
    antithetic: bool = True,
) -> Float[Array, ""]:
    """L_s integrand: 1/2 |s^|^2 + (1/gamma) z . s^, needing gamma > 0.

    Antithetic (default, strongly advised): 1/4 |s^+|^2 + 1/4 |s^-|^2 + z . (s^+ - s^-) / (2 gamma),
    whose variance stays bounded as gamma -> 0 (the plain form's blows up like 1/gamma^2).
    Where gamma = 0 exactly (t at an end) the 1/gamma term is dropped.
    """
    _check_stochastic(interpolant, "score_loss")
    inv_gamma = _safe_inverse(interpolant.gamma(t))
    plus = score(t, interpolant.interpolate(t, x0, x1, z))
    if not antithetic:
        return 0.5 * _dot(plus, plus) + inv_gamma * _dot(z, plus)
    minus = score(t, interpolant.interpolate(t, x0, x1, -z))
    return 0.25 * (_dot(plus, plus) + _dot(minus, minus)) + 0.5 * inv_gamma * _dot(z, plus - minus)


def denoiser_loss(
    denoiser: Callable, interpolant: AbstractInterpolant, t: Float[Array, ""],
    x0: Float[Array, " d"], x1: Float[Array, " d"], z: Float[Array, " d"], *,
    antithetic: bool = True,
) -> Float[Array, ""]:
    """L_eta integrand: 1/2 |eta^|^2 - z . eta^ (antithetic: averaged over x_t(+-z))."""
    _check_stochastic(interpolant, "denoiser_loss")
    plus = denoiser(t, interpolant.interpolate(t, x0, x1, z))
    if not antithetic:
        return 0.5 * _dot(plus, plus) - _dot(z, plus)
    minus = denoiser(t, interpolant.interpolate(t, x0, x1, -z))
    return 0.25 * (_dot(plus, plus) + _dot(minus, minus)) - 0.5 * _dot(z, plus - minus)


def _check_stochastic(interpolant, name):
    if interpolant.is_deterministic:
        raise ValueError(
            f"{name} needs a stochastic interpolant (gamma > 0 on (0, 1)); "
            f"{type(interpolant).__name__} has gamma = 0. A one-sided interpolant gets its score "
            "from the velocity instead."
        )


# ----------------------------------------------------------------------------------------------
# couplings
# ----------------------------------------------------------------------------------------------


def sample_coupling(
    key: PRNGKeyArray, interpolant: AbstractInterpolant, x1: Float[Array, "n d"],
    base_sample: Callable[[PRNGKeyArray, int], Float[Array, "n d"]] | None = None,
) -> tuple[Float[Array, "n d"], Float[Array, "n d"]]:
    """(x0, z) to pair with a batch of data x1 under the interpolant's coupling.

    - two-sided: x0 ~ rho0 (`base_sample(key, n)`), independent of x1;
    - one-sided: x0 ~ N(0, I) (the Gaussian base; `base_sample` must be None);
    - mirror: x0 = x1.
    z ~ N(0, I) independently in every case.
    """
    key_base, key_noise = jax.random.split(key)
    n = x1.shape[0]
    z = jax.random.normal(key_noise, x1.shape, dtype=x1.dtype)
    if isinstance(interpolant, MirrorInterpolant):
        return x1, z
    if isinstance(interpolant, AbstractOneSidedInterpolant) or base_sample is None:
        return jax.random.normal(key_base, x1.shape, dtype=x1.dtype), z
    return base_sample(key_base, n).astype(x1.dtype), z


# ----------------------------------------------------------------------------------------------
# time sampling
# ----------------------------------------------------------------------------------------------


class AbstractTimeSampler(eqx.Module):
    """Draws training times and their loss weights."""

    @abc.abstractmethod
    def sample(self, key: PRNGKeyArray, n: int, dtype=None) -> tuple[Array, Array]:
        """(t, weight), each of shape (n,)."""


class UniformTime(AbstractTimeSampler):
    """t ~ U[t_min, t_max], weight 1. The default [0, 1] is the objective of docs/math.md; trimming
    (t_min > 0 or t_max < 1) leaves the fields unchanged inside the interval."""

    t_min: float = 0.0
    t_max: float = 1.0

    def __check_init__(self):
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"Need 0 <= t_min < t_max <= 1, got [{self.t_min}, {self.t_max}].")

    def sample(self, key, n, dtype=None):
        dtype = dtype or jnp.zeros(()).dtype
        t = jax.random.uniform(key, (n,), dtype=dtype, minval=self.t_min, maxval=self.t_max)
        return t, jnp.ones((n,), dtype=dtype)


class BetaTime(AbstractTimeSampler):
    """t ~ Beta(a, b), to spend more samples near an end.

    With `reweight=True` (default) each draw is weighted by 1/pdf(t) so the objective is the
    uniform-time one (an importance-sampled estimate of the same integral); with `reweight=False`
    the objective is the pdf-weighted integral, which has the same minimising fields.
    """

    a: float = 1.0
    b: float = 1.0
    reweight: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        if not (self.a > 0 and self.b > 0):
            raise ValueError(f"Beta parameters must be positive, got a={self.a}, b={self.b}.")

    def sample(self, key, n, dtype=None):
        dtype = dtype or jnp.zeros(()).dtype
        t = jax.random.beta(key, self.a, self.b, (n,), dtype=dtype)
        if not self.reweight:
            return t, jnp.ones((n,), dtype=dtype)
        log_pdf = jax.scipy.stats.beta.logpdf(t, self.a, self.b)
        return t, jnp.exp(-log_pdf)
