"""SIFlow with the exact Gaussian-mixture fields: the likelihood against the analytic density (the
key acceptance test), ODE and SDE sampling against the target's moments and mixture weights, the
NumPyro-distribution and pytree behaviour, use as a prior under NUTS, and input errors."""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from helpers import fixed_mixture
from numpyro.diagnostics import effective_sample_size
from numpyro.distributions import constraints

import numpyro_si as nsi
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle

INTERPOLANTS = {
    "linear-brownian": lambda: nsi.LinearInterpolant(nsi.BrownianGamma(1.0)),
    "trig": nsi.TrigonometricInterpolant,
    "one-sided-linear": nsi.OneSidedLinearInterpolant,
    "one-sided-trig": nsi.OneSidedTrigonometricInterpolant,
}


def _oracle_flow(name, target, base=None, **settings):
    """An SIFlow with the oracle's exact velocity (and score); two-sided ones get `base`.
    `settings`: the fields of its `SolverSettings`."""
    interpolant = INTERPOLANTS[name]() if isinstance(name, str) else name
    settings = nsi.SolverSettings(**settings)
    if isinstance(interpolant, nsi.AbstractOneSidedInterpolant):
        oracle = GaussianMixtureOracle(interpolant, target)
        flow = nsi.SIFlow(interpolant, oracle.velocity, dim=target.dim, settings=settings)
    else:
        oracle = GaussianMixtureOracle(interpolant, target, base)
        flow = nsi.SIFlow(interpolant, oracle.velocity, oracle.score,
                          base=oracle.base_distribution(), settings=settings)
    return flow, oracle


def _test_points(target, seed, per_component=2):
    """Points near every component and one far in the tails."""
    rng = np.random.default_rng(seed)
    near = np.repeat(np.asarray(target.means), per_component, axis=0)
    near = near + 0.5 * rng.standard_normal(near.shape)
    return np.concatenate([near, np.full((1, target.dim), 2.5)])


@jax.jit
def _log_prob_with_info(flow, x):
    return flow.log_prob_with_info(x)


@functools.partial(jax.jit, static_argnames="t")
def _log_prob_at_and_exact(flow, oracle, x, t):
    return flow.log_prob_at(x, t), jax.vmap(lambda y: oracle.log_density(t, y))(x)


# ----------------------------------------------------------------------------------------------
# 3. likelihood: the ODE log-likelihood of the exact velocity is the analytic density
# ----------------------------------------------------------------------------------------------


ACCURATE = dict(rtol=1e-10, atol=1e-10, likelihood=nsi.ODELikelihood(diffrax.Dopri8()))


