"""Objectives (docs/math.md section 2): excess-loss identity with the exact Gaussian-mixture fields,
unbiasedness and variance of the antithetic estimators, time samplers and couplings.

Every statistical assertion compares a Monte Carlo mean with its own standard error (fixed keys,
|estimate - truth| < 4 se), and also checks that the standard error is small enough for the
comparison to have power.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import mean_se

import numpyro_si as nsi
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle

N = 20_000  # Monte Carlo draws per estimate
SHIFT = (0.3, -0.2)  # the constant perturbation c; 1/2 |c|^2 = 0.065


def make_oracle(kind):
    """The exact fields of a 2-d, 3-component target for a one-sided or a two-sided (Brownian
    gamma, Gaussian-mixture base) linear interpolant."""
    target = GaussianMixture.random(jax.random.key(0), 2, 3)
    if kind == "one-sided":
        return GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), target)
    if kind == "two-sided":
        base = GaussianMixture.random(jax.random.key(1), 2, 2, spread=1.5)
        return GaussianMixtureOracle(nsi.LinearInterpolant(nsi.BrownianGamma(1.0)), target, base)
    if kind == "deterministic":
        base = GaussianMixture.random(jax.random.key(1), 2, 2, spread=1.5)
        return GaussianMixtureOracle(nsi.TrigonometricInterpolant(), target, base)
    raise ValueError(kind)


def draws(key, oracle, n=N, time_sampler=None):
    """(t, x0, x1, z) from the independent coupling of the oracle's base and target."""
    time_sampler = nsi.UniformTime() if time_sampler is None else time_sampler
    k_t, k0, k1, kz = jax.random.split(key, 4)
    t, _ = time_sampler.sample(k_t, n)
    x0, _ = oracle.base.sample(k0, n)
    x1, _ = oracle.target.sample(k1, n)
    z = jax.random.normal(kz, x1.shape, dtype=x1.dtype)
    return t, x0, x1, z


def per_sample(loss, field, interpolant, batch, antithetic=True):
    # Deliberately not jitted: with jaxlib 0.10.2 on CPU, one executable holding both the oracle's
    # Cholesky and its LU solve over ~10^4 points deadlocks intermittently (all XLA threads idle);
    # op-by-op execution never does.
    fn = lambda t, x0, x1, z: loss(field, interpolant, t, x0, x1, z, antithetic=antithetic)  # noqa: E731
    return np.asarray(jax.vmap(fn)(*batch))


def half_square_error(delta, interpolant, batch, antithetic):
    """The per-sample 1/2 |f^ - f|^2 with the same points (x_t(+-z)) the loss integrand uses."""

    def one(t, x0, x1, z):
        plus = delta(t, interpolant.interpolate(t, x0, x1, z))
        if not antithetic or interpolant.is_deterministic:
            return 0.5 * jnp.sum(plus**2)
        minus = delta(t, interpolant.interpolate(t, x0, x1, -z))
        return 0.25 * (jnp.sum(plus**2) + jnp.sum(minus**2))

    return np.asarray(jax.vmap(one)(*batch))


def smooth_perturbation(t, x):
    """A non-constant field error delta(t, x)."""
    return 0.3 * jnp.tanh(x[::-1] + t) + 0.1 * jnp.sin(2 * x)


def add(field, delta):
    return lambda t, x: field(t, x) + delta(t, x)


# (loss, oracle kind, name of the exact field, antithetic)
EXCESS_CASES = [
    (nsi.velocity_loss, "one-sided", "velocity", False),
    (nsi.velocity_loss, "deterministic", "velocity", False),
    (nsi.velocity_loss, "two-sided", "velocity", True),
    (nsi.deterministic_velocity_loss, "two-sided", "v", True),
    (nsi.deterministic_velocity_loss, "two-sided", "v", False),
    (nsi.score_loss, "two-sided", "score", True),
    (nsi.denoiser_loss, "two-sided", "denoiser", True),
    (nsi.denoiser_loss, "two-sided", "denoiser", False),
]
CASE_IDS = [f"{loss.__name__}-{kind}-{'anti' if anti else 'plain'}" for loss, kind, _, anti in EXCESS_CASES]


