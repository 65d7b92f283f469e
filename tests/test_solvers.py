"""The diffrax solves of _solvers.py on problems with closed-form answers: ODE transport, the ODE
log-likelihood (linear flows), divergence estimators, and the step structure and statistics of
the Euler-Maruyama SDE solve."""

import functools

import diffrax
import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np
import pytest
from helpers import euler_maruyama_reference
from jax.scipy.stats import multivariate_normal

import numpyro_si as nsi
from numpyro_si._solvers import ode_log_likelihood, solve_ode, solve_sde

A = np.array([[-0.5, 1.2, 0.0], [0.3, 0.2, -0.7], [0.1, 0.4, -1.1]])


def _linear_velocity(t, x):
    """b(t, x) = t A x: X(1) = expm(A / 2) X(0), div b = t tr(A)."""
    return t * (jnp.asarray(A) @ x)


# ----------------------------------------------------------------------------------------------
# ODE transport
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 0.0), (0.2, 0.7)])
def test_solve_ode_adaptive_matches_matrix_exponential(t0, t1, x64):
    x = np.array([0.3, -1.0, 2.0])
    y, info = jax.jit(
        lambda x: solve_ode(_linear_velocity, x, t0, t1, method=nsi.ODESampler(),
                            rtol=1e-10, atol=1e-10)
    )(x)
    exact = jax.scipy.linalg.expm(A * (t1**2 - t0**2) / 2) @ x
    np.testing.assert_allclose(y, exact, rtol=1e-8, atol=1e-8)
    assert bool(info.succeeded) and int(info.num_steps) > 1


