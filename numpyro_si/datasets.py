"""Built-in two-dimensional toy data sets, the usual benchmarks for flows and interpolants.

Every generator has the signature `name(key, n, ..., *, dtype=None) -> Float[Array, "n 2"]`, is
pure JAX (no downloads, no NumPy randomness), returns the same draws for the same key, and
returns JAX's default float dtype (float32, or float64 under `jax.enable_x64(True)`) unless
`dtype` is given. Each generator is jit-compiled once per `(n, dtype)`; `n` must be a Python int
(pass it as a static argument, `static_argnums=1`, when calling from inside your own `jax.jit`).

Two of them come with an exact density:

- `checkerboard`: uniform on 8 squares, `checkerboard_log_prob` and
  `CHECKERBOARD_ENTROPY = log 32`.
- `gaussian_mixture_2d`: `gaussian_mixture_2d_oracle()` is the `GaussianMixture` it samples
  from, with `log_prob` and `entropy_monte_carlo`.

Example:

```python
import jax
from numpyro_si import datasets

x = datasets.load("checkerboard", jax.random.key(0), 10_000)  # (10000, 2)
nll = -datasets.checkerboard_log_prob(x).mean()  # == CHECKERBOARD_ENTROPY
```
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, DTypeLike, Float, PRNGKeyArray

from .oracle import GaussianMixture

__all__ = [
    "CHECKERBOARD_ENTROPY",
    "DATASETS",
    "checkerboard",
    "checkerboard_log_prob",
    "eight_gaussians",
    "gaussian_mixture_2d",
    "gaussian_mixture_2d_oracle",
    "load",
    "pinwheel",
    "two_moons",
]

CHECKERBOARD_ENTROPY: float = math.log(32.0)
"""Exact differential entropy of `checkerboard`, in nats: uniform density 1/32 on area 32."""


def _check_n(n) -> int:
    if isinstance(n, bool):
        raise ValueError(f"n must be a positive int, got {n!r}.")
    try:
        n_int = operator.index(n)
    except TypeError:
        raise ValueError(f"n must be a positive int, got {n!r} ({type(n).__name__}).") from None
    if n_int <= 0:
        raise ValueError(f"n must be a positive int, got {n_int}.")
    return n_int


def _float_dtype(dtype: DTypeLike | None):
    """The requested float dtype, or JAX's default one (float64 only with x64 enabled)."""
    dtype = jnp.dtype(float) if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype}.")
    return jax.dtypes.canonicalize_dtype(dtype)


# Each generator validates its arguments in Python and then calls one jitted kernel, compiled once
# per (n, dtype); float parameters (noise, scale, std) are traced, so changing them is free.
_kernel = functools.partial(jax.jit, static_argnames=("n", "dtype"))


# ----------------------------------------------------------------------------------------------
# generators
# ----------------------------------------------------------------------------------------------


def two_moons(
    key: PRNGKeyArray, n: int, noise: float = 0.1, *, dtype: DTypeLike | None = None
) -> Float[Array, "n 2"]:
    """Two interleaving half circles, as scikit-learn's `make_moons`, centred and scaled by 2.

    The upper moon is (cos t, sin t) and the lower one (1 - cos t, 1/2 - sin t), with t uniform
    on [0, pi] (rather than scikit-learn's evenly spaced grid), Gaussian noise of standard
    deviation `noise` added in those units, then the whole set is shifted by -(1/2, 1/4) (the
    exact noise-free mean) and multiplied by 2. The result lies roughly in [-3, 3] x [-2, 2].
    As in scikit-learn, `n // 2` points are on the upper moon and the rest on the lower one; the
    rows are randomly permuted.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `n`: number of points, a positive int.
    - `noise`: noise standard deviation before the factor 2 (scikit-learn's `noise`).
    - `dtype`: float dtype of the result; JAX's default float dtype if `None`.

    **Returns:**

    An array of shape `(n, 2)`.
    """
    return _two_moons(key, noise, n=_check_n(n), dtype=_float_dtype(dtype))


@_kernel
def _two_moons(key, noise, *, n, dtype):
    k_t, k_noise, k_perm = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, (n,), dtype=dtype, minval=0.0, maxval=jnp.pi)
    upper = jnp.arange(n) < n // 2
    x = jnp.where(upper, jnp.cos(t), 1.0 - jnp.cos(t))
    y = jnp.where(upper, jnp.sin(t), 0.5 - jnp.sin(t))
    data = jnp.stack([x, y], axis=-1)
    data = data + noise * jax.random.normal(k_noise, (n, 2), dtype=dtype)
    data = 2.0 * (data - jnp.asarray([0.5, 0.25], dtype=dtype))
    return jax.random.permutation(k_perm, data, axis=0).astype(dtype)


