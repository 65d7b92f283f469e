"""Flows on constrained supports: ConstrainedSIFlow densities against closed forms (exact oracle
velocity, float64), fit(support=...), support checks, errors, NUTS with both routes."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.diagnostics import effective_sample_size
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.handlers import reparam
from numpyro.infer import MCMC, NUTS
from numpyro.infer.util import log_density

import numpyro_si as nsi
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle

MEAN = np.array([0.3, -0.5, 0.2])
COV = np.array([[0.5, 0.2, 0.0], [0.2, 0.3, 0.05], [0.0, 0.05, 0.4]])
ACCURATE = nsi.SolverSettings(rtol=1e-10, atol=1e-10,
                              likelihood=nsi.ODELikelihood(diffrax.Dopri8()))
FAST = nsi.SolverSettings(likelihood=nsi.ODELikelihood(n_steps=16),
                          sampler=nsi.ODESampler(n_steps=16))


def gaussian_flow(dim, settings=None):
    """An SIFlow whose density is exactly N(MEAN[:dim], COV[:dim, :dim]) (oracle velocity)."""
    target = GaussianMixture(np.ones(1), MEAN[None, :dim], COV[None, :dim, :dim])
    oracle = GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), target)
    return nsi.SIFlow(oracle.interpolant, oracle.velocity, dim=dim, settings=settings)


@jax.jit
def log_prob(flow, x):
    """Jitted once per flow structure: flows with other arrays but the same structure reuse it."""
    return flow.log_prob(x)


def normal_log_prob(u):
    dim = u.shape[-1]
    return dist.MultivariateNormal(MEAN[:dim], COV[:dim, :dim]).log_prob(u)


# ----------------------------------------------------------------------------------------------
# densities against closed forms
# ----------------------------------------------------------------------------------------------

LOWER, UPPER = np.array([-1.0, 2.0]), np.array([3.0, 2.5])
CLOSED_FORMS = {
    # support: (points in the support, exact log density)
    "lognormal": (
        constraints.positive, np.array([[1.2, 0.4], [5.0, 0.05]]),
        lambda x: normal_log_prob(np.log(x)) - np.log(x).sum(-1),
    ),
    "logit-normal": (
        constraints.unit_interval, np.array([[0.2, 0.4], [0.9, 0.01]]),
        lambda x: normal_log_prob(np.log(x / (1 - x))) - np.log(x * (1 - x)).sum(-1),
    ),
    "scaled-logit-normal": (
        constraints.interval(LOWER, UPPER), np.array([[0.0, 2.1], [2.9, 2.4]]),
        lambda x: (
            normal_log_prob(np.log((x - LOWER) / (UPPER - x)))
            + np.log((UPPER - LOWER) / ((x - LOWER) * (UPPER - x))).sum(-1)
        ),
    ),
}
SLOW_CLOSED_FORMS = {
    "shifted-lognormal": (
        constraints.greater_than(-2.0), np.array([[-1.5, 0.0], [3.0, -1.9]]),
        lambda x: normal_log_prob(np.log(x + 2.0)) - np.log(x + 2.0).sum(-1),
    ),
}


@pytest.mark.parametrize(
    "name",
    [*CLOSED_FORMS, *(pytest.param(name, marks=pytest.mark.slow) for name in SLOW_CLOSED_FORMS)],
)
def test_log_prob_matches_closed_form(name, x64):
    support, x, exact = {**CLOSED_FORMS, **SLOW_CLOSED_FORMS}[name]
    flow = nsi.ConstrainedSIFlow(gaussian_flow(2, ACCURATE), support)
    assert flow.event_shape == (2,) and flow.batch_shape == ()
    assert flow.support == constraints.independent(support, 1) or name == "scaled-logit-normal"
    np.testing.assert_allclose(log_prob(flow, jnp.asarray(x)), exact(x), rtol=0, atol=1e-8)


@pytest.mark.parametrize(
    ("support", "x"),
    [
        (constraints.simplex, np.array([[0.2, 0.3, 0.1, 0.4], [0.05, 0.8, 0.05, 0.1]])),
        pytest.param(constraints.ordered_vector, np.array([[-1.0, 0.5, 0.6], [0.0, 2.0, 5.0]]),
                     marks=pytest.mark.slow),
        pytest.param(constraints.positive_definite,
                     np.array([[[2.0, 0.5], [0.5, 1.0]], [[0.3, -0.1], [-0.1, 4.0]]]),
                     marks=pytest.mark.slow),
    ],
    ids=["simplex", "ordered", "positive-definite"],
)
def test_log_prob_of_vector_and_matrix_supports(support, x, x64):
    """Supports whose bijection mixes coordinates: the Gaussian pushed through biject_to(support)
    by NumPyro itself is the reference."""
    flow = nsi.ConstrainedSIFlow(gaussian_flow(3, ACCURATE), support)
    reference = dist.TransformedDistribution(
        dist.MultivariateNormal(MEAN, COV), biject_to(support)
    )
    assert flow.event_shape == reference.event_shape == x.shape[1:]
    assert bool(jnp.all(flow.support.check(x)))
    assert flow.support is support
    np.testing.assert_allclose(log_prob(flow, jnp.asarray(x)), reference.log_prob(x), rtol=0,
                               atol=1e-8)


def test_pytree_sample_and_maps():
    """Through jax.jit as an argument; samples inside the support; push_forward / pull_back
    invert each other; interval bounds are leaves, so flows with other bounds share a trace."""
    support = constraints.interval(jnp.array([0.0, -1.0]), jnp.array([1.0, 4.0]))
    flow = nsi.ConstrainedSIFlow(gaussian_flow(2, FAST), support)
    x = jax.jit(lambda f, k: f.sample(k, (50,)))(flow, jax.random.key(0))
    assert x.shape == (50, 2)
    assert bool(jnp.all(flow.support.check(x)))
    leaves, treedef = jax.tree.flatten(flow)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert type(rebuilt) is nsi.ConstrainedSIFlow and rebuilt.constraint.eq(support, static=False)
    z = jnp.array([[0.1, -0.3], [1.0, 0.5]])
    round_trip = jax.jit(lambda f, z: f.pull_back(f.push_forward(z)))(flow, z)
    np.testing.assert_allclose(round_trip, z, atol=1e-3)
    assert isinstance(flow.flow, nsi.SIFlow) and flow.base is flow.flow.base


# ----------------------------------------------------------------------------------------------
# fit(support=...)
# ----------------------------------------------------------------------------------------------

SMALL = dict(network=nsi.FieldMLPSpec(width=16, depth=2), num_steps=60, batch_size=100,
             validation=nsi.Validation(fraction=0.0), show_progress=False)


def test_fit_with_support_fits_the_unconstrained_draws():
    """fit(data, support=positive) is fit(log data) wrapped in the exp bijection: same key, same
    parameters; the returned density is the unconstrained one plus the log-Jacobian."""
    data = jnp.exp(jnp.array([1.0, -2.0]) + 0.5 * jax.random.normal(jax.random.key(0), (400, 2)))
    flow, history = nsi.fit(jax.random.key(1), data, support=constraints.positive, **SMALL)
    plain, _ = nsi.fit(jax.random.key(1), jnp.log(data), **SMALL)
    assert isinstance(flow, nsi.ConstrainedSIFlow) and history.num_steps == 60
    assert flow.support == constraints.independent(constraints.positive, 1)
    for a, b in zip(jax.tree.leaves(flow.flow), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(a, b)
    x = data[:5]
    np.testing.assert_allclose(
        log_prob(flow, x), log_prob(plain, jnp.log(x)) - jnp.log(x).sum(-1), rtol=1e-5
    )
    samples = flow.sample(jax.random.key(2), (20,))
    assert samples.shape == (20, 2) and bool(jnp.all(samples > 0))
    # no transform: a plain SIFlow
    same, _ = nsi.fit(jax.random.key(1), jnp.log(data), support=constraints.real_vector, **SMALL)
    assert type(same) is nsi.SIFlow
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_fit_on_the_simplex():
    data = jax.random.dirichlet(jax.random.key(0), jnp.array([2.0, 3.0, 4.0]), (300,))
    flow, _ = nsi.fit(jax.random.key(1), data, support=constraints.simplex, **SMALL)
    assert flow.flow.dim == 2 and flow.event_shape == (3,) and flow.support is constraints.simplex
    samples = jax.jit(lambda f, k: f.sample(k, (10,)))(flow, jax.random.key(2))
    np.testing.assert_allclose(samples.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("data", "support", "error", "match"),
    [
        (np.array([[1.0, 2.0], [-1.0, 3.0], [2.0, 2.0], [0.5, -0.1]]), constraints.positive,
         ValueError, r"2 row\(s\) \(rows 1, 3\) outside the support Positive"),
        (np.array([[0.5, 0.5], [0.0, 0.5]]), constraints.unit_interval, ValueError,
         r"1 row\(s\) \(rows 1\) on the boundary of the support UnitInterval"),
        (np.array([[1.0, np.nan], [1.0, 1.0], [np.inf, 1.0]]), constraints.positive, ValueError,
         r"NaN or inf in 2 row\(s\) \(rows 0, 2\)"),
        (np.ones((3, 1)), constraints.simplex, ValueError, "at least one unconstrained coordinate"),
        (np.ones((3, 2)), constraints.positive_definite, ValueError, r"shape \(N, k, k\)"),
        (np.ones((3, 2)), constraints.interval(np.zeros(3), np.full(3, 2.0)), ValueError,
         r"does not fit samples with event shape \(2,\)"),
        (np.ones((3, 2)), constraints.boolean, ValueError, "discrete"),
        (np.ones((3, 2)), "positive", TypeError, "must be a numpyro.distributions.constraints"),
        (np.ones((3, 2), dtype=int), constraints.positive, TypeError, "floating-point"),
    ],
    ids=["outside", "boundary", "nan", "simplex-1d", "matrix-shape", "bounds-shape", "discrete",
         "not-a-constraint", "integer"],
)
def test_bad_constrained_data(data, support, error, match):
    with pytest.raises(error, match=match):
        nsi.fit(jax.random.key(0), data, support=support, num_steps=1, show_progress=False)


def test_constrained_flow_needs_an_siflow():
    with pytest.raises(TypeError, match="must be an SIFlow"):
        nsi.ConstrainedSIFlow(dist.Normal(jnp.zeros(2), 1.0).to_event(1), constraints.positive)
    with pytest.raises(ValueError, match="Incompatible shapes"):
        nsi.ConstrainedSIFlow(gaussian_flow(2), constraints.interval(np.zeros(3), np.ones(3)))


# ----------------------------------------------------------------------------------------------
# a constrained prior under NUTS, both routes
# ----------------------------------------------------------------------------------------------

NOISE, Y = 0.5, np.array([0.9, -0.1])


def model(prior, y=None):
    theta = numpyro.sample("theta", prior)
    numpyro.sample("y", dist.Normal(jnp.log(theta), NOISE).to_event(1), obs=y)


def exact_posterior_of_log_theta():
    cov0 = COV[:2, :2]
    cov = np.linalg.inv(np.linalg.inv(cov0) + np.eye(2) / NOISE**2)
    return cov @ (np.linalg.solve(cov0, MEAN[:2]) + Y / NOISE**2), cov


def test_model_log_density_of_both_routes():
    """The joint log density of a model with the positive prior, against closed forms: density
    route at theta, log LogNormal(theta; m, S) + log p(y | log theta); latent route at z (site
    `theta_base`), log N(z; 0, I) + log p(y | log T(z)) with the flow map T(z) = m + S^(1/2) z
    (linear paths between commuting Gaussians). 16 fixed Tsit5 steps: error ~1e-6. (NUTS itself:
    the slow test below.)"""
    prior = nsi.ConstrainedSIFlow(gaussian_flow(2, FAST), constraints.positive)
    mean, cov = MEAN[:2], COV[:2, :2]
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    sqrt_cov = eigenvectors @ np.diag(np.sqrt(eigenvalues)) @ eigenvectors.T
    point = np.array([0.4, -0.8])

    def log_lik(u):
        return dist.Normal(u, NOISE).to_event(1).log_prob(Y)

    theta = np.exp(point)
    cases = [
        (model, {"theta": theta}, normal_log_prob(point) - point.sum() + log_lik(point)),
        (reparam(model, config={"theta": nsi.FlowReparam()}), {"theta_base": point},
         dist.Normal(0.0, 1.0).log_prob(point).sum() + log_lik(mean + sqrt_cov @ point)),
    ]
    for run, params, exact in cases:

        @jax.jit
        def value_and_theta(params, run=run):
            value, trace = log_density(run, (prior,), {"y": Y}, params)
            return value, trace["theta"]["value"]

        value, theta_value = value_and_theta(params)
        np.testing.assert_allclose(value, exact, rtol=1e-5)
    # the latent route's theta is T(z) through exp
    np.testing.assert_allclose(theta_value, np.exp(mean + sqrt_cov @ point), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("route", ["density", "latent"])
def test_nuts_with_a_positive_prior(route):
    """theta ~ lognormal (a Gaussian flow through exp), y ~ N(log theta, NOISE^2 I): the posterior
    of log theta is Gaussian in closed form; its NUTS mean must match within 4 ESS-based standard
    errors. (16 fixed ODE steps: the prior density is exact to about 1e-3.)"""
    prior = nsi.ConstrainedSIFlow(gaussian_flow(2, FAST), constraints.positive)
    run = model if route == "density" else reparam(model, config={"theta": nsi.FlowReparam()})
    mcmc = MCMC(NUTS(run), num_warmup=200, num_samples=300, progress_bar=False)
    mcmc.run(jax.random.key(1), prior, y=Y)
    samples = mcmc.get_samples()
    assert ("theta_base" in samples) == (route == "latent")
    log_theta = np.log(np.asarray(samples["theta"]))
    mean, cov = exact_posterior_of_log_theta()
    se = np.sqrt(np.diag(cov) / effective_sample_size(log_theta[None]))
    assert np.all(np.abs(log_theta.mean(0) - mean) < 4 * se), (log_theta.mean(0), mean, se)


# ----------------------------------------------------------------------------------------------
# a fixed-step likelihood checked against the adaptive solve
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow  # the same check on the plain flow runs in `make test`
def test_with_fixed_step_likelihood_on_a_support(x64):
    """The check runs on the unconstrained images: the chosen solve is the one the inner flow
    would choose, its errors are those of the constrained log_prob, the support is kept."""
    tight = nsi.SolverSettings(rtol=1e-8, atol=1e-8)
    flow = nsi.ConstrainedSIFlow(gaussian_flow(2, tight), constraints.positive)
    x = jnp.exp(dist.MultivariateNormal(MEAN[:2], COV[:2, :2]).sample(jax.random.key(0), (30,)))
    candidates = (2, 4, 8, 16)
    fast, report = flow.with_fixed_step_likelihood(x, max_error=1e-4, candidates=candidates)
    assert isinstance(fast, nsi.ConstrainedSIFlow) and fast.constraint is constraints.positive
    inner, inner_report = flow.flow.with_fixed_step_likelihood(
        jnp.log(x), max_error=1e-4, candidates=candidates
    )
    assert report["n_steps"] == inner_report["n_steps"] == fast.flow.likelihood.n_steps
    assert report["n_steps"] is not None and report["n_steps"] < report["adaptive_steps"]
    error = float(jnp.max(jnp.abs(log_prob(fast, x) - log_prob(flow, x))))
    assert report["max_error"] == pytest.approx(error, rel=1e-6, abs=1e-12) and error <= 1e-4
    # nothing qualifies: the same flow back
    same, none = flow.with_fixed_step_likelihood(x, max_error=1e-14, candidates=(2,))
    assert same is flow and none["n_steps"] is None
    # points outside the support are named, not turned into NaN errors
    with pytest.raises(ValueError, match=r"\(rows 3\) outside the support"):
        flow.with_fixed_step_likelihood(x.at[3, 0].set(-1.0))


@pytest.mark.parametrize("support", [constraints.positive, constraints.simplex], ids=str)
def test_sample_with_info_is_sample_with_the_solves_steps(support):
    rng = np.random.default_rng(0)
    data = np.abs(rng.standard_normal((300, 3))) + 0.1
    if support is constraints.simplex:
        data = data / data.sum(axis=1, keepdims=True)
    flow = nsi.build_flow(jax.random.key(0), data, support=support,
                          network=nsi.FieldMLPSpec(width=8, depth=1))
    draws, info = flow.sample_with_info(jax.random.key(1), (2, 3))
    np.testing.assert_array_equal(draws, flow.sample(jax.random.key(1), (2, 3)))
    assert draws.shape == (2, 3, 3) and info.num_steps.shape == (2, 3)
    assert bool(info.succeeded.all()) and bool((info.num_steps > 0).all())