@pytest.mark.parametrize("dim", [1, 2, 5])
@pytest.mark.parametrize("name", list(INTERPOLANTS))
def test_log_prob_matches_analytic_density(name, dim, x64):
    target = fixed_mixture(100 + dim, dim, 3)
    flow, oracle = _oracle_flow(name, target, fixed_mixture(200 + dim, dim, 2), **ACCURATE)
    x = _test_points(target, dim)
    log_prob, info = _log_prob_with_info(flow, x)
    assert bool(jnp.all(info.succeeded))
    np.testing.assert_allclose(log_prob, oracle.target.log_prob(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("t", [0.3, 0.75])
@pytest.mark.parametrize("name", list(INTERPOLANTS))
def test_log_prob_at_intermediate_time(name, t, x64):
    target = fixed_mixture(300, 2, 3)
    flow, oracle = _oracle_flow(name, target, fixed_mixture(301, 2, 2), **ACCURATE)
    x = _test_points(target, 5)
    got, expected = _log_prob_at_and_exact(flow, oracle, x, t)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_hutchinson_log_prob_is_unbiased_and_deterministic(x64):
    """With Hutchinson's estimator log_prob is a random estimate: every point folds its index into
    the key, so N copies of one x give N independent estimates, whose mean is within Monte Carlo
    error of the exact log density; a fixed key gives the same numbers again."""
    target = fixed_mixture(400, 3, 2)
    flow, oracle = _oracle_flow("one-sided-linear", target, rtol=1e-7, atol=1e-7)
    x = np.asarray(target.means[0]) + 0.3
    n = 1000
    copies = jnp.broadcast_to(x, (n, 3))
    hutchinson = flow.with_settings(divergence=nsi.HutchinsonDivergence(jax.random.key(7)))
    estimates, info = _log_prob_with_info(hutchinson, copies)
    assert bool(jnp.all(info.succeeded))
    exact = float(oracle.target.log_prob(x))
    se = float(jnp.std(estimates, ddof=1)) / np.sqrt(n)
    assert se > 1e-4  # genuinely random ...
    assert abs(float(jnp.mean(estimates)) - exact) < 4 * se  # ... and unbiased
    first, _ = _log_prob_with_info(hutchinson, copies[:10])
    again, _ = _log_prob_with_info(hutchinson, copies[:10])
    np.testing.assert_array_equal(again, first)
    np.testing.assert_allclose(first, estimates[:10], rtol=1e-12)  # (batching changes rounding)
    other_key = flow.with_settings(divergence=nsi.HutchinsonDivergence(jax.random.key(8)))
    assert not bool(jnp.all(_log_prob_with_info(other_key, copies[:10])[0] == estimates[:10]))
    # The string form uses a fixed key.
    assert isinstance(flow.with_settings(divergence="hutchinson").divergence,
                      nsi.HutchinsonDivergence)


# ----------------------------------------------------------------------------------------------
# 4. sampling with the exact fields
# ----------------------------------------------------------------------------------------------
# The SDE tests use the default SDE solve (adaptive Heun steps at rtol = atol = 1e-2), whose
# discretisation bias must be well below the Monte Carlo tolerance (4 standard errors of 2000
# draws).


def _separated_target():
    """Two well-separated components (distance 6 between means, sd <= 0.8): responsibilities
    are 0 or 1 up to ~1e-9."""
    return GaussianMixture(
        np.array([0.3, 0.7]),
        np.array([[-3.0, 0.0], [3.0, 1.0]]),
        np.array([[[0.5, 0.1], [0.1, 0.3]], [[0.4, -0.1], [-0.1, 0.6]]]),
    )


def _two_component_base():
    return GaussianMixture(
        np.array([0.5, 0.5]), np.array([[0.0, -1.0], [0.0, 1.0]]), np.stack([0.5 * np.eye(2)] * 2)
    )


def _mixture_moments(mix):
    mean = mix.weights @ mix.means
    second = jnp.einsum("k,kij->ij", mix.weights,
                        mix.covariances + jnp.einsum("ki,kj->kij", mix.means, mix.means))
    return mean, second - jnp.outer(mean, mean)


def _assert_within_mc_error(sample, expected, what):
    n = sample.shape[0]
    se = jnp.std(sample, axis=0, ddof=1) / jnp.sqrt(n)
    z = (jnp.mean(sample, axis=0) - expected) / se
    assert bool(jnp.all(jnp.abs(z) < 4.0)), f"{what}: z-scores {z}"


def _assert_matches_mixture(x, mix):
    """Mean, covariance and mixture weights within 4 Monte Carlo standard errors (from x)."""
    assert bool(jnp.all(jnp.isfinite(x)))
    mean, cov = _mixture_moments(mix)
    _assert_within_mc_error(x, mean, "mean")
    centred = x - mean
    _assert_within_mc_error(centred[:, :, None] * centred[:, None, :], cov, "covariance")
    if mix.weights.shape[0] > 1:
        # E[p(k | X)] = q_k exactly when X ~ target.
        _assert_within_mc_error(mix.responsibilities(x), mix.weights, "mixture weights")
        # With separated components the hard assignment agrees.
        labels = jnp.argmax(mix.responsibilities(x), axis=-1)
        onehot = (labels[:, None] == jnp.arange(mix.weights.shape[0])).astype(x.dtype)
        _assert_within_mc_error(onehot, mix.weights, "component frequencies")


@functools.partial(jax.jit, static_argnames="n")
def _sample(flow, key, n):
    return flow.sample(key, (n,))


def _one_sided_flow():
    return _oracle_flow("one-sided-linear", _separated_target())[0]


def _two_sided_flow():
    return _oracle_flow("linear-brownian", _separated_target(), _two_component_base())[0]


def test_ode_sampling_one_sided():
    _assert_matches_mixture(_sample(_one_sided_flow(), jax.random.key(0), 4000),
                            _separated_target())


def test_ode_sampling_two_sided_mixture_base():
    _assert_matches_mixture(_sample(_two_sided_flow(), jax.random.key(1), 2000),
                            _separated_target())


EPS_SCHEDULES = {
    "constant-0.5": 0.5,
    "constant-1": nsi.ConstantEps(1.0),
    "decaying": nsi.DecayingEps(1.0),
    "zero-ends": nsi.ZeroEndsEps(2.0),
    "callable": lambda t: 0.5 * (1 - t) ** 2,
}


@pytest.mark.parametrize("eps", ["constant-1", "decaying", "zero-ends", "callable"])
def test_sde_sampling_one_sided_velocity_only(eps):
    """No score is given: eps * s comes from the velocity. ConstantEps makes the drift singular
    at t = 1; the deterministic last step keeps every draw finite."""
    flow = _one_sided_flow().with_settings(sampler="sde", eps=EPS_SCHEDULES[eps])
    assert flow.score is None and isinstance(flow.sampler, nsi.SDESampler)
    _assert_matches_mixture(_sample(flow, jax.random.key(2), 2000), _separated_target())


@pytest.mark.parametrize(
    "eps",
    ["constant-0.5",
     pytest.param("decaying", marks=pytest.mark.slow),
     pytest.param("zero-ends", marks=pytest.mark.slow),
     pytest.param("callable", marks=pytest.mark.slow)],
)
def test_sde_sampling_two_sided_with_score(eps):
    flow = _two_sided_flow().with_settings(sampler="sde", eps=EPS_SCHEDULES[eps])
    _assert_matches_mixture(_sample(flow, jax.random.key(3), 2000), _separated_target())


@pytest.mark.parametrize(
    "eps", [1.0, pytest.param(nsi.DecayingEps(1.0), marks=pytest.mark.slow)],
    ids=["constant", "decaying"],
)
def test_backward_sde_transport_reaches_the_base(eps):
    """Target draws run backward (t = 1 -> 0) by the velocity-only SDE end up N(0, I)."""
    target = _separated_target()
    flow = _one_sided_flow()
    x1, _ = jax.jit(lambda m, k: m.sample(k, 2000))(target, jax.random.key(4))
    y = jax.jit(lambda f, k, x: f.sde_transport(k, x, 1.0, 0.0, eps=eps))(
        flow, jax.random.key(5), x1)
    _assert_matches_mixture(y, GaussianMixture.standard_normal(2))


def test_ode_transport_round_trip(x64):
    flow, _ = _oracle_flow("one-sided-trig", _separated_target(), rtol=1e-10, atol=1e-10)
    x = _test_points(_separated_target(), 6)
    encoded, decoded = jax.jit(
        lambda f, x: (f.transport(x, 1.0, 0.0), f.transport(f.transport(x, 1.0, 0.0), 0.0, 1.0))
    )(flow, x)
    np.testing.assert_allclose(decoded, x, atol=1e-7)
    assert not np.allclose(encoded, x, atol=0.1)


# ----------------------------------------------------------------------------------------------
# 5. SIFlow as a NumPyro distribution and a pytree
# ----------------------------------------------------------------------------------------------


FIXED_STEPS = dict(sampler=nsi.ODESampler(n_steps=16), likelihood=nsi.ODELikelihood(n_steps=16))


def _gaussian_flow(**settings):
    """A cheap one-sided flow to a Gaussian target (d = 2), with fixed-step sampling and
    likelihood unless `settings` (fields of `SolverSettings`) say otherwise."""
    target = GaussianMixture(np.ones(1), np.array([[1.0, -0.5]]),
                             np.array([[[0.6, 0.2], [0.2, 0.4]]]))
    return _oracle_flow("one-sided-linear", target, **(FIXED_STEPS | settings))


def test_distribution_attributes():
    flow, _ = _gaussian_flow()
    assert isinstance(flow, dist.Distribution)
    assert flow.event_shape == (2,) and flow.batch_shape == () and flow.dim == 2
    assert flow.support is constraints.real_vector
    assert isinstance(flow.interpolant, nsi.OneSidedLinearInterpolant)
    assert isinstance(flow.divergence, nsi.ExactDivergence)
    assert "SIFlow(dim=2" in repr(flow)


@pytest.mark.parametrize("shape", [(), (3,), (2, 3)])
def test_sample_and_log_prob_batch_shapes(shape):
    flow, oracle = _gaussian_flow()
    x = _sample_shape(flow, jax.random.key(0), shape)
    assert x.shape == (*shape, 2)
    lp = _log_prob_with_info(flow, x)[0]
    assert lp.shape == shape
    flat = _log_prob_with_info(flow, x.reshape(-1, 2))[0]
    np.testing.assert_allclose(lp.reshape(-1), flat, rtol=1e-6)
    # 16 fixed Tsit5 steps on a Gaussian flow: close to the exact density.
    np.testing.assert_allclose(flat, oracle.target.log_prob(x.reshape(-1, 2)), atol=1e-3)


@functools.partial(jax.jit, static_argnames="shape")
def _sample_shape(flow, key, shape):
    return flow.sample(key, shape)


def test_flow_as_jit_and_vmap_argument():
    flow, _ = _gaussian_flow()
    x = jnp.array([[0.5, 0.5], [1.0, -1.0], [2.0, 0.0]])
    jitted = jax.jit(lambda f, x: f.log_prob(x))(flow, x)
    eager = flow.log_prob(x)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    # vmap over points with the flow broadcast ...
    per_point = jax.jit(jax.vmap(lambda f, y: f.log_prob(y), in_axes=(None, 0)))(flow, x)
    np.testing.assert_allclose(per_point, eager, rtol=1e-6)
    # ... and over a batch of flows (stacked leaves: two different targets).
    other, _ = _oracle_flow(
        "one-sided-linear",
        GaussianMixture(np.ones(1), np.array([[-1.0, 0.0]]), np.array([np.eye(2)])),
        **FIXED_STEPS,
    )
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), flow, other)
    both = jax.jit(jax.vmap(lambda f: f.log_prob(x)))(stacked)
    np.testing.assert_allclose(both[0], eager, rtol=1e-6)
    np.testing.assert_allclose(both[1], jax.jit(lambda f: f.log_prob(x))(other), rtol=1e-6)
    assert not np.allclose(both[0], both[1])


