"""loss_profile and the Girsanov KL bound (docs/math.md sections 2 and 5) against the Gaussian-mixture
oracle (section 6).

Statistical assertions compare an estimate with its own standard error (fixed keys): 4 se at each
of the few profile times, 3 se for a single number, and the se must be small enough for the
comparison to have power.
"""

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from helpers import toy_conditional_flow
from numpyro.distributions.transforms import AffineTransform, IndependentTransform

import numpyro_si as nsi
from numpyro_si.diagnostics import kl_bound, kl_bound_from_oracle, loss_profile
from numpyro_si.diagnostics._loss_profile import _as_gaussian_mixture
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle

SHIFT = (0.3, -0.2)  # velocity perturbation c: 1/2 |c|^2 = 0.065
SCORE_SHIFT = (-0.2, 0.25)  # score perturbation c': 1/2 |c'|^2 = 0.05125
N = 1000
TIMES = 6


def half_square(vector):
    vector = jnp.asarray(vector)
    return 0.5 * float(vector @ vector)


def two_sided_oracle():
    target = GaussianMixture.random(jax.random.key(0), 2, 3)
    base = GaussianMixture.random(jax.random.key(1), 2, 2, spread=1.5)
    return GaussianMixtureOracle(nsi.LinearInterpolant(nsi.BrownianGamma(1.0)), target, base)


def shifted_flow(oracle, velocity_shift=(0.0, 0.0), score_shift=None, **settings):
    """An SIFlow whose fields are the oracle's plus constant vectors; `settings`: fields of its
    `SolverSettings`."""
    c = jnp.asarray(velocity_shift)
    score = None
    if score_shift is not None:
        c_score = jnp.asarray(score_shift)
        score = lambda t, x: oracle.score(t, x) + c_score  # noqa: E731
    base = None
    if not isinstance(oracle.interpolant, nsi.AbstractOneSidedInterpolant):
        base = oracle.base_distribution()
    return nsi.SIFlow(
        oracle.interpolant, lambda t, x: oracle.velocity(t, x) + c, score, base,
        dim=oracle.dim, settings=nsi.SolverSettings(**settings),
    )


# ----------------------------------------------------------------------------------------------
# excess loss
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["velocity", "score"])
def test_excess_of_a_shifted_field_is_half_the_squared_shift(x64, field):
    """With f^ = f + c the excess loss is 1/2 |c|^2 at every time, and so is its integral."""
    oracle = two_sided_oracle()
    shift = SHIFT if field == "velocity" else SCORE_SHIFT
    flow = shifted_flow(oracle, SHIFT, SCORE_SHIFT)
    data, _ = oracle.target.sample(jax.random.key(2), N)
    profile = loss_profile(
        jax.random.key(3), flow, data, field=field, oracle=oracle, times=TIMES, n_repeats=2
    )
    expected = half_square(shift)
    assert profile.field == field and profile.times.shape == (TIMES,)
    np.testing.assert_allclose(profile.weights, 1.0 / TIMES)  # midpoint rule on [0, 1]
    excess, se = np.asarray(profile.excess), np.asarray(profile.excess_se)
    assert np.all(se < 0.5 * expected)  # largest near t = 0, where gamma' z is large
    assert np.all(np.abs(excess - expected) < 4 * se), (excess, se)
    assert profile.excess_integrated_se < 0.2 * expected
    assert abs(profile.excess_integrated - expected) < 3 * profile.excess_integrated_se
    # the loss itself is finite, with a standard error, and the profile integrates it
    assert np.all(np.isfinite(profile.loss)) and np.all(profile.loss_se > 0)
    np.testing.assert_allclose(
        profile.integrated, float(profile.weights @ profile.loss), rtol=1e-12
    )


def test_exact_field_has_zero_excess(x64):
    """Common random numbers: the flow's field and the oracle's are evaluated on the same draws,
    so an exact field has excess exactly 0, not 0 +- noise."""
    oracle = two_sided_oracle()
    flow = nsi.SIFlow(oracle.interpolant, oracle.velocity, base=oracle.base_distribution())
    data, _ = oracle.target.sample(jax.random.key(4), 200)
    profile = loss_profile(jax.random.key(5), flow, data, oracle=oracle, times=TIMES)
    np.testing.assert_allclose(profile.excess, 0.0, atol=1e-12)
    assert abs(profile.excess_integrated) < 1e-12


