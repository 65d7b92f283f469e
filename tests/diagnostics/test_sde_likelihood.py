"""The SDE-model log-likelihood estimator (docs/math.md section 4), with the oracle's exact fields.

With the true fields the estimator targets the exact log rho1 for every eps; its only systematic
error is the Euler-Maruyama discretisation bias, measured below and allowed for explicitly.
Everything else is compared with the Monte Carlo standard error over paths (3 se, fixed keys).
"""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import toy_conditional_flow

import numpyro_si as nsi
from numpyro_si.diagnostics import SDELikelihood, sde_log_likelihood

from . import DIM, make_flow

N_POINTS = 12
N_PATHS = 16
N_STEPS = 500
# Discretisation-bias allowance on the mean over points, in nats, at N_STEPS = 500. Measured on
# this mixture with the pathwise form, 40 other target draws x 128 paths (key 100/101), mean error
# (estimate - exact log rho1) +- its se:
#   two-sided, ConstantEps(1):  +0.0020 +- 0.0017
#   one-sided, ConstantEps(1):  -0.0038 +- 0.0027   (deterministic first step)
#   one-sided, DecayingEps(1):  +0.0018 +- 0.0011
# Every |error| + 2 se is below 0.01; the allowance is twice that.
BIAS_ALLOWANCE = 0.02


def mean_error(result, exact):
    """Mean over points of (estimate - exact) and its standard error (independent points)."""
    error = float(jnp.mean(result.estimate - exact))
    se = float(jnp.sqrt(jnp.sum(result.se**2)) / result.se.size)
    return error, se


CASES = [
    ("two-sided", nsi.ConstantEps(1.0)),
    ("one-sided", nsi.ConstantEps(1.0)),  # velocity-only: the first step is deterministic
    ("one-sided", nsi.DecayingEps(1.0)),  # eps(1) = 0: no special step needed
]


@pytest.mark.parametrize(
    ("kind", "eps"), CASES, ids=["two-sided", "one-sided-const", "one-sided-decay"]
)
def test_exact_fields_are_unbiased_and_pathwise_has_smaller_variance(x64, kind, eps):
    flow, target = make_flow(kind)
    x, _ = target.sample(jax.random.key(0), N_POINTS)
    exact = target.log_prob(x)
    results = {}
    for form in ("pathwise", "expectation"):
        result = sde_log_likelihood(
            jax.random.key(1), flow, x, eps=eps, n_paths=N_PATHS, n_steps=N_STEPS, form=form
        )
        error, se = mean_error(result, exact)
        assert abs(error) < 3 * se + BIAS_ALLOWANCE, (form, error, se)
        results[form] = result
    # The three cases share their points and Brownian increments (keys 0 and 1), so their errors
    # are correlated: at these keys the expectation form sits near -2.3 se in each case, while
    # 40 other points x 128 paths give +0.002 +- 0.028 (two-sided) and +0.011 +- 0.022
    # (one-sided, decaying eps): its Ito term has mean exactly zero in the discrete scheme.
    pathwise, expectation = results["pathwise"], results["expectation"]
    # Power: the pathwise comparison is tight (se of the mean ~ 0.01 nats).
    assert mean_error(pathwise, exact)[1] < 0.02
    # The Ito control variate: per-path spread O(sqrt(1/n_steps)) against O(1) without it.
    # Measured ratio of mean per-path standard deviations 12-18 here; require a clear 5.
    std_pathwise = jnp.mean(jnp.std(pathwise.values, axis=-1, ddof=1))
    std_expectation = jnp.mean(jnp.std(expectation.values, axis=-1, ddof=1))
    assert std_expectation > 5 * std_pathwise, (std_expectation, std_pathwise)