def test_tree_flatten_unflatten_round_trip():
    flow, _ = _gaussian_flow(sampler=nsi.SDESampler(nsi.DecayingEps(0.5)), rtol=1e-4, atol=1e-6)
    leaves, treedef = jax.tree_util.tree_flatten(flow)
    assert leaves and all(isinstance(leaf, jax.Array) for leaf in leaves)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(rebuilt) is nsi.SIFlow
    assert rebuilt.event_shape == flow.event_shape and rebuilt.batch_shape == ()
    assert rebuilt.rtol == 1e-4 and rebuilt.atol == 1e-6
    assert rebuilt.sampler == flow.sampler
    assert jax.tree_util.tree_structure(rebuilt) == treedef
    x = jnp.array([[0.3, -0.2]])
    np.testing.assert_array_equal(_log_prob_with_info(rebuilt, x)[0],
                                  _log_prob_with_info(flow, x)[0])


def test_with_settings():
    flow, _ = _gaussian_flow(rtol=1e-4, atol=1e-6)
    sde = flow.with_settings(sampler="sde", eps=0.5)
    assert isinstance(sde.sampler, nsi.SDESampler) and sde.sampler.eps == nsi.ConstantEps(0.5)
    assert sde.sampler.n_steps is None  # adaptive steps with error control
    assert (sde.rtol, sde.atol) == (1e-4, 1e-6)
    # Fields, base and likelihood options are untouched; the original flow is unchanged.
    assert eqx.tree_equal(sde.fields, flow.fields)
    assert sde.base is flow.base and eqx.tree_equal(sde.likelihood, flow.likelihood)
    assert isinstance(flow.sampler, nsi.ODESampler)
    # A sampler object sets its options; eps alone keeps the SDE sampler's other options.
    more_steps = sde.with_settings(sampler=nsi.SDESampler(0.5, n_steps=64))
    assert isinstance(more_steps.sampler, nsi.SDESampler)
    assert more_steps.sampler.n_steps == 64 and more_steps.sampler.eps == nsi.ConstantEps(0.5)
    noisier = more_steps.with_settings(eps=2.0)
    assert noisier.sampler.n_steps == 64 and noisier.sampler.eps == nsi.ConstantEps(2.0)
    # rtol / atol change only when given.
    loose = flow.with_settings(rtol=1e-2)
    assert (loose.rtol, loose.atol) == (1e-2, 1e-6)
    assert isinstance(loose.sampler, nsi.ODESampler) and loose.sampler == flow.sampler
    schedule = flow.with_settings(sampler="sde", eps=nsi.ZeroEndsEps(1.0))
    assert isinstance(schedule.sampler, nsi.SDESampler)
    assert schedule.sampler.eps == nsi.ZeroEndsEps(1.0)
    solve = nsi.ODELikelihood(diffrax.Dopri8())
    assert flow.with_settings(likelihood=solve).likelihood == solve
    back = sde.with_settings(sampler="ode")
    assert isinstance(back.sampler, nsi.ODESampler)
    # A whole SolverSettings replaces every setting; the flow reports it as `settings`.
    settings = nsi.SolverSettings(sampler=nsi.ODESampler(n_steps=8), rtol=1e-3, atol=1e-3)
    replaced = sde.with_settings(settings)
    assert replaced.settings == settings and replaced.likelihood == nsi.ODELikelihood()
    assert (replaced.rtol, replaced.atol) == (1e-3, 1e-3)


