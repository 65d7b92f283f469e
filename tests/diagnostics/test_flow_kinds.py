"""The diagnostics on every flow kind, against exact answers (float64, exact fields):

- a `ConstrainedSIFlow` whose unconstrained flow carries the exact velocity of a Gaussian is a
  log-normal on the positive orthant: its cross-entropy on log-normal draws is the exact mean
  negative log density (Jacobian included), and its importance weights against the log-normal
  density plus a constant c are constant (log Z = c, KL = 0, ESS = n);
- a `ConditionalSIFlow` whose velocity is the exact one of the linear-Gaussian posterior
  theta | y ~ N(A y + b, S): the same for a conditioned flow `condition(y)`, and the amortised
  cross-entropy over (theta_i, y_i) pairs (`context=`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints

import numpyro_si as nsi
from numpyro_si.diagnostics import cross_entropy, importance_diagnostics, loss_profile
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle

MU = np.array([0.3, -0.5])
SIGMA = np.array([0.4, 0.7])
A = np.array([[1.0, 0.5], [-0.3, 0.8]])
B = np.array([0.2, -0.1])
S = np.array([[0.5, 0.1], [0.1, 0.3]])
TIGHT = dict(rtol=1e-9, atol=1e-9)


def log_normal():
    return dist.LogNormal(jnp.asarray(MU), jnp.asarray(SIGMA)).to_event(1)


def log_normal_flow():
    """The exact flow of N(MU, diag SIGMA^2) pushed through exp: a log-normal."""
    interpolant = nsi.OneSidedLinearInterpolant()
    gaussian = GaussianMixture(jnp.ones(1), jnp.asarray(MU)[None], jnp.diag(SIGMA**2)[None])
    oracle = GaussianMixtureOracle(interpolant, gaussian)
    flow = nsi.SIFlow(interpolant, oracle.velocity, dim=2,
                      settings=nsi.SolverSettings(**TIGHT))
    return nsi.ConstrainedSIFlow(flow, constraints.positive)


def posterior_mean(y):
    return jnp.asarray(A) @ y + jnp.asarray(B)


def exact_conditional_velocity(t, x, y):
    oracle = GaussianMixtureOracle(
        nsi.OneSidedLinearInterpolant(),
        GaussianMixture(jnp.ones(1), posterior_mean(y)[None], jnp.asarray(S)[None]),
    )
    return oracle.velocity(t, x)


def conditional_flow():
    return nsi.ConditionalSIFlow(
        nsi.OneSidedLinearInterpolant(), exact_conditional_velocity, context_dim=2, dim=2,
        settings=nsi.SolverSettings(**TIGHT),
    )


def posterior(y):
    return dist.MultivariateNormal(posterior_mean(y), covariance_matrix=jnp.asarray(S))


# ----------------------------------------------------------------------------------------------
# constrained
# ----------------------------------------------------------------------------------------------


def test_cross_entropy_of_a_constrained_flow_includes_the_jacobian(x64):
    flow = log_normal_flow()
    draws = log_normal().sample(jax.random.key(0), (64,))
    result = cross_entropy(flow, draws)
    exact = -log_normal().log_prob(draws)
    np.testing.assert_allclose(result.values, exact, atol=1e-6)
    assert result.mean == pytest.approx(float(jnp.mean(exact)), abs=1e-6)
    # the Jacobian matters: the unconstrained flow's own values differ by sum(log x)
    unconstrained = cross_entropy(flow.flow, jnp.log(draws))
    np.testing.assert_allclose(result.values - unconstrained.values,
                               jnp.sum(jnp.log(draws), axis=-1), atol=1e-6)


def test_cross_entropy_names_draws_outside_the_support(x64):
    draws = log_normal().sample(jax.random.key(1), (8,)).at[3, 0].set(-1.0)
    with pytest.raises(ValueError, match=r"rows 3\) outside the support"):
        cross_entropy(log_normal_flow(), draws)


def test_importance_weights_of_an_exact_constrained_flow_are_constant(x64):
    log_z = 3.0
    result = importance_diagnostics(
        jax.random.key(2), log_normal_flow(), lambda x: log_normal().log_prob(x) + log_z, n=128
    )
    assert np.all(np.asarray(result.samples) > 0)  # draws on the support
    np.testing.assert_allclose(result.log_weights, log_z, atol=1e-6)
    assert result.log_z == pytest.approx(log_z, abs=1e-6)
    assert abs(result.reverse_kl) < 1e-6
    assert result.ess == pytest.approx(128, rel=1e-6)


def test_loss_profile_of_a_constrained_flow_is_that_of_its_unconstrained_flow(x64):
    flow = log_normal_flow()
    draws = log_normal().sample(jax.random.key(3), (32,))
    constrained = loss_profile(jax.random.key(4), flow, draws, times=4)
    unconstrained = loss_profile(jax.random.key(4), flow.flow, jnp.log(draws), times=4)
    np.testing.assert_array_equal(constrained.loss, unconstrained.loss)


# ----------------------------------------------------------------------------------------------
# conditional and conditioned
# ----------------------------------------------------------------------------------------------


def test_cross_entropy_of_a_conditioned_flow(x64):
    y = jnp.array([0.4, -1.2])
    flow = conditional_flow().condition(y)
    draws = posterior(y).sample(jax.random.key(5), (64,))
    result = cross_entropy(flow, draws)
    np.testing.assert_allclose(result.values, -posterior(y).log_prob(draws), atol=1e-6)


def test_importance_weights_of_an_exact_conditioned_flow_are_constant(x64):
    y = jnp.array([-0.7, 0.9])
    result = importance_diagnostics(
        jax.random.key(6), conditional_flow().condition(y),
        lambda theta: posterior(y).log_prob(theta) - 1.5, n=128,
    )
    np.testing.assert_allclose(result.log_weights, -1.5, atol=1e-6)
    assert abs(result.reverse_kl) < 1e-6 and result.ess == pytest.approx(128, rel=1e-6)


def test_amortised_cross_entropy_of_a_conditional_flow(x64):
    key_y, key_theta = jax.random.split(jax.random.key(7))
    ys = jax.random.normal(key_y, (48, 2))
    thetas = jax.vmap(lambda k, y: posterior(y).sample(k))(jax.random.split(key_theta, 48), ys)
    result = cross_entropy(conditional_flow(), thetas, context=ys, batch_size=20)
    exact = -jax.vmap(lambda t, y: posterior(y).log_prob(t))(thetas, ys)
    np.testing.assert_allclose(result.values, exact, atol=1e-6)


def test_a_conditional_flow_without_its_context_is_refused():
    flow = conditional_flow()
    with pytest.raises(ValueError, match="context"):
        cross_entropy(flow, jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        cross_entropy(flow, jnp.zeros((4, 2)), context=jnp.zeros((3, 2)))
    with pytest.raises(TypeError, match="condition"):
        importance_diagnostics(jax.random.key(0), flow, lambda x: 0.0, n=8)
    with pytest.raises(TypeError, match="condition"):
        loss_profile(jax.random.key(0), flow, jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="only for a ConditionalSIFlow"):
        cross_entropy(log_normal_flow(), jnp.ones((4, 2)), context=jnp.zeros((4, 2)))