def checkerboard(
    key: PRNGKeyArray, n: int, *, dtype: DTypeLike | None = None
) -> Float[Array, "n 2"]:
    """FFJORD's checkerboard: uniform on 8 of the 16 squares of side 2 tiling [-4, 4)^2.

    Exactly FFJORD's generator (`toy_data.py`), with JAX randomness:

        x1 = U * 4 - 2;  x2_ = U' - B * 2, B ~ Bernoulli(1/2);  x2 = x2_ + floor(x1) % 2
        data = [x1, x2] * 2

    The occupied ("dark") squares are [2i, 2i+2) x [2j, 2j+2) with i, j in {-2, -1, 0, 1} and
    i + j even. The density is 1/32 on them (see `checkerboard_log_prob`) and the entropy is
    `CHECKERBOARD_ENTROPY` = log 32 nats.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `n`: number of points, a positive int.
    - `dtype`: float dtype of the result; JAX's default float dtype if `None`.

    **Returns:**

    An array of shape `(n, 2)`.
    """
    return _checkerboard(key, n=_check_n(n), dtype=_float_dtype(dtype))


@_kernel
def _checkerboard(key, *, n, dtype):
    k1, k2, k3 = jax.random.split(key, 3)
    x1 = jax.random.uniform(k1, (n,), dtype=dtype) * 4 - 2
    x2_ = jax.random.uniform(k2, (n,), dtype=dtype) - jax.random.randint(k3, (n,), 0, 2) * 2
    x2 = x2_ + jnp.floor(x1) % 2
    return (jnp.stack([x1, x2], axis=-1) * 2).astype(dtype)