def test_deprecated_with_sampler_keeps_its_old_meaning():
    """`with_sampler` warns and keeps its old meaning: solver options alone keep the sampler's
    family (and an SDE's eps), eps alone switches to the SDE, `likelihood_solver` sets the
    likelihood solve."""
    flow, _ = _gaussian_flow(rtol=1e-4, atol=1e-6)
    with pytest.warns(FutureWarning, match="with_settings"):
        sde = flow.with_sampler("sde", eps=0.5)
    assert sde.settings == flow.with_settings(sampler="sde", eps=0.5).settings
    with pytest.warns(FutureWarning):
        more_steps = sde.with_sampler(n_steps=64)
    assert more_steps.sampler == nsi.SDESampler(0.5, n_steps=64)
    with pytest.warns(FutureWarning):
        ode_steps = flow.with_sampler(n_steps=32)
    assert ode_steps.sampler == nsi.ODESampler(n_steps=32)
    with pytest.warns(FutureWarning):
        schedule = flow.with_sampler(eps=nsi.ZeroEndsEps(1.0))
    assert schedule.sampler == nsi.SDESampler(nsi.ZeroEndsEps(1.0))
    with pytest.warns(FutureWarning):
        solved = flow.with_sampler(likelihood_solver=nsi.ODESampler(diffrax.Dopri8(), n_steps=12))
    assert solved.likelihood == nsi.ODELikelihood(diffrax.Dopri8(), n_steps=12)
    assert (solved.rtol, solved.atol) == (1e-4, 1e-6)


