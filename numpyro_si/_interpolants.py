"""Stochastic interpolants x_t = alpha(t) x0 + beta(t) x1 + gamma(t) z (docs/math.md section 1).

Time runs from t=0 (base rho0) to t=1 (target rho1). Every coefficient and its exact time
derivative is a method on an `eqx.Module`, so an interpolant can live inside a pytree (an
`SIFlow`) and cross `jax.jit`.

Three families, told apart by class rather than by flags:

- `AbstractInterpolant`: two-sided, independent coupling (x0, x1) ~ rho0 x rho1.
- `AbstractOneSidedInterpolant`: Gaussian base, x0 = z ~ N(0, I), gamma == 0; the score then
  follows from the velocity alone (docs/math.md section 2).
- `MirrorInterpolant`: rho0 = rho1 with x0 = x1, for denoising.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

_PI = jnp.pi


def _safe_divide(numerator, denominator):
    """numerator / denominator, and 0 where the denominator is 0 (for gamma' = gamma gamma' / gamma)."""
    nonzero = denominator != 0
    return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1.0), 0.0)


# ----------------------------------------------------------------------------------------------
# gamma families
# ----------------------------------------------------------------------------------------------


class AbstractGamma(eqx.Module):
    """The noise coefficient gamma(t) of a stochastic interpolant, with gamma(0) = gamma(1) = 0.

    Subclasses implement `__call__` (gamma) and `gamma_dgamma` (gamma * gamma' in closed form,
    finite even where gamma' is not, as for the Brownian gamma at t = 0, 1).
    """

    @abc.abstractmethod
    def __call__(self, t: ArrayLike) -> Array:
        """gamma(t)."""

    @abc.abstractmethod
    def gamma_dgamma(self, t: ArrayLike) -> Array:
        """gamma(t) * gamma'(t), in closed form."""

    def derivative(self, t: ArrayLike) -> Array:
        """gamma'(t). Defined as 0 where gamma(t) = 0 (it only ever multiplies terms that vanish
        there); use `gamma_dgamma` where the product is what is needed."""
        return _safe_divide(self.gamma_dgamma(t), self(t))

    @property
    def is_zero(self) -> bool:
        return False


class ZeroGamma(AbstractGamma):
    """gamma = 0: the deterministic interpolant (InterFlow)."""

    def __call__(self, t):
        return jnp.zeros_like(jnp.asarray(t, dtype=float))

    def gamma_dgamma(self, t):
        return jnp.zeros_like(jnp.asarray(t, dtype=float))

    def derivative(self, t):
        return jnp.zeros_like(jnp.asarray(t, dtype=float))

    @property
    def is_zero(self) -> bool:
        return True


class BrownianGamma(AbstractGamma):
    """gamma(t) = sqrt(a t (1 - t)), a Brownian bridge. gamma * gamma' = a (1 - 2t) / 2."""

    a: float = 1.0

    def __check_init__(self):
        if not self.a > 0:
            raise ValueError(f"BrownianGamma needs a > 0, got a={self.a}.")

    def __call__(self, t):
        t = jnp.asarray(t, dtype=float)
        return jnp.sqrt(jnp.clip(self.a * t * (1 - t), 0.0))

    def gamma_dgamma(self, t):
        t = jnp.asarray(t, dtype=float)
        return self.a * (1 - 2 * t) / 2


class QuadraticGamma(AbstractGamma):
    """gamma(t) = scale * t (1 - t)."""

    scale: float = 1.0

    def __call__(self, t):
        t = jnp.asarray(t, dtype=float)
        return self.scale * t * (1 - t)

    def gamma_dgamma(self, t):
        t = jnp.asarray(t, dtype=float)
        return self.scale**2 * t * (1 - t) * (1 - 2 * t)

    def derivative(self, t):
        t = jnp.asarray(t, dtype=float)
        return self.scale * (1 - 2 * t)


class SinSquaredGamma(AbstractGamma):
    """gamma(t) = scale * sin^2(pi t)."""

    scale: float = 1.0

    def __call__(self, t):
        t = jnp.asarray(t, dtype=float)
        return self.scale * jnp.sin(_PI * t) ** 2

    def gamma_dgamma(self, t):
        return self(t) * self.derivative(t)

    def derivative(self, t):
        t = jnp.asarray(t, dtype=float)
        return self.scale * 2 * _PI * jnp.sin(_PI * t) * jnp.cos(_PI * t)


class CustomGamma(AbstractGamma):
    """A user-defined gamma(t). gamma * gamma' is d/dt (gamma^2 / 2) by automatic differentiation,
    so give `gamma_squared` when gamma itself is not differentiable at the ends (as sqrt(t(1-t)))."""

    gamma_fn: Callable | None = eqx.field(static=True, default=None)
    gamma_squared_fn: Callable | None = eqx.field(static=True, default=None)

    def __call__(self, t):
        t = jnp.asarray(t, dtype=float)
        if self.gamma_fn is None:
            return jnp.sqrt(jnp.clip(self.gamma_squared_fn(t), 0.0))
        return jnp.asarray(self.gamma_fn(t), dtype=t.dtype)

    def gamma_dgamma(self, t):
        t = jnp.asarray(t, dtype=float)
        if self.gamma_squared_fn is not None:
            half_square = lambda s: 0.5 * self.gamma_squared_fn(s)  # noqa: E731
        else:
            half_square = lambda s: 0.5 * self.gamma_fn(s) ** 2  # noqa: E731
        return _scalar_derivative(half_square, t)


def _scalar_derivative(fn: Callable, t: Array) -> Array:
    """d fn / dt for a scalar function, elementwise over any shape of t."""
    flat = jnp.ravel(t)
    out = jax.vmap(jax.grad(lambda s: jnp.asarray(fn(s), dtype=s.dtype)))(flat)
    return out.reshape(jnp.shape(t))


# ----------------------------------------------------------------------------------------------
# interpolants
# ----------------------------------------------------------------------------------------------


class AbstractInterpolant(eqx.Module):
    """x_t = alpha(t) x0 + beta(t) x1 + gamma(t) z with the independent coupling rho0 x rho1.

    Subclasses give `alpha`, `beta` and their exact derivatives `dalpha`, `dbeta`; the noise
    coefficient is the `gamma` field (an `AbstractGamma`). docs/math.md section 1.
    """

    gamma: eqx.AbstractVar[AbstractGamma]

    @abc.abstractmethod
    def alpha(self, t: ArrayLike) -> Array:
        """alpha(t), with alpha(0) = 1 and alpha(1) = 0."""

    @abc.abstractmethod
    def beta(self, t: ArrayLike) -> Array:
        """beta(t), with beta(0) = 0 and beta(1) = 1."""

    @abc.abstractmethod
    def dalpha(self, t: ArrayLike) -> Array:
        """alpha'(t)."""

    @abc.abstractmethod
    def dbeta(self, t: ArrayLike) -> Array:
        """beta'(t)."""

    # Where the fields are defined: [time_min, time_max]. A schedule whose velocity is singular
    # at an end (the variance-preserving diffusion schedule at t = 1) stops short of it.
    time_min: float = eqx.field(default=0.0, static=True, kw_only=True)
    time_max: float = eqx.field(default=1.0, static=True, kw_only=True)

    def dgamma(self, t: ArrayLike) -> Array:
        """gamma'(t) (0 where gamma = 0)."""
        return self.gamma.derivative(t)

    def gamma_dgamma(self, t: ArrayLike) -> Array:
        """gamma(t) gamma'(t) in closed form."""
        return self.gamma.gamma_dgamma(t)

    def interpolate(
        self, t: Float[ArrayLike, ""], x0: Float[Array, " d"], x1: Float[Array, " d"],
        z: Float[Array, " d"],
    ) -> Float[Array, " d"]:
        """x_t = alpha x0 + beta x1 + gamma z for one point."""
        return self.alpha(t) * x0 + self.beta(t) * x1 + self.gamma(t) * z

    def deterministic_time_derivative(
        self, t: Float[ArrayLike, ""], x0: Float[Array, " d"], x1: Float[Array, " d"]
    ) -> Float[Array, " d"]:
        """I_dot = alpha'(t) x0 + beta'(t) x1."""
        return self.dalpha(t) * x0 + self.dbeta(t) * x1

    def time_derivative(
        self, t: Float[ArrayLike, ""], x0: Float[Array, " d"], x1: Float[Array, " d"],
        z: Float[Array, " d"],
    ) -> Float[Array, " d"]:
        """d x_t / dt = alpha' x0 + beta' x1 + gamma' z, the regression target of the velocity."""
        return self.deterministic_time_derivative(t, x0, x1) + self.dgamma(t) * z

    def check_boundary_conditions(self, atol: float = 1e-6) -> None:
        """Raise `ValueError` naming the violated condition unless alpha(0)=1, alpha(1)=0,
        beta(0)=0, beta(1)=1 and gamma(0)=gamma(1)=0."""
        checks = {
            "alpha(0) = 1": (self.alpha(0.0), 1.0),
            "alpha(1) = 0": (self.alpha(1.0), 0.0),
            "beta(0) = 0": (self.beta(0.0), 0.0),
            "beta(1) = 1": (self.beta(1.0), 1.0),
            "gamma(0) = 0": (self.gamma(0.0), 0.0),
            "gamma(1) = 0": (self.gamma(1.0), 0.0),
        }
        for name, (value, target) in checks.items():
            value = float(value)
            if not abs(value - target) <= atol:
                raise ValueError(
                    f"{type(self).__name__} violates the boundary condition {name}: got {value:.6g}."
                    " See docs/math.md section 1."
                )

    @property
    def is_deterministic(self) -> bool:
        """True when gamma == 0."""
        return self.gamma.is_zero


class _LinearCoefficients(eqx.Module):
    """alpha = 1 - t, beta = t (shared by the linear, one-sided linear and mirror interpolants)."""

    def alpha(self, t):
        return 1.0 - jnp.asarray(t, dtype=float)

    def beta(self, t):
        return jnp.asarray(t, dtype=float)

    def dalpha(self, t):
        return -jnp.ones_like(jnp.asarray(t, dtype=float))

    def dbeta(self, t):
        return jnp.ones_like(jnp.asarray(t, dtype=float))


class _TrigonometricCoefficients(eqx.Module):
    """alpha = cos(pi t / 2), beta = sin(pi t / 2) (shared by the two- and one-sided forms)."""

    def alpha(self, t):
        return jnp.cos(_PI * jnp.asarray(t, dtype=float) / 2)

    def beta(self, t):
        return jnp.sin(_PI * jnp.asarray(t, dtype=float) / 2)

    def dalpha(self, t):
        return -_PI / 2 * jnp.sin(_PI * jnp.asarray(t, dtype=float) / 2)

    def dbeta(self, t):
        return _PI / 2 * jnp.cos(_PI * jnp.asarray(t, dtype=float) / 2)


class LinearInterpolant(_LinearCoefficients, AbstractInterpolant):
    """alpha = 1 - t, beta = t, with any gamma (default `ZeroGamma`)."""

    gamma: AbstractGamma = ZeroGamma()


class TrigonometricInterpolant(_TrigonometricCoefficients, AbstractInterpolant):
    """alpha = cos(pi t / 2), beta = sin(pi t / 2), with any gamma (default `ZeroGamma`)."""

    gamma: AbstractGamma = ZeroGamma()


class VPTrigonometricInterpolant(AbstractInterpolant):
    """Variance preserving with gamma: alpha = sqrt(1 - gamma^2) cos(pi t / 2),
    beta = sqrt(1 - gamma^2) sin(pi t / 2), so alpha^2 + beta^2 + gamma^2 = 1.

    Needs gamma < 1 on [0, 1] (`BrownianGamma(a)` with a < 4). Default gamma: `BrownianGamma(1.0)`.
    """

    gamma: AbstractGamma = BrownianGamma(1.0)

    def __check_init__(self):
        ts = jnp.linspace(0.0, 1.0, 101)
        if float(jnp.max(self.gamma(ts))) >= 1.0:
            raise ValueError(
                "VPTrigonometricInterpolant needs gamma(t) < 1 on [0, 1] so that sqrt(1 - gamma^2)"
                " is real."
            )

    def _root(self, t):
        return jnp.sqrt(1.0 - self.gamma(t) ** 2)

    def _droot(self, t):
        return -self.gamma_dgamma(t) / self._root(t)

    def alpha(self, t):
        t = jnp.asarray(t, dtype=float)
        return self._root(t) * jnp.cos(_PI * t / 2)

    def beta(self, t):
        t = jnp.asarray(t, dtype=float)
        return self._root(t) * jnp.sin(_PI * t / 2)

    def dalpha(self, t):
        t = jnp.asarray(t, dtype=float)
        return self._droot(t) * jnp.cos(_PI * t / 2) - self._root(t) * _PI / 2 * jnp.sin(_PI * t / 2)

    def dbeta(self, t):
        t = jnp.asarray(t, dtype=float)
        return self._droot(t) * jnp.sin(_PI * t / 2) + self._root(t) * _PI / 2 * jnp.cos(_PI * t / 2)


class EncoderDecoderInterpolant(AbstractInterpolant):
    """alpha = cos^2(pi t) on t < 1/2 (else 0), beta = cos^2(pi t) on t > 1/2 (else 0),
    gamma = sin^2(pi t): the base is encoded into pure noise at t = 1/2, then decoded."""

    gamma: AbstractGamma = SinSquaredGamma()

    def alpha(self, t):
        t = jnp.asarray(t, dtype=float)
        return jnp.where(t < 0.5, jnp.cos(_PI * t) ** 2, 0.0)

    def beta(self, t):
        t = jnp.asarray(t, dtype=float)
        return jnp.where(t > 0.5, jnp.cos(_PI * t) ** 2, 0.0)

    def dalpha(self, t):
        t = jnp.asarray(t, dtype=float)
        return jnp.where(t < 0.5, -2 * _PI * jnp.cos(_PI * t) * jnp.sin(_PI * t), 0.0)

    def dbeta(self, t):
        t = jnp.asarray(t, dtype=float)
        return jnp.where(t > 0.5, -2 * _PI * jnp.cos(_PI * t) * jnp.sin(_PI * t), 0.0)


class CustomInterpolant(AbstractInterpolant):
    """A user-defined interpolant from scalar callables alpha(t), beta(t) (and a gamma).

    Derivatives are exact, by automatic differentiation, unless `dalpha`/`dbeta` are given.
    The boundary conditions are checked at construction.

    **Arguments:**

    - `alpha_fn`, `beta_fn`: scalar functions of t.
    - `gamma`: an `AbstractGamma`, or a scalar callable (wrapped in `CustomGamma`); default 0.
    - `dalpha_fn`, `dbeta_fn`: optional closed-form derivatives.
    """

    alpha_fn: Callable = eqx.field(static=True)
    beta_fn: Callable = eqx.field(static=True)
    gamma: AbstractGamma = ZeroGamma()
    dalpha_fn: Callable | None = eqx.field(static=True, default=None)
    dbeta_fn: Callable | None = eqx.field(static=True, default=None)

    def __init__(self, alpha_fn, beta_fn, gamma=None, dalpha_fn=None, dbeta_fn=None, *,
                 time_min: float = 0.0, time_max: float = 1.0):
        for name, fn in (("alpha_fn", alpha_fn), ("beta_fn", beta_fn)):
            if not callable(fn):
                raise TypeError(f"CustomInterpolant: {name} must be a callable of t, got {fn!r}.")
        if gamma is None:
            gamma = ZeroGamma()
        elif not isinstance(gamma, AbstractGamma):
            if not callable(gamma):
                raise TypeError(f"CustomInterpolant: gamma must be callable, got {gamma!r}.")
            gamma = CustomGamma(gamma)
        self.alpha_fn = alpha_fn
        self.beta_fn = beta_fn
        self.gamma = gamma
        self.dalpha_fn = dalpha_fn
        self.dbeta_fn = dbeta_fn
        self.time_min = time_min
        self.time_max = time_max

    def __check_init__(self):
        self.check_boundary_conditions()

    def alpha(self, t):
        t = jnp.asarray(t, dtype=float)
        return jnp.asarray(self.alpha_fn(t), dtype=t.dtype)

    def beta(self, t):
        t = jnp.asarray(t, dtype=float)
        return jnp.asarray(self.beta_fn(t), dtype=t.dtype)

    def dalpha(self, t):
        t = jnp.asarray(t, dtype=float)
        if self.dalpha_fn is not None:
            return jnp.asarray(self.dalpha_fn(t), dtype=t.dtype)
        return _scalar_derivative(self.alpha_fn, t)

    def dbeta(self, t):
        t = jnp.asarray(t, dtype=float)
        if self.dbeta_fn is not None:
            return jnp.asarray(self.dbeta_fn(t), dtype=t.dtype)
        return _scalar_derivative(self.beta_fn, t)


# ----------------------------------------------------------------------------------------------
# one-sided interpolants (Gaussian base)
# ----------------------------------------------------------------------------------------------


class AbstractOneSidedInterpolant(AbstractInterpolant):
    """x_t = alpha(t) z + beta(t) x1 with z ~ N(0, I) (the base) and gamma == 0.

    The flow-matching / rectified-flow / diffusion case. Because the base is Gaussian the score
    follows from the velocity (docs/math.md section 2), see `score_from_velocity`.
    """

    gamma: AbstractGamma = eqx.field(default=ZeroGamma(), init=False)

    def score_from_velocity(
        self, t: Float[ArrayLike, ""], x: Float[Array, " d"], velocity: Float[Array, " d"]
    ) -> Float[Array, " d"]:
        """s(t, x) = (beta b - beta' x) / (alpha (alpha beta' - alpha' beta)), for t < 1.

        Singular at t = 1 (alpha = 0): samplers multiply it by an eps(t) that vanishes there or
        stop short of t = 1.
        """
        a, b, da, db = self.alpha(t), self.beta(t), self.dalpha(t), self.dbeta(t)
        return (b * velocity - db * x) / (a * (a * db - da * b))

    def eps_times_score(
        self, t: Float[ArrayLike, ""], x: Float[Array, " d"], velocity: Float[Array, " d"],
        eps: Float[ArrayLike, ""],
    ) -> Float[Array, " d"]:
        """eps(t) s(t, x), and 0 where eps = 0 (so eps(1) = 0 gives a finite drift at t = 1)."""
        a, b, da, db = self.alpha(t), self.beta(t), self.dalpha(t), self.dbeta(t)
        denominator = a * (a * db - da * b)
        safe = jnp.where(eps == 0, 1.0, denominator)
        return jnp.where(eps == 0, 0.0, eps * (b * velocity - db * x) / safe)


class OneSidedLinearInterpolant(_LinearCoefficients, AbstractOneSidedInterpolant):
    """x_t = (1 - t) z + t x1: flow matching / rectified flow. Score: s = (t b - x) / (1 - t)."""


class OneSidedTrigonometricInterpolant(_TrigonometricCoefficients, AbstractOneSidedInterpolant):
    """x_t = cos(pi t / 2) z + sin(pi t / 2) x1 (variance preserving: alpha^2 + beta^2 = 1)."""


class OneSidedVPInterpolant(AbstractOneSidedInterpolant):
    """The variance-preserving diffusion schedule (score-SDE's VP-SDE, linear noise rate from
    `beta_min` to `beta_max`) in this time convention: beta(t) = (exp(-B(1-t)/2) - c) / (1 - c),
    alpha = sqrt(1 - beta^2), with B(s) = beta_min s + (beta_max - beta_min) s^2 / 2 and
    c = exp(-B(1)/2) subtracted so that beta(0) = 0 exactly.

    alpha' is singular at t = 1 (as in every VP diffusion), so the fields are used on
    [0, time_max] with time_max = 1 - 1e-3 by default, the usual diffusion cut-off.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    time_max: float = eqx.field(default=1.0 - 1e-3, static=True, kw_only=True)

    def _integrated_rate(self, s):
        return self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2

    def _offset(self):
        return jnp.exp(-0.5 * self._integrated_rate(1.0))

    def beta(self, t):
        t = jnp.asarray(t, dtype=float)
        c = self._offset()
        return (jnp.exp(-0.5 * self._integrated_rate(1.0 - t)) - c) / (1.0 - c)

    def dbeta(self, t):
        t = jnp.asarray(t, dtype=float)
        c = self._offset()
        s = 1.0 - t
        rate = self.beta_min + (self.beta_max - self.beta_min) * s
        return 0.5 * rate * jnp.exp(-0.5 * self._integrated_rate(s)) / (1.0 - c)

    def alpha(self, t):
        return jnp.sqrt(jnp.clip(1.0 - self.beta(t) ** 2, 0.0))

    def dalpha(self, t):
        return -self.beta(t) * self.dbeta(t) / self.alpha(t)


# ----------------------------------------------------------------------------------------------
# mirror interpolant
# ----------------------------------------------------------------------------------------------


class MirrorInterpolant(_LinearCoefficients, AbstractInterpolant):
    """x_t = x1 + gamma(t) z with rho0 = rho1 (x0 = x1): a denoising interpolant.

    Its velocity is b = gamma' eta_z = -gamma gamma' s; it is learned through the score or the
    denoiser. It has no tractable base density, so it gives fields, not an `SIFlow` likelihood.
    Default gamma: `BrownianGamma(1.0)`.
    """

    gamma: AbstractGamma = BrownianGamma(1.0)

    def interpolate(self, t, x0, x1, z):
        return x1 + self.gamma(t) * z

    def deterministic_time_derivative(self, t, x0, x1):
        return jnp.zeros_like(x1)
