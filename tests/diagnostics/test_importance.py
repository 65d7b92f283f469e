"""Importance diagnostics against unnormalised targets (docs/math.md section 5): log Z, reverse KL,
ESS and Pareto k, NumPyro-model targets and the forward cross-entropy.

The flows are exact oracle flows (closed-form velocity, docs/math.md section 6) whose density q is
known in closed form, so every estimate has an exact answer. Statistical assertions compare an
estimate with its own standard error (fixed keys, 3 se) and require that se to be small.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from helpers import toy_conditional_flow

import numpyro_si as nsi
from numpyro_si.diagnostics import (
    forward_cross_entropy,
    importance_diagnostics,
    log_target_from_model,
)
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle

LOG_SCALE = math.log(7.0)  # the target is 7 times a normalised density: log Z = log 7


def widened(mixture, factor):
    return GaussianMixture(mixture.weights, mixture.means, factor * mixture.covariances)


def oracle_flow(target, **settings):
    """The exact one-sided flow to `target`: its density is target.log_prob (up to the solver).
    `settings`: fields of its `SolverSettings` (default rtol = atol = 1e-8)."""
    oracle = GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), target)
    settings = nsi.SolverSettings(**(dict(rtol=1e-8, atol=1e-8) | settings))
    return nsi.SIFlow(oracle.interpolant, oracle.velocity, dim=target.dim, settings=settings)


def test_log_z_of_a_scaled_target(x64):
    """q is the target with covariances widened by 1.5 (bounded weights): log Z = log 7 within
    3 se, the reverse KL matches KL(q || pi) from exact densities, and Pareto k is small."""
    target = GaussianMixture.random(jax.random.key(0), 2, 3)
    proposal = widened(target, 1.5)
    flow = oracle_flow(proposal)
    log_target = lambda x: target.log_prob(x) + LOG_SCALE  # noqa: E731 (batched)
    result = importance_diagnostics(jax.random.key(1), flow, log_target, n=1000)

    assert result.n == 1000 and result.log_weights.shape == (1000,)
    assert result.samples.shape == (1000, 2)
    samples = result.samples
    exact_log_weights = target.log_prob(samples) + LOG_SCALE - proposal.log_prob(samples)
    np.testing.assert_allclose(result.log_weights, exact_log_weights, atol=1e-5)

    assert 0 < result.log_z_se < 0.05
    assert abs(result.log_z - LOG_SCALE) < 3 * result.log_z_se, result

    draws, _ = proposal.sample(jax.random.key(2), 100_000)
    log_ratio = proposal.log_prob(draws) - target.log_prob(draws)
    true_kl, true_kl_se = float(log_ratio.mean()), float(log_ratio.std() / math.sqrt(100_000))
    se = math.hypot(result.reverse_kl_se, true_kl_se)
    assert se < 0.2 * true_kl
    assert abs(result.reverse_kl - true_kl) < 3 * se, (result.reverse_kl, true_kl, se)
    assert result.elbo == pytest.approx(result.log_z - result.reverse_kl)
    assert result.elbo < result.log_z  # Jensen

    weights = np.exp(np.asarray(result.log_weights))
    assert result.ess == pytest.approx(weights.sum() ** 2 / (weights**2).sum(), rel=1e-10)
    assert result.ess_fraction == pytest.approx(result.ess / 1000)
    assert result.ess_fraction > 0.5
    assert result.pareto_k < 0.5

    # an SDE-sampling flow is scored by its ODE model (the density log_prob evaluates)
    sde = importance_diagnostics(
        jax.random.key(1), flow.with_settings(sampler="sde", eps=1.0), log_target, n=1000
    )
    assert sde.log_z == pytest.approx(result.log_z, abs=1e-8)


def zero_velocity_flow():
    """x_t = x0 for all t: the flow's density is its N(0, I) base."""
    return nsi.SIFlow(nsi.OneSidedLinearInterpolant(), lambda t, x: jnp.zeros_like(x), dim=2)


def test_pareto_k_flags_a_too_narrow_flow(x64):
    """q = N(0, I) against pi = N(0, 25 I): the weights exp(0.48 |y|^2) have a Pareto tail with
    k = 0.96, infinite variance; PSIS must say so and the ESS collapses."""
    log_target = lambda x: dist.Normal(0.0, 5.0).log_prob(x).sum(-1)  # noqa: E731
    result = importance_diagnostics(jax.random.key(3), zero_velocity_flow(), log_target, n=2000)
    assert result.pareto_k > 0.7
    assert result.ess_fraction < 0.05


def observed_model(y):
    loc = numpyro.sample("loc", dist.Normal(1.0, 2.0))
    numpyro.sample("scale", dist.LogNormal(0.0, 0.5))
    numpyro.sample("y", dist.Normal(loc, 1.0), obs=y)


OBSERVED = np.array([0.5, 1.5, 2.2])  # made a JAX array inside the float64 tests