def test_standardization(x64):
    flow, _ = _gaussian_flow(rtol=1e-9, atol=1e-9, likelihood=nsi.ODELikelihood(),
                             sampler=nsi.ODESampler())
    shift, scale = np.array([10.0, -3.0]), np.array([2.0, 0.5])
    standardized = nsi.SIFlow(flow.interpolant, flow.velocity, dim=2,
                              settings=nsi.SolverSettings(rtol=1e-9, atol=1e-9),
                              standardization=nsi.Standardization(shift, scale))
    y = jnp.array([[0.2, 0.1], [1.0, -1.0]])
    x = shift + scale * y
    lp_x = _log_prob_with_info(standardized, x)[0]
    lp_y = _log_prob_with_info(flow, y)[0]
    np.testing.assert_allclose(lp_x, lp_y - np.sum(np.log(scale)), rtol=1e-10)
    key = jax.random.key(3)
    np.testing.assert_allclose(_sample(standardized, key, 5), shift + scale * _sample(flow, key, 5),
                               rtol=1e-10)
    data = np.random.default_rng(0).normal([1.0, 2.0], [3.0, 0.1], (500, 2))
    fitted = nsi.Standardization.from_data(jnp.asarray(data))
    np.testing.assert_allclose(fitted.shift, data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(fitted.scale, data.std(0), rtol=1e-12)
    np.testing.assert_allclose(fitted.forward(fitted.inverse(y)), y, rtol=1e-12)


@pytest.mark.slow  # statistical; `make test-all`
def test_prior_under_nuts():
    """theta ~ flow (exact velocity to N(mu0, S0)), y | theta ~ N(theta, R): the posterior is
    Gaussian in closed form; the NUTS posterior mean must match it within MC error (ESS-based)."""
    mu0 = np.array([1.0, -0.5])
    s0 = np.array([[0.6, 0.2], [0.2, 0.4]])
    r = np.array([[0.3, 0.0], [0.0, 0.5]])
    y = np.array([2.0, 0.5])
    flow, oracle = _gaussian_flow()
    # The fixed-step likelihood is the exact prior density to within 1e-3 here (checked in
    # test_sample_and_log_prob_batch_shapes), a negligible shift of the posterior.
    precision = np.linalg.inv(s0) + np.linalg.inv(r)
    post_cov = np.linalg.inv(precision)
    post_mean = post_cov @ (np.linalg.solve(s0, mu0) + np.linalg.solve(r, y))

    def model(y):
        theta = numpyro.sample("theta", flow)
        numpyro.sample("y", dist.MultivariateNormal(theta, covariance_matrix=r), obs=y)

    mcmc = numpyro.infer.MCMC(numpyro.infer.NUTS(model), num_warmup=200, num_samples=200,
                              num_chains=1, progress_bar=False)
    mcmc.run(jax.random.key(0), y)
    theta = mcmc.get_samples()["theta"]
    assert theta.shape == (200, 2) and bool(jnp.all(jnp.isfinite(theta)))
    ess = effective_sample_size(np.asarray(theta)[None])
    assert bool(np.all(ess > 20))
    se = np.sqrt(np.diag(post_cov) / ess)
    assert bool(np.all(np.abs(np.asarray(theta.mean(0)) - post_mean) < 4 * se)), (
        theta.mean(0), post_mean, se)


# ----------------------------------------------------------------------------------------------
# 6. bad input
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda f: f.log_prob(jnp.zeros(3)),
        lambda f: f.log_prob(jnp.zeros((4, 1))),
        lambda f: f.log_prob(jnp.float32(1.0)),
        lambda f: f.log_prob_with_info(jnp.zeros((2, 3))),
        lambda f: f.log_prob_at(jnp.zeros((2, 3)), 0.5),
        lambda f: f.transport(jnp.zeros((2, 3)), 1.0, 0.0),
        lambda f: f.sde_transport(jax.random.key(0), jnp.zeros((2, 3)), 1.0, 0.0),
    ],
    ids=["log_prob", "log_prob-dim1", "scalar", "log_prob_with_info", "log_prob_at", "transport",
         "sde_transport"],
)
def test_wrong_trailing_dimension(call):
    flow, _ = _gaussian_flow()
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
        call(flow)