@pytest.mark.parametrize(("loss", "kind", "field_name", "antithetic"), EXCESS_CASES, ids=CASE_IDS)
def test_excess_loss_of_a_constant_shift(x64, loss, kind, field_name, antithetic):
    """L(f + c) - L(f) = |c|^2 / 2 for the exact field f (per-sample differences on common random
    numbers). With f replaced by anything but the conditional expectation the mean would move by
    E[(f - target) . c]."""
    oracle = make_oracle(kind)
    field = getattr(oracle, field_name)
    c = jnp.asarray(SHIFT)
    batch = draws(jax.random.key(10), oracle)
    exact = per_sample(loss, field, oracle.interpolant, batch, antithetic)
    shifted = per_sample(loss, lambda t, x: field(t, x) + c, oracle.interpolant, batch, antithetic)
    assert np.all(np.isfinite(exact)) and np.all(np.isfinite(shifted))
    mean, se = mean_se(shifted - exact)
    expected = 0.5 * float(c @ c)
    assert se < 0.2 * expected  # the comparison can detect a bias of the size of the effect
    assert abs(mean - expected) < 4 * se, (mean, expected, se)


SMOOTH_CASES = [
    (nsi.velocity_loss, "one-sided", "velocity", False, None),
    (nsi.velocity_loss, "two-sided", "velocity", True, None),
    (nsi.deterministic_velocity_loss, "two-sided", "v", True, None),
    (nsi.score_loss, "two-sided", "score", True, None),
    # the plain score estimator has infinite variance on [0, 1] (1/gamma^2); trim the time range
    (nsi.score_loss, "two-sided", "score", False, (0.05, 0.95)),
    (nsi.denoiser_loss, "two-sided", "denoiser", True, None),
]


@pytest.mark.parametrize(
    ("loss", "kind", "field_name", "antithetic", "times"), SMOOTH_CASES,
    ids=[f"{c[0].__name__}-{c[1]}-{'anti' if c[3] else 'plain'}" for c in SMOOTH_CASES],
)
def test_excess_loss_of_a_smooth_perturbation(x64, loss, kind, field_name, antithetic, times):
    """L(f + delta) - L(f) = 1/2 E|delta|^2 for a non-constant delta: checks the cross terms
    (for the score, the 1/gamma z . s term), which a constant shift cancels exactly."""
    oracle = make_oracle(kind)
    field = getattr(oracle, field_name)
    time_sampler = None if times is None else nsi.UniformTime(*times)
    batch = draws(jax.random.key(11), oracle, time_sampler=time_sampler)
    interpolant = oracle.interpolant
    exact = per_sample(loss, field, interpolant, batch, antithetic)
    perturbed = per_sample(loss, add(field, smooth_perturbation), interpolant, batch, antithetic)
    excess = half_square_error(smooth_perturbation, interpolant, batch, antithetic)
    residual_mean, residual_se = mean_se(perturbed - exact - excess)
    excess_mean = excess.mean()
    assert residual_se < 0.1 * excess_mean
    assert abs(residual_mean) < 4 * residual_se, (residual_mean, residual_se, excess_mean)


def test_excess_loss_detects_the_wrong_field(x64):
    """Power check of the two identity tests: the velocity of the same target with the wrong base
    (standard normal instead of the mixture) is not the minimiser, and both tests reject it
    (measured: about 10 se for the constant shift, 45 se for the smooth perturbation)."""
    oracle = make_oracle("two-sided")
    wrong = GaussianMixtureOracle(oracle.interpolant, oracle.target).velocity
    interpolant = oracle.interpolant
    batch = draws(jax.random.key(11), oracle)
    base_loss = per_sample(nsi.velocity_loss, wrong, interpolant, batch)
    c = jnp.asarray(SHIFT)
    shifted = per_sample(nsi.velocity_loss, lambda t, x: wrong(t, x) + c, interpolant, batch)
    mean, se = mean_se(shifted - base_loss)
    assert abs(mean - 0.5 * float(c @ c)) > 4 * se, (mean, se)
    perturbed = per_sample(nsi.velocity_loss, add(wrong, smooth_perturbation), interpolant, batch)
    excess = half_square_error(smooth_perturbation, interpolant, batch, True)
    residual_mean, residual_se = mean_se(perturbed - base_loss - excess)
    assert abs(residual_mean) > 4 * residual_se, (residual_mean, residual_se)


ANTITHETIC_CASES = [
    (nsi.velocity_loss, "velocity"),
    (nsi.deterministic_velocity_loss, "v"),
    (nsi.score_loss, "score"),
    (nsi.denoiser_loss, "denoiser"),
]


@pytest.mark.parametrize(("loss", "field_name"), ANTITHETIC_CASES, ids=lambda v: getattr(v, "__name__", v))
def test_antithetic_estimator_is_unbiased(x64, loss, field_name):
    """Plain and antithetic integrands have the same mean (paired on the same draws), for an
    inexact field (the exact field plus a smooth error). Times are trimmed to [0.05, 0.95]
    because the plain velocity and score estimators have infinite variance on [0, 1]."""
    oracle = make_oracle("two-sided")
    field = add(getattr(oracle, field_name), smooth_perturbation)
    batch = draws(jax.random.key(12), oracle, time_sampler=nsi.UniformTime(0.05, 0.95))
    plain = per_sample(loss, field, oracle.interpolant, batch, antithetic=False)
    anti = per_sample(loss, field, oracle.interpolant, batch, antithetic=True)
    assert not np.allclose(plain, anti)  # genuinely different estimators
    mean, se = mean_se(plain - anti)
    assert se < 0.05 * abs(anti.mean()) or se < 0.01
    assert abs(mean) < 4 * se, (mean, se)