def test_minimal_loss_profile_matches_the_oracle(x64):
    """For the exact velocity L_b(t) = min L_b(t) = -1/2 E|b(t, x_t)|^2 (docs/math.md section 6),
    estimated independently from exact draws of x_t."""
    oracle = GaussianMixtureOracle(
        nsi.OneSidedLinearInterpolant(), GaussianMixture.random(jax.random.key(0), 2, 3)
    )
    flow = shifted_flow(oracle)
    data, _ = oracle.target.sample(jax.random.key(6), N)
    times = jnp.array([0.1, 0.4, 0.7, 0.95])
    profile = loss_profile(jax.random.key(7), flow, data, times=times, n_repeats=2)
    np.testing.assert_allclose(profile.weights, [0.25, 0.3, 0.275, 0.175])
    for k, t in enumerate(times):
        x_t = oracle.sample_marginal(jax.random.fold_in(jax.random.key(8), k), float(t), 20_000)
        values = -0.5 * jnp.sum(jax.vmap(lambda x, t=t: oracle.velocity(t, x))(x_t) ** 2, -1)
        reference, reference_se = float(values.mean()), float(values.std() / math.sqrt(20_000))
        se = math.hypot(float(profile.loss_se[k]), reference_se)
        assert se < 0.25 * abs(reference)  # detects an error of the size of L itself
        assert abs(float(profile.loss[k]) - reference) < 4 * se, (t, profile.loss[k], reference)


def standardize(mixture, shift, scale):
    return GaussianMixture(
        mixture.weights, (mixture.means - shift) / scale,
        mixture.covariances / jnp.outer(scale, scale),
    )


@pytest.mark.parametrize("kind", ["one-sided", "two-sided"])
def test_excess_in_a_standardized_flow(x64, kind):
    """A flow trained on standardised data lives in y = (x - shift) / scale, from its own base:
    the oracle's target (in data space, like the data) is mapped there, and the reference fields
    start from `flow.base` (here, as `fit` builds it, a data-space mixture under the affine map),
    not from `oracle.base`."""
    shift, scale = jnp.array([0.5, -1.0]), jnp.array([2.0, 0.5])
    target = GaussianMixture.random(jax.random.key(0), 2, 3)
    base = None
    if kind == "one-sided":
        interpolant = nsi.OneSidedLinearInterpolant()
        flow_space_oracle = GaussianMixtureOracle(interpolant, standardize(target, shift, scale))
    else:
        interpolant = nsi.LinearInterpolant(nsi.BrownianGamma(1.0))
        data_base = GaussianMixture.random(jax.random.key(1), 2, 2, spread=1.5)
        flow_space_oracle = GaussianMixtureOracle(
            interpolant, standardize(target, shift, scale), standardize(data_base, shift, scale)
        )
        base = dist.TransformedDistribution(
            data_base.to_numpyro(), AffineTransform(-shift / scale, 1.0 / scale)
        )
    c = jnp.asarray(SHIFT)
    flow = nsi.SIFlow(
        interpolant, lambda t, x: flow_space_oracle.velocity(t, x) + c, base=base, dim=2,
        standardization=nsi.Standardization(shift, scale),
    )
    data, _ = target.sample(jax.random.key(9), N)
    oracle = GaussianMixtureOracle(interpolant, target)  # its default base is not the flow's
    profile = loss_profile(
        jax.random.key(10), flow, data, oracle=oracle, times=TIMES, n_repeats=2
    )
    expected = half_square(SHIFT)
    assert profile.excess_integrated_se < 0.2 * expected
    assert abs(profile.excess_integrated - expected) < 3 * profile.excess_integrated_se
    assert np.all(np.abs(np.asarray(profile.excess) - expected) < 4 * np.asarray(profile.excess_se))


def test_gaussian_bases_are_recognised():
    """The reference fields need rho0 as a Gaussian mixture; the NumPyro forms SIFlow and fit use
    are converted, anything else is refused."""
    normal = _as_gaussian_mixture(dist.Normal(jnp.array([1.0, 2.0]), 3.0).to_event(1))
    np.testing.assert_allclose(normal.means, [[1.0, 2.0]])
    np.testing.assert_allclose(normal.covariances, [9.0 * np.eye(2)])
    covariance = jnp.array([[2.0, 0.5], [0.5, 1.0]])
    mvn = _as_gaussian_mixture(dist.MultivariateNormal(jnp.zeros(2), covariance))
    np.testing.assert_allclose(mvn.covariances[0], covariance, rtol=1e-6)
    moved = _as_gaussian_mixture(
        dist.TransformedDistribution(
            dist.MultivariateNormal(jnp.zeros(2), covariance),
            [IndependentTransform(AffineTransform(1.0, jnp.array([2.0, 3.0])), 1)],
        )
    )
    np.testing.assert_allclose(moved.means, [[1.0, 1.0]])
    np.testing.assert_allclose(moved.covariances[0], [[8.0, 3.0], [3.0, 9.0]], rtol=1e-6)
    assert _as_gaussian_mixture(dist.Laplace(jnp.zeros(2), 1.0).to_event(1)) is None
    oracle = two_sided_oracle()
    flow = nsi.SIFlow(
        oracle.interpolant, oracle.velocity, base=dist.Laplace(jnp.zeros(2), 1.0).to_event(1)
    )
    with pytest.raises(TypeError, match="not a Gaussian"):
        loss_profile(jax.random.key(0), flow, jnp.zeros((4, 2)), oracle=oracle)