def _identity(t, x):
    return x


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: nsi.SIFlow(nsi.OneSidedLinearInterpolant(), 3.0, dim=2), TypeError, "velocity"),
        (lambda: nsi.SIFlow(nsi.OneSidedLinearInterpolant(), None, dim=2), TypeError, "velocity"),
        (lambda: nsi.SIFlow(nsi.LinearInterpolant(nsi.BrownianGamma()), _identity, "s", dim=2),
         TypeError, "score"),
        (lambda: nsi.SIFlow("linear", _identity, dim=2), TypeError, "interpolant"),
        (lambda: nsi.SIFlow(nsi.LinearInterpolant(), _identity, base=dist.Normal(0.0, 1.0), dim=2),
         ValueError, "event shape"),
        (lambda: nsi.SIFlow(nsi.LinearInterpolant(), _identity, base=dist.Normal(jnp.zeros(2), 1.0)),
         ValueError, "event shape"),
        (lambda: nsi.SIFlow(nsi.LinearInterpolant(), _identity,
                            base=dist.Normal(jnp.zeros(3), 1.0).to_event(1), dim=2),
         ValueError, "Inconsistent dimensions"),
        (lambda: nsi.SIFlow(nsi.OneSidedLinearInterpolant(), _identity,
                            base=dist.Normal(jnp.zeros(2), 1.0).to_event(1)),
         ValueError, "one-sided"),
        (lambda: nsi.SIFlow(nsi.MirrorInterpolant(), _identity, dim=2), ValueError, "Mirror"),
        (lambda: nsi.SIFlow(nsi.LinearInterpolant(nsi.BrownianGamma()), _identity, dim=2,
                            settings=nsi.SolverSettings(sampler=nsi.SDESampler())),
         ValueError, "score"),
        (lambda: nsi.SIFlow(nsi.OneSidedLinearInterpolant(), _identity, dim=2,
                            settings=nsi.SolverSettings(sampler="euler")), ValueError, "sampler"),
        (lambda: nsi.SIFlow(nsi.OneSidedLinearInterpolant(), _identity, dim=2,
                            settings=nsi.SolverSettings(divergence="trace")),
         ValueError, "divergence"),
        (lambda: nsi.SIFlow(nsi.OneSidedLinearInterpolant(), _identity, dim=2,
                            settings=nsi.SolverSettings(likelihood=nsi.ODESampler())),
         TypeError, "likelihood must be a numpyro_si ODELikelihood"),
        (lambda: nsi.SIFlow(nsi.OneSidedLinearInterpolant(), _identity, dim=2,
                            settings=nsi.SolverSettings(rtol=0.0)), ValueError, "rtol"),
        (lambda: nsi.SIFlow(nsi.OneSidedLinearInterpolant(), _identity, dim=2,
                            settings=dict(rtol=1e-3)), TypeError, "SolverSettings"),
        (lambda: nsi.SIFlow(nsi.OneSidedLinearInterpolant(), _identity), ValueError, "dimension"),
        (lambda: nsi.SIFlow(nsi.OneSidedLinearInterpolant(), _identity, dim=0), ValueError, "dim"),
        (lambda: nsi.SIFlow(nsi.OneSidedLinearInterpolant(), _identity, dim=2,
                            settings=nsi.SolverSettings(sampler=nsi.SDESampler(-1.0))),
         ValueError, "eps0"),
        (lambda: nsi.SIFlow(nsi.OneSidedLinearInterpolant(), _identity, dim=2, width=3),
         TypeError, r"unexpected option\(s\) \['width'\]"),
        (lambda: nsi.SIFlow(nsi.OneSidedLinearInterpolant(), _identity, dim=2,
                            standardization=nsi.Standardization(jnp.zeros(3), jnp.ones(3))),
         ValueError, "dimension"),
    ],
    ids=["velocity-not-callable", "velocity-none", "score-not-callable", "not-an-interpolant",
         "base-scalar-event", "base-batch-shape", "base-wrong-dim", "one-sided-with-base",
         "mirror", "sde-without-score", "unknown-sampler", "unknown-divergence",
         "sampler-as-likelihood", "rtol-zero", "settings-not-settings", "dim-not-inferable",
         "dim-zero", "negative-eps0", "unknown-option", "standardization-dim"],
)
def test_bad_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    "option, value, new",
    [("sampler", "sde", r"SolverSettings\(sampler="),
     ("eps", 0.5, r"SolverSettings\(sampler=nsi.SDESampler\(eps\)\)"),
     ("rtol", 1e-3, r"SolverSettings\(rtol="),
     ("atol", 1e-3, r"SolverSettings\(atol="),
     ("divergence", "exact", r"SolverSettings\(divergence="),
     ("likelihood_solver", nsi.ODESampler(), r"SolverSettings\(likelihood=")],
)
def test_renamed_options_name_their_new_spelling(option, value, new):
    """The solver options SIFlow took before SolverSettings are refused with where they went."""
    with pytest.raises(TypeError, match=f"'{option}', which is now .*{new}"):
        nsi.SIFlow(nsi.OneSidedLinearInterpolant(), _identity, dim=2, **{option: value})


