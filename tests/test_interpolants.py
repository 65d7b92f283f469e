"""Interpolants and gamma families (docs/math.md section 1): boundary conditions, exact derivatives,
the closed-form gamma * gamma', construction errors, and the one-sided score from the velocity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fixed_mixture

import numpyro_si as nsi
from numpyro_si.oracle import GaussianMixtureOracle

PI = np.pi


def _interpolants():
    """Every shipped interpolant, with each gamma family for the linear one."""
    return {
        "linear-zero": nsi.LinearInterpolant(),
        "linear-brownian": nsi.LinearInterpolant(nsi.BrownianGamma(2.0)),
        "linear-quadratic": nsi.LinearInterpolant(nsi.QuadraticGamma(1.5)),
        "linear-sin2": nsi.LinearInterpolant(nsi.SinSquaredGamma(0.7)),
        "linear-custom-gamma": nsi.LinearInterpolant(
            nsi.CustomGamma(gamma_fn=lambda t: 0.8 * t * (1 - t) ** 2)
        ),
        "linear-custom-gamma-squared": nsi.LinearInterpolant(
            nsi.CustomGamma(gamma_squared_fn=lambda t: 0.5 * t * (1 - t))
        ),
        "trig": nsi.TrigonometricInterpolant(),
        "trig-brownian": nsi.TrigonometricInterpolant(nsi.BrownianGamma(1.0)),
        "vp-trig": nsi.VPTrigonometricInterpolant(),
        "vp-trig-quadratic": nsi.VPTrigonometricInterpolant(nsi.QuadraticGamma(2.0)),
        "encoder-decoder": nsi.EncoderDecoderInterpolant(),
        "one-sided-linear": nsi.OneSidedLinearInterpolant(),
        "one-sided-trig": nsi.OneSidedTrigonometricInterpolant(),
        "one-sided-vp": nsi.OneSidedVPInterpolant(),
        "mirror": nsi.MirrorInterpolant(),
        "custom": nsi.CustomInterpolant(
            lambda t: (1 - t) ** 2, lambda t: 1 - (1 - t) ** 2, gamma=lambda t: t * (1 - t)
        ),
        "custom-trig-squared": nsi.CustomInterpolant(
            lambda t: jnp.cos(PI * t / 2) ** 2, lambda t: jnp.sin(PI * t / 2) ** 2
        ),
    }


INTERPOLANT_NAMES = list(_interpolants())


@pytest.fixture(params=INTERPOLANT_NAMES)
def interpolant(request, x64):
    return _interpolants()[request.param]


# Interior times avoiding the kinks/singularities: t = 1/2 (encoder-decoder) and t = 1 (VP).
INTERIOR_T = np.array([0.03, 0.17, 0.31, 0.45, 0.58, 0.72, 0.86, 0.97])


def _grad_elementwise(fn, ts):
    return jax.vmap(jax.grad(lambda s: jnp.asarray(fn(s)).reshape(())))(ts)


# ----------------------------------------------------------------------------------------------
# boundary conditions
# ----------------------------------------------------------------------------------------------


def test_boundary_conditions(interpolant):
    atol = 1e-12
    np.testing.assert_allclose(interpolant.alpha(0.0), 1.0, atol=atol)
    np.testing.assert_allclose(interpolant.alpha(1.0), 0.0, atol=atol)
    np.testing.assert_allclose(interpolant.beta(0.0), 0.0, atol=atol)
    np.testing.assert_allclose(interpolant.beta(1.0), 1.0, atol=atol)
    np.testing.assert_allclose(interpolant.gamma(0.0), 0.0, atol=atol)
    np.testing.assert_allclose(interpolant.gamma(1.0), 0.0, atol=atol)
    interpolant.check_boundary_conditions(atol=1e-10)  # must not raise


def test_interpolate_hits_the_endpoints(interpolant):
    k0, k1, kz = jax.random.split(jax.random.key(0), 3)
    x0, x1, z = (jax.random.normal(k, (3,)) for k in (k0, k1, kz))
    start = interpolant.interpolate(0.0, x0, x1, z)
    end = interpolant.interpolate(1.0, x0, x1, z)
    if isinstance(interpolant, nsi.MirrorInterpolant):
        x0 = x1  # the mirror coupling: x0 = x1
    np.testing.assert_allclose(start, x0, atol=1e-12)
    np.testing.assert_allclose(end, x1, atol=1e-12)


def test_one_sided_and_mirror_have_zero_or_positive_gamma(interpolant):
    gamma = interpolant.gamma(INTERIOR_T)
    if isinstance(interpolant, nsi.AbstractOneSidedInterpolant):
        assert interpolant.is_deterministic
        np.testing.assert_array_equal(gamma, 0.0)
    assert bool(jnp.all(gamma >= 0))


# ----------------------------------------------------------------------------------------------
# exact derivatives
# ----------------------------------------------------------------------------------------------


def test_dalpha_dbeta_match_autodiff(interpolant):
    np.testing.assert_allclose(
        interpolant.dalpha(INTERIOR_T), _grad_elementwise(interpolant.alpha, INTERIOR_T),
        rtol=1e-10, atol=1e-12,
    )
    np.testing.assert_allclose(
        interpolant.dbeta(INTERIOR_T), _grad_elementwise(interpolant.beta, INTERIOR_T),
        rtol=1e-10, atol=1e-12,
    )


def test_gamma_dgamma_matches_autodiff_of_half_gamma_squared(interpolant):
    expected = _grad_elementwise(lambda s: 0.5 * interpolant.gamma(s) ** 2, INTERIOR_T)
    np.testing.assert_allclose(interpolant.gamma_dgamma(INTERIOR_T), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        interpolant.dgamma(INTERIOR_T), _grad_elementwise(interpolant.gamma, INTERIOR_T),
        rtol=1e-9, atol=1e-12,
    )


def test_time_derivative_is_d_dt_of_interpolate(interpolant):
    k0, k1, kz = jax.random.split(jax.random.key(1), 3)
    x0, x1, z = (jax.random.normal(k, (4,)) for k in (k0, k1, kz))

    def by_autodiff(t):
        return jax.jvp(lambda s: interpolant.interpolate(s, x0, x1, z), (t,), (jnp.ones_like(t),))[1]

    expected = jax.vmap(by_autodiff)(INTERIOR_T)
    got = jax.vmap(lambda t: interpolant.time_derivative(t, x0, x1, z))(INTERIOR_T)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "method", ["alpha", "beta", "dalpha", "dbeta", "gamma", "dgamma", "gamma_dgamma"]
)
def test_coefficients_are_elementwise_in_t(interpolant, method):
    fn = getattr(interpolant, method)
    batched = fn(INTERIOR_T.reshape(2, 4))
    assert batched.shape == (2, 4)
    one_at_a_time = jax.vmap(lambda t: jnp.asarray(fn(t)).reshape(()))(INTERIOR_T)
    np.testing.assert_allclose(batched.ravel(), one_at_a_time, rtol=1e-14, atol=1e-14)


def test_custom_interpolant_derivatives_are_exact(x64):
    it = nsi.CustomInterpolant(lambda t: (1 - t) ** 3, lambda t: t**2)
    np.testing.assert_allclose(it.dalpha(INTERIOR_T), -3 * (1 - INTERIOR_T) ** 2, rtol=1e-13)
    np.testing.assert_allclose(it.dbeta(INTERIOR_T), 2 * INTERIOR_T, rtol=1e-13)
    # Given closed-form derivatives are used as they are (a deliberately different function
    # shows it is the one called).
    marked = nsi.CustomInterpolant(
        lambda t: 1 - t, lambda t: t, dalpha_fn=lambda t: -2.0 + 0 * t, dbeta_fn=lambda t: 3.0 + 0 * t
    )
    np.testing.assert_allclose(marked.dalpha(INTERIOR_T), -2.0)
    np.testing.assert_allclose(marked.dbeta(INTERIOR_T), 3.0)


def test_vp_trigonometric_preserves_variance(x64):
    it = nsi.VPTrigonometricInterpolant(nsi.BrownianGamma(3.9))
    ts = jnp.linspace(0.0, 1.0, 41)
    np.testing.assert_allclose(it.alpha(ts) ** 2 + it.beta(ts) ** 2 + it.gamma(ts) ** 2, 1.0, atol=1e-12)


def test_one_sided_vp_schedule(x64):
    it = nsi.OneSidedVPInterpolant()
    assert it.time_max < 1.0
    ts = jnp.linspace(0.0, 1.0, 41)
    np.testing.assert_allclose(it.alpha(ts) ** 2 + it.beta(ts) ** 2, 1.0, atol=1e-12)
    assert bool(jnp.all(jnp.diff(it.beta(ts)) > 0))


# ----------------------------------------------------------------------------------------------
# gamma families
# ----------------------------------------------------------------------------------------------


def _gammas():
    return {
        "zero": nsi.ZeroGamma(),
        "brownian-0.5": nsi.BrownianGamma(0.5),
        "brownian-3": nsi.BrownianGamma(3.0),
        "quadratic": nsi.QuadraticGamma(2.0),
        "sin2": nsi.SinSquaredGamma(0.8),
        "custom-fn": nsi.CustomGamma(gamma_fn=lambda t: jnp.sin(PI * t) * t),
        "custom-squared": nsi.CustomGamma(gamma_squared_fn=lambda t: 2.0 * t * (1 - t)),
    }


@pytest.fixture(params=list(_gammas()))
def gamma(request, x64):
    return _gammas()[request.param]


def test_gamma_vanishes_at_the_ends(gamma):
    np.testing.assert_allclose(gamma(jnp.array([0.0, 1.0])), 0.0, atol=1e-12)


def test_gamma_dgamma_matches_autodiff(gamma):
    expected = _grad_elementwise(lambda s: 0.5 * gamma(s) ** 2, INTERIOR_T)
    np.testing.assert_allclose(gamma.gamma_dgamma(INTERIOR_T), expected, rtol=1e-10, atol=1e-13)


def test_gamma_derivative_matches_autodiff_inside(gamma):
    expected = _grad_elementwise(gamma, INTERIOR_T)
    np.testing.assert_allclose(gamma.derivative(INTERIOR_T), expected, rtol=1e-9, atol=1e-13)


def test_gamma_products_finite_at_the_ends(gamma):
    ends = jnp.array([0.0, 1.0])
    assert bool(jnp.all(jnp.isfinite(gamma.gamma_dgamma(ends))))
    assert bool(jnp.all(jnp.isfinite(gamma.derivative(ends))))


@pytest.mark.parametrize("a", [0.5, 1.0, 3.0])
def test_brownian_gamma_closed_forms_at_the_ends(a, x64):
    g = nsi.BrownianGamma(a)
    # gamma' = +-inf at the ends, but gamma gamma' = a (1 - 2t) / 2 is finite ...
    np.testing.assert_allclose(g.gamma_dgamma(jnp.array([0.0, 1.0])), [a / 2, -a / 2], rtol=1e-14)
    # ... and gamma' is defined as 0 where gamma = 0 (it only ever multiplies vanishing terms).
    np.testing.assert_array_equal(g.derivative(jnp.array([0.0, 1.0])), [0.0, 0.0])
    it = nsi.LinearInterpolant(g)
    np.testing.assert_array_equal(it.dgamma(jnp.array([0.0, 1.0])), [0.0, 0.0])
    # The naive product gamma * d gamma / dt (autodiff) is not finite at t = 0: the reason for
    # the closed form.
    assert not bool(jnp.isfinite(jax.grad(g)(0.0)))


def test_custom_gamma_squared_is_finite_at_the_ends(x64):
    g = nsi.CustomGamma(gamma_squared_fn=lambda t: 2.0 * t * (1 - t))
    np.testing.assert_allclose(g.gamma_dgamma(jnp.array([0.0, 1.0])), [1.0, -1.0], rtol=1e-14)
    np.testing.assert_array_equal(g.derivative(jnp.array([0.0, 1.0])), [0.0, 0.0])


def test_zero_gamma_is_zero_everywhere(x64):
    g = nsi.ZeroGamma()
    assert g.is_zero and nsi.LinearInterpolant(g).is_deterministic
    assert not nsi.LinearInterpolant(nsi.BrownianGamma()).is_deterministic
    np.testing.assert_array_equal(g(INTERIOR_T), 0.0)
    np.testing.assert_array_equal(g.derivative(INTERIOR_T), 0.0)
    np.testing.assert_array_equal(g.gamma_dgamma(INTERIOR_T), 0.0)


@pytest.mark.parametrize("a", [0.0, -1.0])
def test_brownian_gamma_needs_positive_a(a):
    with pytest.raises(ValueError, match="a > 0"):
        nsi.BrownianGamma(a)


# ----------------------------------------------------------------------------------------------
# construction errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, condition",
    [
        (dict(alpha_fn=lambda t: 1 - t / 2, beta_fn=lambda t: t), "alpha(1) = 0"),
        (dict(alpha_fn=lambda t: 0.9 - 0.9 * t, beta_fn=lambda t: t), "alpha(0) = 1"),
        (dict(alpha_fn=lambda t: 1 - t, beta_fn=lambda t: t + 0.1), "beta(0) = 0"),
        (dict(alpha_fn=lambda t: 1 - t, beta_fn=lambda t: t / 2), "beta(1) = 1"),
        (dict(alpha_fn=lambda t: 1 - t, beta_fn=lambda t: t, gamma=lambda t: 0.1 + 0 * t),
         "gamma(0) = 0"),
        (dict(alpha_fn=lambda t: 1 - t, beta_fn=lambda t: t, gamma=lambda t: 0.2 * t),
         "gamma(1) = 0"),
    ],
)
def test_custom_interpolant_boundary_violation_is_named(kwargs, condition):
    with pytest.raises(ValueError, match=condition.replace("(", r"\(").replace(")", r"\)")):
        nsi.CustomInterpolant(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(alpha_fn=1.0, beta_fn=lambda t: t), "alpha_fn"),
        (dict(alpha_fn=lambda t: 1 - t, beta_fn="t"), "beta_fn"),
        (dict(alpha_fn=lambda t: 1 - t, beta_fn=lambda t: t, gamma=0.5), "gamma"),
    ],
)
def test_custom_interpolant_rejects_non_callables(kwargs, name):
    with pytest.raises(TypeError, match=name):
        nsi.CustomInterpolant(**kwargs)


@pytest.mark.parametrize(
    "gamma",
    [nsi.BrownianGamma(4.0), nsi.BrownianGamma(6.0), nsi.QuadraticGamma(4.0), nsi.SinSquaredGamma(1.5)],
    ids=["brownian-4", "brownian-6", "quadratic-4", "sin2-1.5"],
)
def test_vp_trigonometric_rejects_gamma_reaching_one(gamma):
    with pytest.raises(ValueError, match="gamma"):
        nsi.VPTrigonometricInterpolant(gamma)


# ----------------------------------------------------------------------------------------------
# one-sided: the score from the velocity (docs/math.md section 2)
# ----------------------------------------------------------------------------------------------


ONE_SIDED = {
    "linear": nsi.OneSidedLinearInterpolant,
    "trig": nsi.OneSidedTrigonometricInterpolant,
    "vp": nsi.OneSidedVPInterpolant,
}


@pytest.mark.parametrize("name", list(ONE_SIDED))
def test_one_sided_score_from_exact_velocity_is_exact_score(name, x64):
    interpolant = ONE_SIDED[name]()
    oracle = GaussianMixtureOracle(interpolant, fixed_mixture(3, dim=3, n_components=3))
    ts = np.array([0.0, 0.02, 0.2, 0.5, 0.8, 0.95, 0.99])
    xs = 2.0 * np.random.default_rng(4).standard_normal((5, 3))

    def both(t, x):
        from_velocity = interpolant.score_from_velocity(t, x, oracle.velocity(t, x))
        return from_velocity, oracle.score(t, x)

    got, expected = jax.jit(jax.vmap(jax.vmap(both, (None, 0)), (0, None)))(ts, xs)
    assert bool(jnp.all(jnp.isfinite(got)))
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    # At t = 0 the marginal is the N(0, I) base: s = -x.
    np.testing.assert_allclose(got[0], -xs, atol=1e-12)


@pytest.mark.parametrize("name", list(ONE_SIDED))
def test_one_sided_eps_times_score(name, x64):
    interpolant = ONE_SIDED[name]()
    oracle = GaussianMixtureOracle(interpolant, fixed_mixture(5, dim=2, n_components=2))
    x = np.array([0.3, -1.2])

    @jax.jit
    def pieces(o, x):
        t = 0.6
        inside = o.interpolant.eps_times_score(t, x, o.velocity(t, x), 0.7), 0.7 * o.score(t, x)
        # At the data end the score from the velocity is singular (alpha = 0), but eps = 0
        # gives exactly 0, with no NaN.
        t_end = o.interpolant.time_max
        at_end = o.interpolant.eps_times_score(1.0, x, o.velocity(t_end, x), 0.0)
        return inside, at_end

    (got, expected), at_end = pieces(oracle, x)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    np.testing.assert_array_equal(at_end, 0.0)