@jax.jit
def checkerboard_log_prob(x: Float[ArrayLike, "*batch 2"]) -> Float[Array, "*batch"]:
    """Exact log density of `checkerboard`: log(1/32) on the 8 dark squares, -inf elsewhere.

    Squares are half open, [2i, 2i+2) x [2j, 2j+2), as the generator's draws are.

    **Arguments:**

    - `x`: points, shape `(*batch, 2)`.

    **Returns:**

    The log density, shape `(*batch,)`, in `x`'s float dtype.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(float)
    if x.shape[-1:] != (2,):
        raise ValueError(f"x must have shape (*batch, 2), got {x.shape}.")
    cell = jnp.floor(x / 2)
    inside = jnp.all((x >= -4) & (x < 4), axis=-1)
    dark = (cell[..., 0] + cell[..., 1]) % 2 == 0
    return jnp.where(inside & dark, -CHECKERBOARD_ENTROPY, -jnp.inf).astype(x.dtype)


_SQRT_HALF = 1.0 / math.sqrt(2.0)
_EIGHT_DIRECTIONS = (
    (1.0, 0.0),
    (-1.0, 0.0),
    (0.0, 1.0),
    (0.0, -1.0),
    (_SQRT_HALF, _SQRT_HALF),
    (_SQRT_HALF, -_SQRT_HALF),
    (-_SQRT_HALF, _SQRT_HALF),
    (-_SQRT_HALF, -_SQRT_HALF),
)


def eight_gaussians(
    key: PRNGKeyArray,
    n: int,
    scale: float = 4.0,
    std: float = 0.5,
    *,
    dtype: DTypeLike | None = None,
) -> Float[Array, "n 2"]:
    """Equal mixture of 8 isotropic Gaussians with centres evenly spaced on a circle.

    The centres are `scale` times (+-1, 0), (0, +-1), (+-1/sqrt 2, +-1/sqrt 2) (FFJORD's order),
    each component has standard deviation `std`, and the component of each point is drawn
    uniformly. The defaults are FFJORD's `8gaussians` *before* its final division by 1.414, so
    the modes sit at radius 4 and are well separated (adjacent centres 3.06 apart, about 6
    standard deviations); FFJORD's exact output is `eight_gaussians(key, n, 4 / 1.414,
    0.5 / 1.414)`.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `n`: number of points, a positive int.
    - `scale`: radius of the circle of centres.
    - `std`: standard deviation of every component.
    - `dtype`: float dtype of the result; JAX's default float dtype if `None`.

    **Returns:**

    An array of shape `(n, 2)`.
    """
    return _eight_gaussians(key, scale, std, n=_check_n(n), dtype=_float_dtype(dtype))


@_kernel
def _eight_gaussians(key, scale, std, *, n, dtype):
    k_label, k_noise = jax.random.split(key)
    centres = scale * jnp.asarray(_EIGHT_DIRECTIONS, dtype=dtype)
    labels = jax.random.randint(k_label, (n,), 0, 8)
    noise = std * jax.random.normal(k_noise, (n, 2), dtype=dtype)
    return (centres[labels] + noise).astype(dtype)


def pinwheel(key: PRNGKeyArray, n: int, *, dtype: DTypeLike | None = None) -> Float[Array, "n 2"]:
    """FFJORD's pinwheel: 5 curved arms, each a Gaussian blob pushed through a radius-dependent
    rotation.

    For arm k, f = (r, s) with r ~ N(1, 0.3^2) (radial_std 0.3) and s ~ N(0, 0.1^2)
    (tangential_std 0.1); the angle is 2 pi k / 5 + 0.25 exp(r) (rate 0.25) and the point is
    2 * f R(angle) as a row vector, as in FFJORD (including its final factor 2), so the data
    lie roughly in [-4, 4]^2. Arm k gets the points with index i % 5 == k (FFJORD's balanced
    classes; unlike FFJORD, exactly `n` points are returned when 5 does not divide `n`), and the
    rows are randomly permuted.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `n`: number of points, a positive int.
    - `dtype`: float dtype of the result; JAX's default float dtype if `None`.

    **Returns:**

    An array of shape `(n, 2)`.
    """
    return _pinwheel(key, n=_check_n(n), dtype=_float_dtype(dtype))


@_kernel
def _pinwheel(key, *, n, dtype):
    radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
    k_feat, k_perm = jax.random.split(key)
    features = jax.random.normal(k_feat, (n, 2), dtype=dtype) * jnp.asarray(
        [radial_std, tangential_std], dtype=dtype
    )
    features = features.at[:, 0].add(1.0)
    labels = jnp.arange(n) % num_classes
    angles = 2 * jnp.pi * labels.astype(dtype) / num_classes + rate * jnp.exp(features[:, 0])
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    # Row vector f times [[cos, -sin], [sin, cos]], FFJORD's einsum("ti,tij->tj").
    x = features[:, 0] * cos + features[:, 1] * sin
    y = -features[:, 0] * sin + features[:, 1] * cos
    data = 2 * jnp.stack([x, y], axis=-1)
    return jax.random.permutation(k_perm, data, axis=0).astype(dtype)


_GM_WEIGHTS = (0.3, 0.25, 0.25, 0.2)
_GM_MEANS = ((-3.0, -2.0), (3.0, -2.0), (0.5, 3.0), (-3.5, 2.5))
_GM_COVARIANCES = (
    ((1.0, 0.6), (0.6, 0.5)),
    ((0.5, -0.3), (-0.3, 0.8)),
    ((1.2, 0.0), (0.0, 0.2)),
    ((0.2, 0.1), (0.1, 0.8)),
)


def gaussian_mixture_2d_oracle() -> GaussianMixture:
    """The fixed 2-d Gaussian mixture that `gaussian_mixture_2d` samples from.

    Four well-separated anisotropic components: weights (0.3, 0.25, 0.25, 0.2), means
    (-3, -2), (3, -2), (0.5, 3), (-3.5, 2.5), and correlated covariances with standard
    deviations between ~0.45 and ~1.1. Use its `log_prob` for the exact log density and
    `entropy_monte_carlo` for the entropy.

    **Returns:**

    A `numpyro_si.oracle.GaussianMixture` in JAX's default float dtype.
    """
    return GaussianMixture(_GM_WEIGHTS, _GM_MEANS, _GM_COVARIANCES)


def gaussian_mixture_2d(
    key: PRNGKeyArray, n: int, *, dtype: DTypeLike | None = None
) -> Float[Array, "n 2"]:
    """Draws from the fixed mixture `gaussian_mixture_2d_oracle()`.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `n`: number of points, a positive int.
    - `dtype`: float dtype of the result; JAX's default float dtype if `None`.

    **Returns:**

    An array of shape `(n, 2)`.
    """
    return _gaussian_mixture_2d(key, n=_check_n(n), dtype=_float_dtype(dtype))


@_kernel
def _gaussian_mixture_2d(key, *, n, dtype):
    x, _ = gaussian_mixture_2d_oracle().sample(key, n)
    return x.astype(dtype)


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------

DATASETS: dict[str, Callable[..., Float[Array, "n 2"]]] = {
    "two_moons": two_moons,
    "checkerboard": checkerboard,
    "eight_gaussians": eight_gaussians,
    "pinwheel": pinwheel,
    "gaussian_mixture_2d": gaussian_mixture_2d,
}
"""Name -> generator, for every built-in data set."""


def load(name: str, key: PRNGKeyArray, n: int, **kwargs) -> Float[Array, "n 2"]:
    """`n` draws from the built-in data set `name`.

    **Arguments:**

    - `name`: a key of `DATASETS`.
    - `key`: a JAX PRNG key.
    - `n`: number of points, a positive int.
    - `**kwargs`: passed on to the generator (e.g. `dtype`, or `noise` for `two_moons`).

    **Returns:**

    An array of shape `(n, 2)`.

    **Raises:**

    `ValueError` for an unknown `name` (the message lists the valid ones) or an `n` that is not a
    positive int.
    """
    try:
        generator = DATASETS[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(DATASETS))
        raise ValueError(f"Unknown data set {name!r}; valid names are: {valid}.") from None
    return generator(key, _check_n(n), **kwargs)