def test_bad_with_settings_and_time():
    flow, _ = _gaussian_flow()
    two_sided = nsi.SIFlow(nsi.LinearInterpolant(nsi.BrownianGamma()), _identity, dim=2)
    with pytest.raises(ValueError, match="score"):
        two_sided.with_settings(sampler="sde", eps=0.5)
    with pytest.raises(ValueError, match="eps0"):
        flow.with_settings(sampler="sde", eps=-0.5)
    with pytest.raises(ValueError, match="sampler"):
        flow.with_settings(sampler="langevin")
    with pytest.raises(ValueError, match="divergence"):
        flow.with_settings(divergence="exactly")
    # eps is the SDE's noise level: refused next to an ODE sampler, named or given as an object,
    # and alone on an ODE flow (the deprecated with_sampler(eps=...) switched to the SDE instead)
    with pytest.raises(ValueError, match="sampler='sde'"):
        flow.with_settings(sampler=nsi.ODESampler(), eps=0.5)
    with pytest.raises(ValueError, match="sampler='sde'"):
        flow.with_settings(sampler="ode", eps=0.5)
    with pytest.raises(ValueError, match="sampler='sde'"):
        flow.with_settings(eps=0.5)
    with pytest.raises(TypeError, match="likelihood must be a numpyro_si ODELikelihood"):
        flow.with_settings(likelihood=nsi.ODESampler())
    with pytest.raises(ValueError, match="either a SolverSettings or the settings to change"):
        flow.with_settings(nsi.SolverSettings(), rtol=1e-3)
    with pytest.raises(TypeError, match="settings must be a SolverSettings"):
        flow.with_settings(dict(rtol=1e-3))
    with pytest.raises(TypeError, match="n_steps"):
        flow.with_settings(n_steps=64)
    with pytest.raises(ValueError, match=r"t must lie in \[0.0, 1.0\]"):
        flow.log_prob_at(jnp.zeros(2), 1.5)


# ----------------------------------------------------------------------------------------------
# 7. step budget
# ----------------------------------------------------------------------------------------------