def test_model_log_density_in_unconstrained_space(x64):
    """-potential = log prior + log likelihood + log-Jacobian: with u = log(scale),
    log pi~(loc, u) = N(loc; 1, 2) + N(u; 0, 0.5) + sum N(y_i; loc, 1)."""
    observed = jnp.asarray(OBSERVED)
    log_density = log_target_from_model(observed_model, observed)
    assert log_density.dim == 2 and log_density.site_names == ("loc", "scale")
    point = jnp.array([0.3, -0.4])
    expected = (
        dist.Normal(1.0, 2.0).log_prob(0.3) + dist.Normal(0.0, 0.5).log_prob(-0.4)
        + dist.Normal(0.3, 1.0).log_prob(observed).sum()
    )
    assert float(log_density(point)) == pytest.approx(float(expected), rel=1e-12)
    constrained = log_density.constrain(jnp.array([[0.3, -0.4], [1.0, 0.2]]))
    np.testing.assert_allclose(constrained["scale"], np.exp([-0.4, 0.2]), rtol=1e-12)
    np.testing.assert_allclose(
        log_density.unconstrain(constrained), [[0.3, -0.4], [1.0, 0.2]], atol=1e-12
    )
    with pytest.raises(ValueError, match="latent site"):
        log_density.unconstrain({"loc": jnp.zeros(3)})


def test_log_z_of_a_numpyro_model_is_its_marginal_likelihood(x64):
    """Z = p(y) = N(y; 1, 4 11^T + I) for the conjugate model; the flow is the exact posterior in
    the unconstrained space, widened by 1.3."""
    observed = jnp.asarray(OBSERVED)
    n_obs = observed.shape[0]
    log_z_true = float(
        dist.MultivariateNormal(
            jnp.ones(n_obs), 4.0 * jnp.ones((n_obs, n_obs)) + jnp.eye(n_obs)
        ).log_prob(observed)
    )
    post_var = 1.0 / (1.0 / 4.0 + n_obs)
    post_mean = post_var * (1.0 / 4.0 + float(observed.sum()))
    posterior = GaussianMixture(
        jnp.ones(1), [[post_mean, 0.0]], [jnp.diag(jnp.array([post_var, 0.25]))]
    )
    flow = oracle_flow(widened(posterior, 1.3))
    log_density = log_target_from_model(observed_model, observed)
    result = importance_diagnostics(jax.random.key(4), flow, log_density, n=1000)
    assert 0 < result.log_z_se < 0.05
    assert abs(result.log_z - log_z_true) < 3 * result.log_z_se, (result, log_z_true)
    assert result.pareto_k < 0.5


def test_forward_cross_entropy(x64):
    """-mean log q on draws of the target, with log q in closed form for the oracle flow."""
    target = GaussianMixture.random(jax.random.key(0), 2, 3)
    proposal = widened(target, 1.5)
    draws, _ = target.sample(jax.random.key(5), 200)
    result = forward_cross_entropy(oracle_flow(proposal), draws)
    exact = -proposal.log_prob(draws)
    assert result.mean == pytest.approx(float(exact.mean()), abs=1e-5)
    assert result.se == pytest.approx(float(exact.std(ddof=1) / math.sqrt(200)), rel=1e-4)
    assert result.values.shape == (200,)


def test_bad_input():
    flow = zero_velocity_flow()
    key = jax.random.key(0)
    standard = lambda x: -0.5 * jnp.sum(x**2, axis=-1)  # noqa: E731 (one point or a batch)
    with pytest.raises(TypeError, match="callable"):
        importance_diagnostics(key, flow, jnp.zeros(3), n=8)
    with pytest.raises(ValueError, match="n must be"):
        importance_diagnostics(key, flow, standard, n=1)
    with pytest.raises(TypeError, match="SIFlow"):
        importance_diagnostics(key, dist.Normal(0.0, 1.0), standard, n=8)
    with pytest.raises(TypeError, match=r"condition the flow first, flow\.condition\(y\)"):
        importance_diagnostics(key, toy_conditional_flow(), standard, n=8)
    # one value per coordinate instead of one per point
    with pytest.raises(ValueError, match=r"returned shape \(8, 2\)"):
        importance_diagnostics(key, flow, lambda x: dist.Normal(0.0, 1.0).log_prob(x), n=8)
    # a density on R^3 against a 2-d flow
    precision = jnp.eye(3)
    with pytest.raises(ValueError, match=r"event shape is \(2,\)"):
        importance_diagnostics(key, flow, lambda x: -0.5 * x @ precision @ x, n=8)

    def model_3d():
        numpyro.sample("theta", dist.Normal(0.0, 1.0).expand([3]).to_event(1))

    with pytest.raises(ValueError, match=r"R\^3 but the flow is 2-dimensional"):
        importance_diagnostics(key, flow, log_target_from_model(model_3d), n=8)
    with pytest.raises(ValueError, match="NaN"):
        importance_diagnostics(key, flow, lambda x: jnp.full(x.shape[:-1], jnp.nan), n=8)
    with pytest.raises(ValueError, match="-inf at all"):
        importance_diagnostics(key, flow, lambda x: jnp.full(x.shape[:-1], -jnp.inf), n=8)
    # a point-wise function: `batched` forces the mode, and the default finds it
    pointwise = lambda x: -0.5 * x @ x  # noqa: E731
    with pytest.raises(ValueError, match="batch"):
        importance_diagnostics(key, flow, pointwise, n=8, batched=True)
    by_default = importance_diagnostics(key, flow, pointwise, n=8)
    forced = importance_diagnostics(key, flow, pointwise, n=8, batched=False)
    np.testing.assert_allclose(by_default.log_weights, forced.log_weights)
    # q = N(0, I) = pi / (2 pi): every log weight is log(2 pi)
    np.testing.assert_allclose(by_default.log_weights, math.log(2 * math.pi), rtol=1e-5)
    with pytest.raises(TypeError, match="model"):
        log_target_from_model(42)