def test_bad_input():
    oracle = GaussianMixtureOracle(
        nsi.OneSidedLinearInterpolant(), GaussianMixture.random(jax.random.key(0), 2, 2)
    )
    flow = shifted_flow(oracle)
    data, _ = oracle.target.sample(jax.random.key(0), 16)
    key = jax.random.key(1)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        loss_profile(key, flow, jnp.zeros((16, 3)))
    with pytest.raises(ValueError, match="NaN"):
        loss_profile(key, flow, data.at[3, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="field must be"):
        loss_profile(key, flow, data, field="denoiser")
    with pytest.raises(ValueError, match="score network"):
        loss_profile(key, flow, data, field="score")
    with pytest.raises(ValueError, match="strictly increasing"):
        loss_profile(key, flow, data, times=jnp.array([0.5, 0.2]))
    with pytest.raises(ValueError, match="lie in"):
        loss_profile(key, flow, data, times=jnp.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="n_repeats"):
        loss_profile(key, flow, data, n_repeats=0)
    with pytest.raises(TypeError, match="SIFlow"):
        loss_profile(key, oracle, data)
    with pytest.raises(TypeError, match="condition the ConditionalSIFlow first"):
        loss_profile(key, toy_conditional_flow(), data)
    three_d = GaussianMixtureOracle(
        nsi.OneSidedLinearInterpolant(), GaussianMixture.random(jax.random.key(0), 3, 2)
    )
    with pytest.raises(ValueError, match="3-dimensional but the flow is 2-dimensional"):
        loss_profile(key, flow, data, oracle=three_d)
    other_path = GaussianMixtureOracle(nsi.OneSidedTrigonometricInterpolant(), oracle.target)
    with pytest.raises(ValueError, match="interpolant"):
        loss_profile(key, flow, data, oracle=other_path)
    two_sided = two_sided_oracle()
    with pytest.raises(ValueError, match="gamma"):
        loss_profile(
            key, shifted_flow(two_sided, score_shift=(0.0, 0.0)), data, field="score",
            times=jnp.array([0.0, 0.5]),
        )
    with pytest.raises(ValueError, match="score network"):
        kl_bound_from_oracle(key, flow, oracle)


# ----------------------------------------------------------------------------------------------
# KL bound
# ----------------------------------------------------------------------------------------------


def test_kl_bound_formula():
    result = kl_bound(0.08, 0.02, eps=[0.5, 1.0, 2.0, 4.0])
    assert result.eps_star == pytest.approx(2.0)
    assert result.bound_at_eps_star == pytest.approx(2 * math.sqrt(0.08 * 0.02))
    np.testing.assert_allclose(result.bound, [0.17, 0.1, 0.08, 0.1])
    grid = np.geomspace(0.01, 100.0, 2001)
    values = 0.08 / grid + grid * 0.02
    assert result.bound_at_eps_star <= values.min() + 1e-12
    assert grid[np.argmin(values)] == pytest.approx(result.eps_star, rel=0.01)
    scalar = kl_bound(0.08, 0.02, 1.0, delta_velocity_loss_se=0.01, delta_score_loss_se=0.002)
    assert isinstance(scalar.bound, float) and scalar.bound == pytest.approx(0.1)
    assert scalar.bound_se == pytest.approx(math.hypot(0.01, 0.002))
    # d(2 sqrt(b s)) = sqrt(s/b) db + sqrt(b/s) ds
    assert scalar.bound_at_eps_star_se == pytest.approx(math.hypot(0.5 * 0.01, 2 * 0.002))
    assert kl_bound(0.0, 0.02).eps_star == 0.0 and kl_bound(0.0, 0.02).bound_at_eps_star == 0.0
    assert kl_bound(0.08, 0.0).eps_star == math.inf
    assert math.isnan(kl_bound(0.0, 0.0).eps_star)
    with pytest.raises(ValueError, match="non-negative"):
        kl_bound(-0.1, 0.02)
    with pytest.raises(ValueError, match="positive"):
        kl_bound(0.1, 0.02, eps=0.0)


def gaussian_oracle():
    base = GaussianMixture(jnp.ones(1), [[-1.0, 0.5]], [[[0.8, 0.2], [0.2, 0.5]]])
    target = GaussianMixture(jnp.ones(1), [[2.0, -1.0]], [[[0.5, -0.3], [-0.3, 1.2]]])
    return GaussianMixtureOracle(nsi.LinearInterpolant(nsi.BrownianGamma(1.0)), target, base)


def sde_mean_shift(oracle, eps, drift_shift):
    """Between Gaussians the exact forward drift b + eps s is affine in x, so the SDE with the
    shifted drift b + eps s + drift_shift gives X^(t) = X(t) + D(t) on the same noise, with
    D' = (b_F(t, M + D) - b_F(t, M)) + drift_shift, D(0) = 0: the model's rho^1 is rho1 moved
    by D(1)."""

    def exact_drift(t, x):
        return oracle.velocity(t, x) + eps * oracle.score(t, x)

    def mean(t):
        alpha, beta = oracle.interpolant.alpha(t), oracle.interpolant.beta(t)
        return alpha * oracle.base.means[0] + beta * oracle.target.means[0]

    def rhs(t, shift, args):
        return exact_drift(t, mean(t) + shift) - exact_drift(t, mean(t)) + drift_shift

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(rhs), diffrax.Dopri8(), 0.0, 1.0, 0.01, jnp.zeros(2),
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10),
    )
    return solution.ys[-1]


