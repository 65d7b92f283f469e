"""Learned priors in one line: `nsi.sample` (latent route with a checked fast map),
`SIFlow.with_fast_map`, and `JointPrior` over several named sites with their own supports."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints

import numpyro_si as nsi
from numpyro_si import _reparam
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle


def mixture_flow():
    """An SIFlow whose density is exactly a curved two-component mixture (oracle velocity)."""
    target = GaussianMixture(jnp.array([0.4, 0.6]), jnp.array([[-1.5, 0.5], [1.5, -0.5]]),
                             jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]]]))
    oracle = GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), target)
    return nsi.SIFlow(oracle.interpolant, oracle.velocity, dim=2)


@pytest.mark.slow  # compiles every candidate map: `make test-all`
def test_with_fast_map_takes_the_fewest_steps_within_the_distance():
    flow = mixture_flow()
    fast, report = flow.with_fast_map(max_distance=0.05, candidates=(1, 2, 4, 8))
    n_steps, distances = report["n_steps"], report["distances"]
    assert n_steps is not None and fast.settings.sampler.n_steps == n_steps
    assert report["distance"] == distances[n_steps] <= 0.05
    assert all(d > 0.05 for k, d in distances.items() if k < n_steps)  # fewer steps fail
    # the distance is the root-mean-square displacement of the same base draws
    z = flow.base.sample(jax.random.key(0), (1000,))
    displacement = fast.transport(z, 0.0, 1.0) - flow.transport(z, 0.0, 1.0)
    np.testing.assert_allclose(report["distance"],
                               jnp.sqrt(jnp.mean(jnp.sum(displacement**2, -1))), rtol=1e-4)

    kept, report = flow.with_fast_map(max_distance=1e-9, candidates=(1, 2))
    assert kept is flow and report["n_steps"] is None and set(report["distances"]) == {1, 2}
    with pytest.raises(ValueError, match="adaptive ODE sampler"):
        fast.with_fast_map()
    with pytest.raises(ValueError, match="max_distance"):
        flow.with_fast_map(max_distance=0.0)


def model(flow, route="latent"):
    theta = nsi.sample("theta", flow, route=route)
    numpyro.sample("y", dist.Normal(theta.sum(), 1.0), obs=0.5)


def test_sample_takes_the_latent_route_with_the_checked_fast_map():
    flow = mixture_flow()
    trace = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(flow)
    fast = _reparam.fast_map(flow)
    assert trace["theta_base"]["type"] == "sample" and not trace["theta_base"]["is_observed"]
    np.testing.assert_array_equal(trace["theta"]["value"],
                                  fast.push_forward(trace["theta_base"]["value"]))
    assert _reparam.fast_map(flow) is _reparam.fast_map(flow)  # checked once per flow

    trace = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(flow, "density")
    assert trace["theta"]["fn"] is flow and "theta_base" not in trace
    with pytest.raises(ValueError, match="route must be one of"):
        numpyro.handlers.seed(model, 0)(flow, "fast")
    with pytest.raises(TypeError, match="use numpyro.sample"):
        numpyro.handlers.seed(model, 0)(dist.Normal(0.0, 1.0))


def test_sample_checks_the_map_eagerly_inside_a_traced_model():
    flow = mixture_flow()  # a new flow: its map is checked under the trace below
    value = jax.jit(
        lambda key: numpyro.handlers.seed(lambda: nsi.sample("theta", flow), key)()
    )(jax.random.key(1))
    assert value.shape == (2,)
    assert _reparam.fast_map(flow).settings.sampler.n_steps is not None


def test_joint_prior_maps_the_flow_to_each_site_on_its_support():
    flow = mixture_flow()
    prior = nsi.JointPrior(flow, ("mu", "sigma"), ((), ()), (constraints.real,
                                                            constraints.positive))

    def new_model():
        params = prior("old_posterior")
        numpyro.sample("y", dist.Normal(params["mu"], params["sigma"]), obs=0.3)

    trace = numpyro.handlers.trace(numpyro.handlers.seed(new_model, 0)).get_trace()
    u = _reparam.fast_map(flow).push_forward(trace["old_posterior_base"]["value"])
    np.testing.assert_allclose(trace["mu"]["value"], u[0], rtol=1e-6)
    np.testing.assert_allclose(trace["sigma"]["value"], jnp.exp(u[1]), rtol=1e-6)
    assert trace["mu"]["type"] == "deterministic"
    u = prior.unconstrain(prior.sample(jax.random.key(2), 5))
    np.testing.assert_allclose(prior.unconstrain(prior.constrain(u)), u, rtol=1e-5, atol=1e-6)


def earlier_model():
    numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("sigma", dist.LogNormal(0.0, 0.3))
    numpyro.sample("w", dist.Dirichlet(jnp.ones(3)))


def test_fit_joint_prior_reads_supports_and_refuses_bad_draws():
    draws = numpyro.infer.Predictive(earlier_model, num_samples=400)(jax.random.key(0))
    prior, history = nsi.fit_joint_prior(jax.random.key(1), draws, model=earlier_model,
                                         num_steps=50, show_progress=False)
    assert prior.sites == ("mu", "sigma", "w") and prior.flow.dim == 1 + 1 + 2  # simplex: K-1
    assert prior.shapes == ((), (), (3,))
    new = prior.sample(jax.random.key(2), 100)
    assert new["w"].shape == (100, 3) and bool(jnp.all(new["sigma"] > 0))
    np.testing.assert_allclose(new["w"].sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(prior.constrain(prior.unconstrain(draws))["w"], draws["w"],
                               atol=1e-5)

    negative = draws | {"sigma": -draws["sigma"]}
    with pytest.raises(ValueError, match="site 'sigma'.*outside or on the boundary"):
        nsi.fit_joint_prior(jax.random.key(1), negative, model=earlier_model, num_steps=5)
    with pytest.raises(ValueError, match="same number of draws"):
        nsi.fit_joint_prior(jax.random.key(1), draws | {"mu": draws["mu"][:10]}, num_steps=5)
    with pytest.raises(ValueError, match="samples do not have"):
        nsi.fit_joint_prior(jax.random.key(1), {"mu": draws["mu"]},
                            supports={"tau": constraints.positive}, num_steps=5)
    with pytest.raises(ValueError, match="no latent site"):
        nsi.fit_joint_prior(jax.random.key(1), draws | {"tau": draws["mu"]},
                            model=earlier_model, num_steps=5)
