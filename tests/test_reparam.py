"""The two routes for an SIFlow prior: density (NUTS through log_prob) and latent (FlowReparam)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.diagnostics import effective_sample_size
from numpyro.handlers import reparam
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

import numpyro_si as nsi
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle

PRIOR_MEAN = jnp.array([1.0, -0.5])
PRIOR_COV = jnp.array([[1.0, 0.4], [0.4, 0.6]])
NOISE = 0.5
Y = jnp.array([1.8, 0.3])


def gaussian_flow():
    """An SIFlow whose density is exactly N(PRIOR_MEAN, PRIOR_COV) (oracle velocity)."""
    target = GaussianMixture(jnp.ones(1), PRIOR_MEAN[None], PRIOR_COV[None])
    oracle = GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), target)
    return nsi.SIFlow(oracle.interpolant, oracle.velocity, dim=2), target


def model(flow, y=None):
    theta = numpyro.sample("theta", flow)
    numpyro.sample("y", dist.Normal(theta, NOISE).to_event(1), obs=y)


def exact_posterior():
    precision = jnp.linalg.inv(PRIOR_COV) + jnp.eye(2) / NOISE**2
    cov = jnp.linalg.inv(precision)
    mean = cov @ (jnp.linalg.solve(PRIOR_COV, PRIOR_MEAN) + Y / NOISE**2)
    return mean, cov


def test_push_forward_and_pull_back_invert(x64):
    flow, target = gaussian_flow()
    z = jax.random.normal(jax.random.key(0), (5, 2))
    x = jax.jit(flow.push_forward)(z)
    assert x.shape == (5, 2)
    np.testing.assert_allclose(jax.jit(flow.pull_back)(x), z, atol=1e-4)
    # push-forward of base draws follows the target: log det of the map matches the densities
    # (reverse mode: diffrax adjoints are custom_vjp)
    jac = jax.jit(jax.vmap(jax.jacrev(flow.push_forward)))(z)
    log_det = jnp.linalg.slogdet(jac)[1]
    base_lp = flow.base.log_prob(z)
    np.testing.assert_allclose(base_lp - log_det, target.log_prob(x), atol=1e-4)


def test_density_route_gradient_matches_finite_differences(x64):
    """NUTS differentiates log_prob through the adaptive ODE (diffrax's RecursiveCheckpointAdjoint:
    discretise-then-optimise, the exact gradient of the computed value). Check against central
    finite differences in float64 with tight tolerances."""
    flow, _ = gaussian_flow()
    flow = flow.with_settings(rtol=1e-10, atol=1e-10)
    x = jnp.array([0.3, -0.2])
    grad = jax.jit(jax.grad(flow.log_prob))(x)
    h = 1e-5
    log_prob = jax.jit(flow.log_prob)  # one compilation for the four evaluations
    fd = jnp.array([
        (log_prob(x + h * e) - log_prob(x - h * e)) / (2 * h) for e in jnp.eye(2)
    ])
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "route", [pytest.param("density", marks=pytest.mark.slow), "latent"]
)  # the density route is covered fast by the finite-difference gradient test
def test_nuts_posterior_with_flow_prior(route):
    flow, _ = gaussian_flow()
    run_model = model if route == "density" else reparam(model, config={"theta": nsi.FlowReparam()})
    mcmc = MCMC(NUTS(run_model), num_warmup=200, num_samples=400, progress_bar=False)
    mcmc.run(jax.random.key(1), flow, y=Y)
    samples = mcmc.get_samples()
    theta = samples["theta"]
    if route == "latent":
        assert "theta_base" in samples
    mean, cov = exact_posterior()
    ess = effective_sample_size(np.asarray(theta)[None])
    se = np.sqrt(np.diag(np.asarray(cov)) / ess)
    assert np.all(np.abs(np.asarray(theta.mean(0)) - np.asarray(mean)) < 4 * se)


def test_flow_reparam_rejects_other_sites():
    def bad_model():
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(TypeError, match="needs an SIFlow"):
        with numpyro.handlers.seed(rng_seed=0):
            reparam(bad_model, config={"x": nsi.FlowReparam()})()

    flow, _ = gaussian_flow()

    def observed_model():
        numpyro.sample("theta", flow, obs=jnp.zeros(2))

    with pytest.raises(ValueError, match="latent sites only"):
        with numpyro.handlers.seed(rng_seed=0):
            reparam(observed_model, config={"theta": nsi.FlowReparam()})()


def test_flow_reparam_under_plate():
    flow, _ = gaussian_flow()

    def plated():
        with numpyro.plate("groups", 3):
            numpyro.sample("theta", flow)

    with numpyro.handlers.seed(rng_seed=0):
        trace = numpyro.handlers.trace(reparam(plated, config={"theta": nsi.FlowReparam()})).get_trace()
    assert trace["theta_base"]["value"].shape == (3, 2)
    assert trace["theta"]["value"].shape == (3, 2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "route", ["density", "latent"]
)  # the density route's ELBO gradient (through the likelihood ODE) is slow to compile
def test_svi_with_flow_prior(route):
    """SVI with an AutoNormal guide on a model with an SIFlow prior, both routes. The posterior is
    Gaussian (and so is the latent posterior: the exact flow map is linear), so the mean-field
    optimum has the exact posterior mean. Guide draws: mean within 4 standard errors plus an
    optimisation margin of 0.05 (Adam's jitter at the end of a cosine decay; measured < 0.01).
    16 fixed ODE steps keep the density route's gradient cheap."""
    flow, _ = gaussian_flow()
    flow = flow.with_settings(sampler=nsi.ODESampler(n_steps=16),
                              likelihood=nsi.ODELikelihood(n_steps=16))
    run_model = model if route == "density" else reparam(model, config={"theta": nsi.FlowReparam()})
    guide = AutoNormal(run_model)
    schedule = optax.cosine_decay_schedule(0.05, 1500, alpha=0.01)
    svi = SVI(run_model, guide, optax.adam(schedule), Trace_ELBO())
    result = svi.run(jax.random.key(2), 1500, flow, y=Y, progress_bar=False)
    assert np.isfinite(result.losses[-1]) and result.losses[-100:].mean() < result.losses[:100].mean()
    n = 2000
    draws = Predictive(run_model, guide=guide, params=result.params, num_samples=n,
                       return_sites=["theta"])(jax.random.key(3), flow)
    theta = np.asarray(draws["theta"])
    assert theta.shape == (n, 2)
    mean, _ = exact_posterior()
    se = theta.std(0) / np.sqrt(n)
    np.testing.assert_array_less(np.abs(theta.mean(0) - np.asarray(mean)), 4 * se + 0.05)