def gaussian_kl_of_shift(covariance, shift):
    """KL(N(mu, S) || N(mu + D, S)) = 1/2 D^T S^-1 D."""
    return 0.5 * float(shift @ jnp.linalg.solve(covariance, shift))


EPS_GRID = (0.1, 0.3, 1.0, 3.0)


@pytest.mark.slow  # statistical; `make test-all`
def test_kl_bound_holds_for_shifted_fields(x64):
    """SDE with b^ = b + c, s^ = s + c' between two Gaussians: the true KL(rho1 || rho^1_SDE)
    (closed form) is below the Girsanov path KL |c + eps c'|^2 / (4 eps), which is below the bound
    DeltaL_b / eps + eps DeltaL_s, for exact and for estimated excess losses."""
    oracle = gaussian_oracle()
    c, c_score = jnp.asarray(SHIFT), jnp.asarray(SCORE_SHIFT)
    covariance = oracle.target.covariances[0]
    true_kl = np.array(
        [gaussian_kl_of_shift(covariance, sde_mean_shift(oracle, eps, c + eps * c_score))
         for eps in EPS_GRID]
    )
    path_kl = np.array([float(jnp.sum((c + eps * c_score) ** 2)) / (4 * eps) for eps in EPS_GRID])
    exact = kl_bound(half_square(c), half_square(c_score), eps=np.array(EPS_GRID))
    assert np.all(true_kl > 1e-4)  # a real perturbation, not a trivially satisfied bound
    assert np.all(true_kl <= path_kl + 1e-9), (true_kl, path_kl)
    assert np.all(path_kl <= np.asarray(exact.bound) + 1e-12)

    flow = shifted_flow(oracle, SHIFT, SCORE_SHIFT)
    estimated = kl_bound_from_oracle(
        jax.random.key(11), flow, oracle, n=N, times=TIMES, n_repeats=2, eps=np.array(EPS_GRID)
    )
    for value, se, truth in (
        (estimated.delta_velocity_loss, estimated.delta_velocity_loss_se, half_square(c)),
        (estimated.delta_score_loss, estimated.delta_score_loss_se, half_square(c_score)),
    ):
        assert se < 0.2 * truth
        assert abs(value - truth) < 3 * se, (value, truth, se)
    bound, bound_se = np.asarray(estimated.bound), np.asarray(estimated.bound_se)
    assert np.all(true_kl <= bound + 3 * bound_se)
    assert true_kl.min() <= estimated.bound_at_eps_star + 3 * estimated.bound_at_eps_star_se
    assert estimated.bound_at_eps_star <= bound.min() + 1e-12


@pytest.mark.slow
def test_sde_sampler_output_is_the_shifted_target(x64):
    """The closed-form D(1) used above describes what the SDE sampler actually produces: the mean
    of SIFlow SDE draws is mu + D(1) within Monte Carlo error (Euler-Maruyama, 200 steps)."""
    oracle = gaussian_oracle()
    eps = 1.0
    c, c_score = jnp.asarray(SHIFT), jnp.asarray(SCORE_SHIFT)
    predicted = oracle.target.means[0] + sde_mean_shift(oracle, eps, c + eps * c_score)
    flow = shifted_flow(oracle, SHIFT, SCORE_SHIFT, sampler=nsi.SDESampler(eps, n_steps=200))
    n = 2000
    draws = flow.sample(jax.random.key(12), (n,))
    se = jnp.std(draws, axis=0, ddof=1) / math.sqrt(n)
    assert np.all(np.abs(np.asarray(draws.mean(0) - predicted)) < 4 * np.asarray(se))
