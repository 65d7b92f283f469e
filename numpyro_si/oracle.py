"""Closed-form Gaussian-mixture fields, the ground truth for tests and benchmarks (docs/math.md section 6).

With rho0 = sum_i p_i N(m_i, C_i), rho1 = sum_j q_j N(mu_j, S_j), the independent coupling and any
spatially linear interpolant x_t = alpha x0 + beta x1 + gamma z, every time marginal is a Gaussian
mixture with components (i, j):

    M_ij(t) = alpha m_i + beta mu_j,   Sigma_ij(t) = alpha^2 C_i + beta^2 S_j + gamma^2 I

so the density, the score, the velocity b and its parts v and eta_z are exact.

Example:

```python
import jax, numpyro_si as nsi
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle

target = GaussianMixture.random(jax.random.key(0), dim=2, n_components=3)
oracle = GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), target)
flow = nsi.SIFlow(oracle.interpolant, oracle.velocity, base=oracle.base_distribution())
```
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._interpolants import AbstractInterpolant, AbstractOneSidedInterpolant, MirrorInterpolant

__all__ = ["GaussianMixture", "GaussianMixtureOracle"]

# A Python float, not a jnp array: an array made at import time would be float32 (unless x64 was on
# at import) and would cap the oracle's log densities at float32 accuracy under `jax.enable_x64`.
_LOG_2PI = math.log(2 * math.pi)


class GaussianMixture(eqx.Module):
    """sum_k weights[k] N(means[k], covariances[k]) in R^d.

    **Arguments:**

    - `weights`: `(K,)`, positive, normalised on construction.
    - `means`: `(K, d)`.
    - `covariances`: `(K, d, d)`, symmetric positive definite.
    """

    weights: Float[Array, " K"]
    means: Float[Array, "K d"]
    covariances: Float[Array, "K d d"]

    def __init__(self, weights, means, covariances):
        weights = jnp.asarray(weights, dtype=float)
        means = jnp.asarray(means, dtype=float)
        covariances = jnp.asarray(covariances, dtype=float)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {means.shape}.")
        k, d = means.shape
        if weights.shape != (k,):
            raise ValueError(f"weights must have shape ({k},), got {weights.shape}.")
        if covariances.shape != (k, d, d):
            raise ValueError(f"covariances must have shape ({k}, {d}, {d}), got {covariances.shape}.")
        self.weights = weights / jnp.sum(weights)
        self.means = means
        self.covariances = covariances

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @classmethod
    def standard_normal(cls, dim: int) -> GaussianMixture:
        """N(0, I_d) as a one-component mixture (the one-sided base)."""
        return cls(jnp.ones(1), jnp.zeros((1, dim)), jnp.eye(dim)[None])

    @classmethod
    def random(
        cls, key: PRNGKeyArray, dim: int, n_components: int, *, spread: float = 3.0,
        scale: float = 0.5,
    ) -> GaussianMixture:
        """A random mixture: means ~ N(0, spread^2 I), covariances scale^2 (I + W W^T / d)/2 with
        W Gaussian, weights Dirichlet(2)."""
        k_mean, k_cov, k_weight = jax.random.split(key, 3)
        means = spread * jax.random.normal(k_mean, (n_components, dim))
        w = jax.random.normal(k_cov, (n_components, dim, dim))
        covs = scale**2 * 0.5 * (jnp.eye(dim) + w @ jnp.swapaxes(w, -1, -2) / dim)
        weights = jax.random.dirichlet(k_weight, 2.0 * jnp.ones(n_components))
        return cls(weights, means, covs)

    def log_prob(self, x: Float[Array, "*batch d"]) -> Float[Array, "*batch"]:
        """Exact log density, any leading batch shape."""
        return _mixture_log_prob(x, jnp.log(self.weights), self.means, self.covariances)

    def sample(self, key: PRNGKeyArray, n: int) -> tuple[Float[Array, "n d"], Array]:
        """n draws and their component labels."""
        k_label, k_noise = jax.random.split(key)
        labels = jax.random.choice(k_label, self.weights.shape[0], (n,), p=self.weights)
        chol = _cholesky(self.covariances)
        noise = jax.random.normal(k_noise, (n, self.dim), dtype=self.means.dtype)
        x = self.means[labels] + jnp.einsum("nij,nj->ni", chol[labels], noise)
        return x, labels

    def responsibilities(self, x: Float[Array, "*batch d"]) -> Float[Array, "*batch K"]:
        """Posterior component probabilities p(k | x)."""
        log_joint = _component_log_probs(x, jnp.log(self.weights), self.means, self.covariances)
        return jax.nn.softmax(log_joint, axis=-1)

    def to_numpyro(self) -> dist.Distribution:
        """The same mixture as a NumPyro distribution with event shape (d,)."""
        components = dist.MultivariateNormal(self.means, covariance_matrix=self.covariances)
        if self.weights.shape[0] == 1:
            return dist.MultivariateNormal(self.means[0], covariance_matrix=self.covariances[0])
        return dist.MixtureSameFamily(dist.Categorical(probs=self.weights), components)

    def entropy_monte_carlo(self, key: PRNGKeyArray, n: int) -> tuple[Array, Array]:
        """Monte Carlo estimate of the entropy -E log rho(x) and its standard error."""
        x, _ = self.sample(key, n)
        nll = -self.log_prob(x)
        return jnp.mean(nll), jnp.std(nll) / jnp.sqrt(n)


def _cholesky(a: Float[Array, "*batch d d"]) -> Float[Array, "*batch d d"]:
    """Lower Cholesky factor, column by column in plain array operations.

    Not `jnp.linalg.cholesky`: the fields below run inside vmapped ODE/SDE solver loops, and on
    XLA:CPU (jaxlib 0.10) a loop body with several batched LAPACK calls that may run at once can
    deadlock the CPU thread pool (the call never returns, no CPU used), e.g. a log_prob of 100
    points at d = 8. Plain operations cannot. A matrix that is not positive definite gives NaN,
    as LAPACK does.
    """
    d = a.shape[-1]
    index = jnp.arange(d)

    def column(j, factor):
        # factor holds columns 0..j-1; v_i = a_ij - sum_k<j L_ik L_jk
        v = a[..., :, j] - jnp.einsum("...ik,...k->...i", factor, factor[..., j, :])
        diagonal = jnp.sqrt(v[..., j])[..., None]
        new = jnp.where(index > j, v / diagonal, jnp.where(index == j, diagonal, 0.0))
        return factor.at[..., :, j].set(new)

    return jax.lax.fori_loop(0, d, column, jnp.zeros_like(a))


def _solve_lower(
    factor: Float[Array, "*batch d d"], b: Float[Array, "*batch d"]
) -> Float[Array, "*batch d"]:
    """L^-1 b by forward substitution (plain operations; see `_cholesky`)."""

    def row(i, x):
        r = b[..., i] - jnp.einsum("...k,...k->...", factor[..., i, :], x)
        return x.at[..., i].set(r / factor[..., i, i])

    return jax.lax.fori_loop(0, b.shape[-1], row, jnp.zeros_like(b))


def _solve_upper_transposed(
    factor: Float[Array, "*batch d d"], b: Float[Array, "*batch d"]
) -> Float[Array, "*batch d"]:
    """L^-T b by back substitution (plain operations; see `_cholesky`)."""
    d = b.shape[-1]

    def row(k, x):
        i = d - 1 - k
        r = b[..., i] - jnp.einsum("...k,...k->...", factor[..., :, i], x)
        return x.at[..., i].set(r / factor[..., i, i])

    return jax.lax.fori_loop(0, d, row, jnp.zeros_like(b))


def _component_terms(x, log_weights, means, covariances):
    """log w_k + log N(x; m_k, C_k), shape (*batch, K), and C_k^-1 (x - m_k), shape
    (*batch, K, d), from one Cholesky factor per component."""
    chol = _cholesky(covariances)  # (K, d, d)
    diff = x[..., None, :] - means  # (*batch, K, d)
    d = means.shape[-1]
    chol = jnp.broadcast_to(chol, diff.shape[:-1] + (d, d))
    solved = _solve_lower(chol, diff)
    maha = jnp.sum(solved**2, axis=-1)
    log_det = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    log_probs = log_weights - 0.5 * (maha + log_det + d * _LOG_2PI)
    return log_probs, _solve_upper_transposed(chol, solved)


def _component_log_probs(x, log_weights, means, covariances):
    """log w_k + log N(x; m_k, C_k), shape (*batch, K)."""
    return _component_terms(x, log_weights, means, covariances)[0]


def _mixture_log_prob(x, log_weights, means, covariances):
    return jax.nn.logsumexp(_component_log_probs(x, log_weights, means, covariances), axis=-1)


class GaussianMixtureOracle(eqx.Module):
    """Exact fields of a spatially linear interpolant between two Gaussian mixtures.

    **Arguments:**

    - `interpolant`: any `AbstractInterpolant` with the independent coupling (not a mirror).
    - `target`: rho1, a `GaussianMixture`.
    - `base`: rho0, a `GaussianMixture`; must be omitted (standard normal) for a one-sided
      interpolant, whose base is N(0, I) by definition.

    All fields act on one unbatched point: `velocity(t, x)`, `score(t, x)`, `log_density(t, x)`,
    `v(t, x)`, `denoiser(t, x)`.
    """

    interpolant: AbstractInterpolant
    target: GaussianMixture
    base: GaussianMixture

    def __init__(self, interpolant, target, base=None):
        if isinstance(interpolant, MirrorInterpolant):
            raise ValueError("The Gaussian-mixture oracle needs the independent coupling, not a mirror.")
        if isinstance(interpolant, AbstractOneSidedInterpolant):
            if base is not None:
                raise ValueError("A one-sided interpolant has the standard-normal base; omit `base`.")
            base = GaussianMixture.standard_normal(target.dim)
        elif base is None:
            base = GaussianMixture.standard_normal(target.dim)
        if base.dim != target.dim:
            raise ValueError(f"base has dimension {base.dim} but target has {target.dim}.")
        self.interpolant = interpolant
        self.target = target
        self.base = base

    @property
    def dim(self) -> int:
        return self.target.dim

    def base_distribution(self) -> dist.Distribution:
        """rho0 as a NumPyro distribution (for `SIFlow(..., base=...)`)."""
        return self.base.to_numpyro()

    def _pairs(self, t):
        """Means (P, d), covariances (P, d, d), log weights (P,) and the time-derivative pieces
        of the P = I*J Gaussian components of rho_t."""
        it = self.interpolant
        a, b, g = it.alpha(t), it.beta(t), it.gamma(t)
        da, db, ggd = it.dalpha(t), it.dbeta(t), it.gamma_dgamma(t)
        d = self.dim
        eye = jnp.eye(d, dtype=self.target.means.dtype)
        m, c = self.base.means, self.base.covariances  # (I, d), (I, d, d)
        mu, s = self.target.means, self.target.covariances  # (J, d), (J, d, d)
        mean = a * m[:, None, :] + b * mu[None, :, :]
        cov = a**2 * c[:, None] + b**2 * s[None, :] + g**2 * eye
        dmean = da * m[:, None, :] + db * mu[None, :, :]
        half_dcov = a * da * c[:, None] + b * db * s[None, :] + ggd * eye
        log_w = jnp.log(self.base.weights)[:, None] + jnp.log(self.target.weights)[None, :]
        n_pairs = m.shape[0] * mu.shape[0]
        return (
            mean.reshape(n_pairs, d),
            cov.reshape(n_pairs, d, d),
            log_w.reshape(n_pairs),
            dmean.reshape(n_pairs, d),
            half_dcov.reshape(n_pairs, d, d),
        )

    def log_density(self, t: Float[ArrayLike, ""], x: Float[Array, " d"]) -> Float[Array, ""]:
        """log rho_t(x)."""
        mean, cov, log_w, _, _ = self._pairs(t)
        return _mixture_log_prob(x, log_w, mean, cov)

    def score(self, t: Float[ArrayLike, ""], x: Float[Array, " d"]) -> Float[Array, " d"]:
        """s(t, x) = grad_x log rho_t(x)."""
        mean, cov, log_w, _, _ = self._pairs(t)
        log_probs, precision_diff = _component_terms(x, log_w, mean, cov)
        return -jnp.sum(jax.nn.softmax(log_probs)[:, None] * precision_diff, axis=0)

    def velocity(self, t: Float[ArrayLike, ""], x: Float[Array, " d"]) -> Float[Array, " d"]:
        """b(t, x) = E[alpha' x0 + beta' x1 + gamma' z | x_t = x] (docs/math.md section 6)."""
        mean, cov, log_w, dmean, half_dcov = self._pairs(t)
        log_probs, precision_diff = _component_terms(x, log_w, mean, cov)
        per_pair = dmean + jnp.einsum("kij,kj->ki", half_dcov, precision_diff)
        return jnp.sum(jax.nn.softmax(log_probs)[:, None] * per_pair, axis=0)

    def denoiser(self, t: Float[ArrayLike, ""], x: Float[Array, " d"]) -> Float[Array, " d"]:
        """eta_z(t, x) = E[z | x_t = x] = -gamma s."""
        return -self.interpolant.gamma(t) * self.score(t, x)

    def v(self, t: Float[ArrayLike, ""], x: Float[Array, " d"]) -> Float[Array, " d"]:
        """v(t, x) = E[alpha' x0 + beta' x1 | x_t = x] = b + gamma gamma' s."""
        return self.velocity(t, x) + self.interpolant.gamma_dgamma(t) * self.score(t, x)

    def sample_marginal(self, key: PRNGKeyArray, t: float, n: int) -> Float[Array, "n d"]:
        """n exact draws of x_t."""
        k0, k1, kz = jax.random.split(key, 3)
        x0, _ = self.base.sample(k0, n)
        x1, _ = self.target.sample(k1, n)
        z = jax.random.normal(kz, x0.shape, dtype=x0.dtype)
        return jax.vmap(self.interpolant.interpolate, in_axes=(None, 0, 0, 0))(t, x0, x1, z)