def test_solve_ode_fixed_steps_is_exactly_euler(x64):
    a, n = -0.8, 8
    sampler = nsi.ODESampler(diffrax.Euler(), n_steps=n)
    y, info = solve_ode(lambda t, x: a * x, jnp.array([1.5]), 0.0, 1.0, method=sampler,
                        rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(y, 1.5 * (1 + a / n) ** n, rtol=1e-13)
    assert int(info.num_steps) == n and bool(info.succeeded)


def test_solve_ode_reports_exhausted_step_budget(x64):
    y, info = solve_ode(_linear_velocity, jnp.ones(3), 0.0, 1.0,
                        method=nsi.ODESampler(max_steps=2), rtol=1e-10, atol=1e-10)
    assert not bool(info.succeeded)


# ----------------------------------------------------------------------------------------------
# ODE log-likelihood (docs/math.md section 4)
# ----------------------------------------------------------------------------------------------


def _linear_flow_log_density(x, t):
    """log rho_t(x) for b = s A x from rho_0 = N(0, I): X(0) = expm(-A t^2 / 2) x and
    int_0^t div b = tr(A) t^2 / 2."""
    x0 = jax.scipy.linalg.expm(-A * t**2 / 2) @ x
    return multivariate_normal.logpdf(x0, jnp.zeros(3), jnp.eye(3)) - np.trace(A) * t**2 / 2


def _base_log_prob(y):
    return multivariate_normal.logpdf(y, jnp.zeros(y.shape[-1]), jnp.eye(y.shape[-1]))


@pytest.mark.parametrize("t", [1.0, 0.6])
def test_ode_log_likelihood_of_a_linear_flow(t, x64):
    xs = np.random.default_rng(0).standard_normal((4, 3))

    @jax.jit
    def log_likelihood(x):
        return ode_log_likelihood(
            _linear_velocity, _base_log_prob, x, t, 0.0, method=nsi.ODELikelihood(),
            divergence=nsi.ExactDivergence(), key=None, rtol=1e-10, atol=1e-10,
        )

    lp, info = jax.vmap(log_likelihood)(xs)
    expected = jax.vmap(lambda x: _linear_flow_log_density(x, t))(xs)
    np.testing.assert_allclose(lp, expected, rtol=1e-9, atol=1e-9)
    assert bool(jnp.all(info.succeeded))


def test_ode_log_likelihood_fixed_steps(x64):
    x = np.array([0.5, -0.2, 1.0])
    lp, info = ode_log_likelihood(
        _linear_velocity, _base_log_prob, x, 1.0, 0.0,
        method=nsi.ODELikelihood(diffrax.Tsit5(), n_steps=32), divergence=nsi.ExactDivergence(),
        key=None, rtol=1.0, atol=1.0,
    )
    assert int(info.num_steps) == 32
    # A 5th-order method with h = 1/32 on a smooth problem: error far below 1e-6.
    np.testing.assert_allclose(lp, _linear_flow_log_density(x, 1.0), atol=1e-6)


def test_ode_log_likelihood_is_minus_inf_when_out_of_steps(x64):
    lp, info = ode_log_likelihood(
        _linear_velocity, _base_log_prob, jnp.ones(3), 1.0, 0.0,
        method=nsi.ODELikelihood(max_steps=2), divergence=nsi.ExactDivergence(), key=None,
        rtol=1e-10, atol=1e-10,
    )
    assert float(lp) == -np.inf and not bool(info.succeeded)


# ----------------------------------------------------------------------------------------------
# divergence estimators
# ----------------------------------------------------------------------------------------------


def _nonlinear(x):
    w = jnp.asarray(A)
    return jnp.tanh(w @ x) + 0.3 * x**2 * jnp.roll(x, 1)


def test_exact_divergence_is_jacobian_trace(x64):
    x = np.array([0.4, -0.3, 1.2])
    value, div = nsi.ExactDivergence()(_nonlinear, x, None)
    np.testing.assert_allclose(value, _nonlinear(x), rtol=1e-14)
    np.testing.assert_allclose(div, jnp.trace(jax.jacfwd(_nonlinear)(x)), rtol=1e-12)
    assert nsi.ExactDivergence().probe(jax.random.key(0), x) is None


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(noise, x64):
    """Single-probe estimates v^T J v average to tr J within Monte Carlo error."""
    x = np.array([0.4, -0.3, 1.2])
    estimator = nsi.HutchinsonDivergence(jax.random.key(0), n_probes=1, noise=noise)
    keys = jax.random.split(jax.random.key(1), 4000)

    @jax.jit
    def one(key):
        return estimator(_nonlinear, x, estimator.probe(key, x))[1]

    samples = jax.vmap(one)(keys)
    exact = jnp.trace(jax.jacfwd(_nonlinear)(x))
    se = jnp.std(samples, ddof=1) / jnp.sqrt(samples.shape[0])
    assert float(se) > 0  # it is a random estimate ...
    assert abs(float(jnp.mean(samples) - exact)) < 4 * float(se)  # ... centred on the trace


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_probes(noise, x64):
    x = jnp.zeros(5)
    estimator = nsi.HutchinsonDivergence(jax.random.key(0), n_probes=7, noise=noise)
    probe = estimator.probe(jax.random.key(2), x)
    assert probe.shape == (7, 5) and probe.dtype == x.dtype
    np.testing.assert_array_equal(probe, estimator.probe(jax.random.key(2), x))
    assert not bool(jnp.all(probe == estimator.probe(jax.random.key(3), x)))
    if noise == "rademacher":
        np.testing.assert_array_equal(jnp.abs(probe), 1.0)
    # With several probes the estimate is the mean of the single-probe ones.
    y = np.array([0.1, 0.2, -0.5, 0.9, 0.0])
    f = lambda v: jnp.sin(v) * jnp.sum(v)  # noqa: E731
    _, many = estimator(f, y, probe)
    singles = jax.vmap(lambda p: estimator(f, y, p[None])[1])(probe)
    np.testing.assert_allclose(many, jnp.mean(singles), rtol=1e-12)


def test_hutchinson_rejects_unknown_noise():
    with pytest.raises(ValueError, match="noise"):
        nsi.HutchinsonDivergence(jax.random.key(0), noise="uniform")


# ----------------------------------------------------------------------------------------------
# SDE solve
# ----------------------------------------------------------------------------------------------


def _fields(velocity, score):
    """Fields on a plain linear interpolant (unused by the solve except through b and s)."""
    return nsi.Fields(nsi.LinearInterpolant(), nsi.FunctionField(velocity),
                      nsi.FunctionField(score))


@functools.partial(jax.jit, static_argnames=("fields", "sampler", "t0", "t1", "data_end", "n"))
def _sde_paths(fields, x, key, *, sampler, t0, t1, data_end, n):
    keys = jax.random.split(key, n)
    return jax.vmap(
        lambda k: solve_sde(fields, x, k, t0, t1, sampler=sampler, data_end=data_end)[0]
    )(keys)


def _euler(drift, x, t0, t1, n):
    h = (t1 - t0) / n
    for i in range(n):
        x = x + h * drift(t0 + i * h, x)
    return x


@pytest.mark.parametrize("data_end", [1.0, 5.0], ids=["ends-at-data", "no-data-end"])
@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 0.0)], ids=["forward", "backward"])
def test_sde_with_zero_noise_is_euler(t0, t1, data_end, x64):
    """eps = 0: the SDE solve is n deterministic Euler steps of b, in either direction."""
    fields = _fields(lambda t, x: jnp.sin(3 * t) * x + 0.5, lambda t, x: -x)
    sampler = nsi.SDESampler(nsi.ConstantEps(0.0), n_steps=8)
    x = jnp.array([0.7, -0.4])
    y, info = solve_sde(fields, x, jax.random.key(0), t0, t1, sampler=sampler, data_end=data_end)
    assert int(info.num_steps) == 8 and bool(info.succeeded)
    np.testing.assert_allclose(y, _euler(fields.b, x, t0, t1, 8), rtol=1e-12)