def test_antithetic_score_loss_has_smaller_variance_near_the_ends(x64):
    """Near t = 0 the plain score integrand's variance grows like 1/gamma^2; the antithetic one
    stays bounded."""
    oracle = make_oracle("two-sided")
    field = add(oracle.score, smooth_perturbation)
    batch = draws(jax.random.key(13), oracle, time_sampler=nsi.UniformTime(0.0, 0.05))
    plain = per_sample(nsi.score_loss, field, oracle.interpolant, batch, antithetic=False)
    anti = per_sample(nsi.score_loss, field, oracle.interpolant, batch, antithetic=True)
    assert np.all(np.isfinite(plain)) and np.all(np.isfinite(anti))
    assert plain.var() > 10 * anti.var(), (plain.var(), anti.var())


def test_losses_finite_at_the_ends_of_a_brownian_interpolant(x64):
    """gamma' is infinite at t = 0, 1 for gamma = sqrt(t (1 - t)), but every integrand stays
    finite there (gamma' is defined as 0 where gamma = 0, and 1/gamma is dropped)."""
    oracle = make_oracle("two-sided")
    key = jax.random.key(14)
    x0, x1, z = jax.random.normal(key, (3, 2))
    for t in (0.0, 1.0):
        for loss, field in ANTITHETIC_CASES:
            for antithetic in (True, False):
                value = loss(getattr(oracle, field), oracle.interpolant, jnp.asarray(t), x0, x1, z,
                             antithetic=antithetic)
                assert np.isfinite(value), (loss.__name__, t, antithetic)


def test_deterministic_velocity_loss_ignores_antithetic_flag():
    """With gamma = 0 there is nothing to antithesise: both flags give the same integrand."""
    interpolant = nsi.OneSidedLinearInterpolant()
    field = lambda t, x: jnp.sin(x) + t  # noqa: E731
    args = (jnp.asarray(0.3), jnp.array([0.1, -1.0]), jnp.array([2.0, 0.5]), jnp.array([1.0, 1.0]))
    a = nsi.velocity_loss(field, interpolant, *args, antithetic=True)
    b = nsi.velocity_loss(field, interpolant, *args, antithetic=False)
    assert a == b


@pytest.mark.parametrize("loss", [nsi.score_loss, nsi.denoiser_loss], ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "interpolant",
    [nsi.OneSidedLinearInterpolant(), nsi.LinearInterpolant(), nsi.TrigonometricInterpolant()],
    ids=lambda i: type(i).__name__,
)
def test_score_and_denoiser_losses_need_a_stochastic_interpolant(loss, interpolant):
    x = jnp.zeros(2)
    with pytest.raises(ValueError, match="stochastic interpolant"):
        loss(lambda t, y: y, interpolant, jnp.asarray(0.5), x, x, x)


# ----------------------------------------------------------------------------------------------
# time samplers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("t_min", "t_max"), [(0.0, 1.0), (0.1, 0.3), (0.0, 0.05), (0.9, 1.0)])
def test_uniform_time_bounds_and_moments(t_min, t_max):
    n = 10_000
    t, weight = nsi.UniformTime(t_min, t_max).sample(jax.random.key(0), n)
    t = np.asarray(t)
    assert t.shape == (n,) and weight.shape == (n,)
    assert np.all(weight == 1)
    assert t.min() >= t_min and t.max() <= t_max
    mean, se = mean_se(t)
    assert abs(mean - 0.5 * (t_min + t_max)) < 4 * se
    # uniform variance (t_max - t_min)^2 / 12, relative error of the sample variance ~ 1.3 / sqrt(n)
    width = t_max - t_min
    assert abs(t.var() / (width**2 / 12) - 1) < 4 * np.sqrt(0.8 / n)


def test_uniform_time_dtype(x64):
    t, weight = nsi.UniformTime().sample(jax.random.key(0), 5)
    assert t.dtype == jnp.float64 and weight.dtype == jnp.float64
    t, weight = nsi.UniformTime().sample(jax.random.key(0), 5, dtype=jnp.float32)
    assert t.dtype == jnp.float32 and weight.dtype == jnp.float32


@pytest.mark.parametrize(("t_min", "t_max"), [(-0.1, 1.0), (0.0, 1.1), (0.5, 0.5), (0.7, 0.2)])
def test_uniform_time_rejects_bad_bounds(t_min, t_max):
    with pytest.raises(ValueError, match="t_min < t_max"):
        nsi.UniformTime(t_min, t_max)