def test_likelihood_out_of_steps_is_minus_inf():
    flow, _ = _gaussian_flow(likelihood=nsi.ODELikelihood(max_steps=2), rtol=1e-8, atol=1e-8)
    x = jnp.array([[0.5, 0.5], [1.0, -1.0]])
    log_prob, info = _log_prob_with_info(flow, x)
    np.testing.assert_array_equal(log_prob, -jnp.inf)
    assert not bool(jnp.any(info.succeeded))
    assert bool(jnp.all(info.num_steps <= 2))
    np.testing.assert_array_equal(jax.jit(lambda f, x: f.log_prob(x))(flow, x), -jnp.inf)
    # With the default budget the same flow succeeds.
    ok, info = _log_prob_with_info(flow.with_settings(likelihood=nsi.ODELikelihood()), x)
    assert bool(jnp.all(info.succeeded)) and bool(jnp.all(jnp.isfinite(ok)))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_sampling_out_of_steps_raises(jit):
    flow, _ = _gaussian_flow(sampler=nsi.ODESampler(max_steps=2), rtol=1e-8, atol=1e-8)
    sample = _sample if jit else (lambda f, k, n: f.sample(k, (n,)))
    with pytest.raises(RuntimeError, match="max_steps"):
        jax.block_until_ready(sample(flow, jax.random.key(0), 3))


# ----------------------------------------------------------------------------------------------
# a fixed-step likelihood checked against the adaptive solve
# ----------------------------------------------------------------------------------------------


def test_with_fixed_step_likelihood_takes_the_fewest_steps_within_max_error(x64):
    target = fixed_mixture(500, 2, 3)
    flow, oracle = _oracle_flow("one-sided-linear", target, rtol=1e-8, atol=1e-8,
                                likelihood=nsi.ODELikelihood())
    x, _ = oracle.target.sample(jax.random.key(0), 50)
    candidates = (2, 4, 8, 16)
    fast, report = flow.with_fixed_step_likelihood(x, max_error=1e-3, candidates=candidates)
    k = report["n_steps"]
    assert k in candidates and fast.likelihood.n_steps == k
    assert flow.likelihood.n_steps is None  # the original is unchanged
    assert report["adaptive_steps"] > k, report
    # the reported error is the largest |difference| at the points, and it is within max_error;
    # every smaller candidate was tried and failed
    exact = _log_prob_with_info(flow, x)[0]
    error = float(jnp.max(jnp.abs(_log_prob_with_info(fast, x)[0] - exact)))
    assert report["max_error"] == pytest.approx(error, rel=1e-6) and error <= 1e-3
    assert list(report["errors"]) == [c for c in candidates if c <= k]
    assert all(report["errors"][c] > 1e-3 for c in candidates if c < k)
    # against the analytic density too (the adaptive solve at 1e-8 is exact to ~1e-7 here)
    assert float(jnp.max(jnp.abs(_log_prob_with_info(fast, x)[0] - oracle.target.log_prob(x)))) \
        <= 1e-3 + 1e-6
    # a looser requirement never needs more steps
    looser, loose_report = flow.with_fixed_step_likelihood(x, max_error=1e-1, candidates=candidates)
    assert loose_report["n_steps"] <= k
    # no candidate good enough (or cheaper than the adaptive solve): the flow itself comes back
    same, none = flow.with_fixed_step_likelihood(x, max_error=1e-14, candidates=(2, 4))
    assert same is flow and none["n_steps"] is None and set(none["errors"]) == {2, 4}


def test_with_fixed_step_likelihood_input_errors():
    flow, _ = _gaussian_flow()  # a fixed-step likelihood already
    x = jnp.zeros((5, 2))
    with pytest.raises(ValueError, match="already has fixed steps"):
        flow.with_fixed_step_likelihood(x)
    adaptive = flow.with_settings(likelihood=nsi.ODELikelihood())
    for bad in (0.0, -1.0, float("nan"), None, True):
        with pytest.raises(ValueError, match="max_error"):
            adaptive.with_fixed_step_likelihood(x, max_error=bad)
    with pytest.raises(ValueError, match="candidates"):
        adaptive.with_fixed_step_likelihood(x, candidates=(0, 4))
    with pytest.raises(ValueError, match="shape"):
        adaptive.with_fixed_step_likelihood(jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        adaptive.with_fixed_step_likelihood(jnp.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        adaptive.with_fixed_step_likelihood(x.at[0, 0].set(jnp.nan))
    tiny_budget = flow.with_settings(likelihood=nsi.ODELikelihood(max_steps=1))
    with pytest.raises(ValueError, match="ran out of steps"):
        tiny_budget.with_fixed_step_likelihood(x + 1.0)