def test_eps_zero_is_the_euler_ode_likelihood(x64):
    # With eps = 0 every path is the Euler discretisation of the probability-flow ODE; diffrax's
    # Euler on the same grid (SIFlow.log_prob with a fixed-step Euler solver) is an independent
    # implementation of the same numbers, including the standardization's log-Jacobian.
    standardization = nsi.Standardization(jnp.array([0.3, -0.2]), jnp.array([1.5, 0.7]))
    euler = nsi.ODELikelihood(solver=diffrax.Euler(), n_steps=64)
    flow, target = make_flow(standardization=standardization, likelihood=euler)
    x = standardization.inverse(target.sample(jax.random.key(0), 5)[0])
    result = sde_log_likelihood(jax.random.key(1), flow, x, eps=0.0, n_paths=2, n_steps=64)
    np.testing.assert_allclose(result.values[:, 0], result.values[:, 1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.estimate, flow.log_prob(x), rtol=0, atol=1e-10)
    np.testing.assert_allclose(result.se, 0.0, atol=1e-12)


def test_standardization_adds_its_log_jacobian(x64):
    standardization = nsi.Standardization(jnp.array([0.3, -0.2]), jnp.array([1.5, 0.7]))
    plain, target = make_flow()
    scaled, _ = make_flow(standardization=standardization)
    y, _ = target.sample(jax.random.key(0), 4)
    options = dict(eps=0.5, n_paths=3, n_steps=32)
    in_fields_space = sde_log_likelihood(jax.random.key(1), plain, y, **options)
    in_data_space = sde_log_likelihood(
        jax.random.key(1), scaled, standardization.inverse(y), **options
    )
    log_jacobian = -jnp.sum(jnp.log(standardization.scale))
    np.testing.assert_allclose(
        in_data_space.values, in_fields_space.values + log_jacobian, rtol=0, atol=1e-10
    )


def test_shapes_and_eps_forms():  # default float32
    flow, target = make_flow("one-sided")
    x = target.sample(jax.random.key(0), 6)[0].reshape(2, 3, DIM)
    options = dict(n_paths=4, n_steps=16)
    result = sde_log_likelihood(jax.random.key(1), flow, x, eps=0.7, **options)
    assert isinstance(result, SDELikelihood)
    assert result.estimate.shape == (2, 3) and result.se.shape == (2, 3)
    assert result.values.shape == (2, 3, 4)
    # A float, an AbstractEps and a plain callable eps(t) give the same estimator.
    as_schedule = sde_log_likelihood(
        jax.random.key(1), flow, x, eps=nsi.ConstantEps(0.7), **options
    )
    as_callable = sde_log_likelihood(
        jax.random.key(1), flow, x, eps=lambda t: 0.7 + 0.0 * t, **options
    )
    assert result.values.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(result.values)))
    np.testing.assert_allclose(as_schedule.values, result.values, rtol=1e-6)
    np.testing.assert_allclose(as_callable.values, result.values, rtol=1e-6)
    single = sde_log_likelihood(jax.random.key(1), flow, x[0, 0], eps=0.7, **options)
    assert single.estimate.shape == () and single.values.shape == (4,)


# -- bad inputs --------------------------------------------------------------------------------


def test_needs_a_score():
    flow, _ = make_flow()
    velocity_only = nsi.SIFlow(flow.interpolant, flow.velocity, base=flow.base)
    with pytest.raises(ValueError, match="needs the score"):
        sde_log_likelihood(jax.random.key(0), velocity_only, jnp.zeros(DIM), eps=1.0)


def test_bad_points_and_options():
    flow, _ = make_flow()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 2\) for this 2-dimensional"
                                         r" flow, got \(5, 3\)"):
        sde_log_likelihood(key, flow, jnp.zeros((5, 3)), eps=1.0)
    with pytest.raises(ValueError, match=r"NaN or infinite values in 1 row\(s\) \(rows 2\)"):
        sde_log_likelihood(key, flow, jnp.zeros((5, DIM)).at[2, 1].set(jnp.nan), eps=1.0)
    with pytest.raises(ValueError, match="empty"):
        sde_log_likelihood(key, flow, jnp.zeros((0, DIM)), eps=1.0)
    with pytest.raises(ValueError, match="form must be"):
        sde_log_likelihood(key, flow, jnp.zeros(DIM), eps=1.0, form="girsanov")
    with pytest.raises(ValueError, match="n_paths"):
        sde_log_likelihood(key, flow, jnp.zeros(DIM), eps=1.0, n_paths=1)
    with pytest.raises(ValueError, match="eps0 must be a non-negative"):
        sde_log_likelihood(key, flow, jnp.zeros(DIM), eps=-1.0)
    with pytest.raises(TypeError, match=r"condition the ConditionalSIFlow first"):
        sde_log_likelihood(key, toy_conditional_flow(), jnp.zeros(DIM), eps=1.0)
    with pytest.raises(TypeError, match="SIFlow or a ConstrainedSIFlow"):
        sde_log_likelihood(key, object(), jnp.zeros(DIM), eps=1.0)