@pytest.mark.parametrize(("a", "b"), [(0.5, 0.5), (1.5, 1.2), (0.7, 1.0), (1.8, 0.6)])
def test_beta_time_reweighted_is_the_uniform_integral(x64, a, b):
    """E_w[w(t) g(t)] = int_0^1 g(t) dt for g(t) = t^2 (= 1/3) and g = 1 (the weights average 1).
    a, b < 2 keeps the variance of w g finite (and a != 3 or b != 1 keeps w t^2 non-constant)."""
    n = 40_000
    t, weight = nsi.BetaTime(a, b).sample(jax.random.key(1), n)
    t, weight = np.asarray(t), np.asarray(weight)
    assert np.all((t >= 0) & (t <= 1)) and np.all(np.isfinite(weight)) and np.all(weight >= 0)
    for values, exact in ((weight * t**2, 1.0 / 3.0), (weight, 1.0)):
        mean, se = mean_se(values)
        assert se < 0.02
        assert abs(mean - exact) < 4 * se, (a, b, mean, exact, se)


def test_beta_time_without_reweighting(x64):
    """reweight=False: weights are 1 and t follows Beta(a, b) (mean a / (a + b))."""
    a, b = 2.0, 5.0
    t, weight = nsi.BetaTime(a, b, reweight=False).sample(jax.random.key(2), 20_000)
    assert np.all(np.asarray(weight) == 1)
    mean, se = mean_se(t)
    assert abs(mean - a / (a + b)) < 4 * se
    # and the reweighted sampler's weights are not all 1 for a non-uniform Beta
    _, weight = nsi.BetaTime(a, b).sample(jax.random.key(2), 100)
    assert not np.allclose(weight, 1.0)


@pytest.mark.parametrize(("a", "b"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 2.0), (1.0, -0.5)])
def test_beta_time_rejects_bad_parameters(a, b):
    with pytest.raises(ValueError, match="must be positive"):
        nsi.BetaTime(a, b)


# ----------------------------------------------------------------------------------------------
# couplings
# ----------------------------------------------------------------------------------------------


def test_sample_coupling_mirror_copies_x1():
    x1 = jax.random.normal(jax.random.key(0), (50, 3))
    x0, z = nsi.sample_coupling(jax.random.key(1), nsi.MirrorInterpolant(), x1)
    np.testing.assert_array_equal(x0, x1)
    assert z.shape == x1.shape
    assert not np.allclose(z, x1)


def test_sample_coupling_one_sided_is_standard_normal(x64):
    n, d = 20_000, 3
    x1 = 5.0 + jax.random.normal(jax.random.key(0), (n, d))
    x0, z = nsi.sample_coupling(jax.random.key(1), nsi.OneSidedLinearInterpolant(), x1)
    assert x0.shape == z.shape == (n, d) and x0.dtype == z.dtype == jnp.float64
    for sample in (np.asarray(x0), np.asarray(z)):
        # mean 0 (se 1/sqrt(n)), variance 1 (se sqrt(2/n)) per coordinate
        assert np.all(np.abs(sample.mean(axis=0)) < 4 / np.sqrt(n))
        assert np.all(np.abs(sample.var(axis=0) - 1) < 4 * np.sqrt(2 / n))
    # x0 and z are independent draws (correlation se 1/sqrt(n))
    corr = np.mean(np.asarray(x0) * np.asarray(z), axis=0)
    assert np.all(np.abs(corr) < 4 / np.sqrt(n))


def test_sample_coupling_two_sided_uses_base_sample():
    n, d = 40, 2
    x1 = jnp.zeros((n, d))
    calls = []

    def base_sample(key, m):
        calls.append(m)
        return jnp.full((m, d), 7.0, dtype=jnp.float32)

    interpolant = nsi.LinearInterpolant(nsi.BrownianGamma(1.0))
    x0, z = nsi.sample_coupling(jax.random.key(0), interpolant, x1, base_sample)
    assert calls == [n]
    np.testing.assert_array_equal(x0, 7.0)
    assert x0.dtype == x1.dtype
    assert float(jnp.std(z)) > 0.5  # z is noise, not the base


def test_sample_coupling_two_sided_base_sample_follows_x1_dtype(x64):
    x1 = jnp.zeros((10, 2), dtype=jnp.float64)
    x0, z = nsi.sample_coupling(
        jax.random.key(0), nsi.LinearInterpolant(), x1,
        lambda key, m: jax.random.normal(key, (m, 2), dtype=jnp.float32),
    )
    assert x0.dtype == jnp.float64 and z.dtype == jnp.float64