def _assert_mean_var(x, mean, var):
    """Per-coordinate sample mean and variance within 4 Monte Carlo standard errors."""
    n = x.shape[0]
    se_mean = jnp.sqrt(var / n)
    assert bool(jnp.all(jnp.abs(jnp.mean(x, axis=0) - mean) < 4 * se_mean)), (x.mean(0), mean)
    squares = (x - mean) ** 2
    se_var = jnp.std(squares, axis=0, ddof=1) / jnp.sqrt(n)
    assert bool(jnp.all(jnp.abs(jnp.mean(squares, axis=0) - var) < 4 * se_var)), (
        squares.mean(0), var)


N_PATHS = 4000


@pytest.mark.parametrize("t0, t1, expected_var", [(0.0, 1.0, 0.75), (1.0, 0.0, 1.25)])
def test_sde_evaluates_eps_at_the_left_end_of_each_step(t0, t1, expected_var, x64):
    """eps(t) = t, 4 steps: Euler-Maruyama's variance is 2 h sum_k eps(t_k) over the step starts,
    3/4 forward (t_k = 0, 1/4, 1/2, 3/4) and 5/4 backward (t_k = 1, 3/4, 1/2, 1/4)."""
    fields = _fields(lambda t, x: jnp.zeros_like(x), lambda t, x: jnp.zeros_like(x))
    sampler = nsi.SDESampler(nsi.CustomEps(lambda t: t), n_steps=4)
    y = _sde_paths(fields, jnp.zeros(2), jax.random.key(2), sampler=sampler, t0=t0, t1=t1,
                   data_end=5.0, n=N_PATHS)
    _assert_mean_var(y, 0.0, expected_var)


def _ou_euler_moments(x0, n, k):
    """Exact moments after k steps of the Euler-Maruyama chain X <- (1 - h) X + sqrt(2 h) xi,
    h = 1 / n."""
    h = 1.0 / n
    r = 1.0 - h
    return x0 * r**k, 2 * h * (1 - r ** (2 * k)) / (1 - r**2)


@pytest.mark.parametrize("data_end", [1.0, 0.0, 5.0])
@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 0.0)], ids=["forward", "backward"])
def test_sde_ornstein_uhlenbeck_matches_euler_maruyama_exactly(t0, t1, data_end, x64):
    """b = 0, s = -x, eps = 1: forward drift b + eps s = -x; backward, b - eps s = x run backward
    in time: the same Euler-Maruyama chain, whose moments are known exactly (no discretisation
    bias to allow for). The step into (forward) or out of (backward) the data end is a
    deterministic Euler step of b = 0, so then the chain has one noisy step fewer."""
    fields = _fields(lambda t, x: jnp.zeros_like(x), lambda t, x: -x)
    n_steps = 8
    sampler = nsi.SDESampler(nsi.ConstantEps(1.0), n_steps=n_steps)
    x0 = jnp.array([2.0, -1.0])
    y = _sde_paths(fields, x0, jax.random.key(3), sampler=sampler, t0=t0, t1=t1,
                   data_end=data_end, n=N_PATHS)
    deterministic_step = (t1 > t0 and data_end == t1) or (t1 < t0 and data_end == t0)
    mean, var = _ou_euler_moments(x0, n_steps, n_steps - 1 if deterministic_step else n_steps)
    _assert_mean_var(y, mean, var)


def test_euler_maruyama_reference_ornstein_uhlenbeck(x64):
    x0 = jnp.array([2.0, -1.0])
    keys = jax.random.split(jax.random.key(4), N_PATHS)
    y = jax.jit(jax.vmap(
        lambda k: euler_maruyama_reference(lambda t, x: -x, lambda t: 1.0, x0, k, 0.0, 1.0, 8)
    ))(keys)
    mean, var = _ou_euler_moments(x0, 8, 8)
    _assert_mean_var(y, mean, var)


def test_sde_sampler_defaults_and_checks():
    """Adaptive Heun steps with error control and eps(t) = 1 - t by default; fixed steps need at
    least two and default to Euler-Maruyama; adaptive steps need a solver with an error
    estimate."""
    with pytest.raises(ValueError, match="n_steps"):
        nsi.SDESampler(n_steps=1)
    default = nsi.SDESampler()
    assert default.n_steps is None and isinstance(default.solver, diffrax.Heun)
    assert default.eps == nsi.DecayingEps(1.0) and (default.rtol, default.atol) == (1e-2, 1e-2)
    assert isinstance(nsi.SDESampler(1.0, n_steps=8).solver, diffrax.Euler)
    with pytest.raises(ValueError, match="error estimate"):
        nsi.SDESampler(1.0, solver=diffrax.Euler())
    for option, value in (("rtol", 0.0), ("atol", -1.0), ("max_steps", 1)):
        with pytest.raises(ValueError, match=option):
            nsi.SDESampler(1.0, **{option: value})
