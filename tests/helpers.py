"""Helpers shared by test modules in different folders (import as `from helpers import ...`; pytest
puts `tests/` on the path). Helpers used by one folder only live in its `__init__.py`; fixtures
live in `conftest.py`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import numpyro_si as nsi
from numpyro_si.oracle import GaussianMixture


def fixed_mixture(seed, dim, n_components):
    """A fixed random Gaussian mixture built with NumPy (no JAX compilation): means
    ~ N(0, 9 I), covariances (I + W W^T / d) / 8, weights Dirichlet(2)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_components, dim, dim))
    covs = 0.25 * 0.5 * (np.eye(dim) + w @ np.swapaxes(w, -1, -2) / dim)
    means = 3.0 * rng.standard_normal((n_components, dim))
    return GaussianMixture(rng.dirichlet(2.0 * np.ones(n_components)), means, covs)


def euler_maruyama_reference(drift, eps, x, key, t0, t1, n_steps):
    """A plain Euler-Maruyama loop, an independent reference for the diffrax SDE solve:
    y <- y + h drift(t, y) + sqrt(2 eps(t) |h|) noise at t = t0 + i h, h = (t1 - t0) / n_steps,
    one key of `split(key, n_steps)` per step."""
    h = (t1 - t0) / n_steps

    def step(y, inputs):
        i, k = inputs
        t = t0 + i * h
        noise = jax.random.normal(k, y.shape, dtype=y.dtype)
        return y + h * drift(t, y) + jnp.sqrt(2 * eps(t) * abs(h)) * noise, None

    keys = jax.random.split(key, n_steps)
    y, _ = jax.lax.scan(step, jnp.asarray(x), (jnp.arange(n_steps), keys))
    return y


def toy_conditional_flow(dim=2):
    """A cheap `ConditionalSIFlow` (velocity -x + context, context of dimension `dim`), for the
    refusals of entry points that need one density."""
    return nsi.ConditionalSIFlow(
        nsi.OneSidedLinearInterpolant(), lambda t, x, context: context - x, context_dim=dim,
        dim=dim,
    )


def mean_se(values):
    """The mean of `values` and its standard error, in float64."""
    values = np.asarray(values, dtype=np.float64)
    return values.mean(), values.std(ddof=1) / np.sqrt(values.size)


def array_leaves(tree):
    """The array leaves of a pytree (an Equinox module, a flow), in tree order."""
    return [leaf for leaf in jax.tree.leaves(tree) if eqx.is_array(leaf)]
