"""Global moves scored with the exact density of the flow's fixed-step map
(`proposal_density="map"`, numpyro_si/inference/_map_density.py)."""

import blackjax
import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import multivariate_normal

import numpyro_si as nsi
from numpyro_si.inference import SIFlowBoost, independence, mixed
from numpyro_si.inference._map_density import map_log_density, map_sample_with_log_prob
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle

from . import assert_unbiased, in_second_mode, mixture_problem, run_parallel

MIDPOINT_3 = nsi.ODESampler(diffrax.Midpoint(), n_steps=3)


def gaussian_map_flow(standardization=None):
    """The exact velocity to one Gaussian: affine in x at every t, so three midpoint steps are an
    affine map T(z) = A z + b and the map's density is exactly N(b, A A^T)."""
    target = GaussianMixture(jnp.ones(1), jnp.array([[1.5, -0.5]]),
                             jnp.array([[[0.6, 0.25], [0.25, 0.3]]]))
    oracle = GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), target)
    return nsi.SIFlow(oracle.interpolant, oracle.velocity, dim=2,
                      settings=nsi.SolverSettings(sampler=MIDPOINT_3),
                      standardization=standardization)


@pytest.mark.parametrize("standardized", [
    False, pytest.param(True, marks=pytest.mark.slow),
], ids=["plain", "standardized"])
def test_the_map_density_is_exact_where_it_is_known_in_closed_form(x64, standardized):
    standardization = (nsi.Standardization(jnp.array([0.5, -1.0]), jnp.array([2.0, 0.5]))
                       if standardized else None)
    flow = gaussian_map_flow(standardization)
    push = jax.jit(flow.push_forward)
    b = push(jnp.zeros(2))
    a = jnp.stack([push(e) - b for e in jnp.eye(2)], axis=1)  # affine: columns T(e_i) - b
    exact = multivariate_normal.logpdf

    # at points that are not draws: Newton's inversion of the map, then the log-determinant
    points = jax.random.normal(jax.random.key(0), (6, 2)) * 2.0 + b
    log_q, failed = jax.jit(jax.vmap(lambda x: map_log_density(flow, x)))(points)
    assert not bool(jnp.any(failed))
    np.testing.assert_allclose(log_q, exact(points, b, a @ a.T), rtol=0, atol=1e-10)

    # at draws: the same density, from the draw's own base point
    keys = jax.random.split(jax.random.key(1), 6)
    x, log_q_draw, failed, steps = jax.jit(jax.vmap(
        lambda k: map_sample_with_log_prob(k, flow)))(keys)
    assert not bool(jnp.any(failed)) and int(steps[0]) == 3
    np.testing.assert_allclose(log_q_draw, exact(x, b, a @ a.T), rtol=0, atol=1e-10)

    # it is the map's density, not the ODE's: three steps are measurably off the ODE's
    assert float(jnp.max(jnp.abs(log_q_draw - flow.log_prob(x)))) > 1e-4


def test_the_map_density_needs_a_fixed_step_sampler(x64):
    target, _, flow = mixture_problem()  # adaptive Tsit5
    for build in (lambda: independence.as_top_level_api(target.log_prob, flow,
                                                        proposal_density="map"),
                  lambda: mixed.as_top_level_api(target.log_prob, flow,
                                                 blackjax.mala(target.log_prob, 0.1),
                                                 proposal_density="map")):
        with pytest.raises(ValueError, match="fixed-step sampling map.*with_fast_map"):
            build()
    with pytest.raises(ValueError, match="proposal_density must be one of"):
        independence.as_top_level_api(target.log_prob, flow, proposal_density="exact")


@pytest.mark.slow  # compiles MALA and the map's inversion: `make test-all`
def test_mixed_chains_keep_the_map_density_of_their_state(x64):
    """Local MALA moves, then map moves: the stored log q is the map's density at the current
    position (Newton's inversion after local moves, the draw's own value after a jump)."""
    target, _, flow = mixture_problem(
        sampler=nsi.ODESampler(diffrax.Midpoint(), n_steps=4))
    mala = blackjax.mala(target.log_prob, 0.1)
    algorithm = mixed.as_top_level_api(target.log_prob, flow, mala, n_local=2,
                                       proposal_density="map")
    start = jnp.tile(target.means[0], (2, 1))
    states, infos = run_parallel(algorithm, jax.random.key(2), start, 15)
    assert bool(jnp.any(infos.global_is_accepted)) and not bool(jnp.any(infos.global_proposal_failed))
    positions = states.local_state.position.reshape(-1, 2)
    log_q, _ = jax.jit(jax.vmap(lambda x: map_log_density(flow, x)))(positions)
    np.testing.assert_allclose(states.proposal_logdensity.reshape(-1), log_q, rtol=0,
                               atol=1e-9)


@pytest.mark.slow  # statistical; `make test-all`
def test_imh_with_a_two_step_map_is_unbiased(x64):
    """Two midpoint steps are a crude map of the oracle's ODE, but scored with their own exact
    density the chain still targets pi exactly: mode weight and moments within Monte Carlo
    error of the closed forms, from chains all started in the minor mode."""
    target, _, flow = mixture_problem(sampler=nsi.ODESampler(diffrax.Midpoint(), n_steps=2))
    imh = independence.as_top_level_api(target.log_prob, flow, proposal_density="map")
    start = jnp.tile(target.means[0], (4, 1))
    states, infos = run_parallel(imh, jax.random.key(1), start, 2000)
    assert not bool(jnp.any(infos.proposal_logdensity_failed))
    weight_se, ess = assert_unbiased(states.position, target, burn_in=100)
    assert weight_se < 0.01, f"too few effective draws for the mode weight (ESS {ess:.0f})"
    assert float(np.mean(in_second_mode(states.position))) > 0.5


@pytest.mark.slow  # a NumPyro MCMC run: `make test-all`
def test_siflowboost_scores_a_given_map_and_refuses_an_adaptive_one(x64):
    import numpyro
    from numpyro.infer import MCMC, NUTS

    target, _, flow = mixture_problem()

    def model():
        numpyro.sample("x", target.to_numpyro())

    with pytest.raises(ValueError, match="with_fast_map"):
        SIFlowBoost(NUTS(model), flow, proposal_density="map")
    fixed = flow.with_settings(sampler=nsi.ODESampler(diffrax.Midpoint(), n_steps=4))
    mcmc = MCMC(SIFlowBoost(NUTS(model), fixed, proposal_density="map"), num_warmup=20,
                num_samples=20, num_chains=2, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(0), init_params={"x": jnp.tile(target.means[0], (2, 1))})
    x = mcmc.get_samples()["x"]
    assert x.shape == (40, 2) and bool(jnp.all(jnp.isfinite(x)))
    accepted = mcmc.get_extra_fields()["global_is_accepted"]
    assert bool(jnp.any(accepted))


@pytest.mark.slow  # learns a flow, then a NumPyro MCMC run: `make test-all`
def test_siflowboost_gives_a_learned_flow_its_fixed_step_map():
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    from numpyro_si.inference import FlowLearning

    def model():
        numpyro.sample("x", dist.Normal(jnp.array([1.0, -2.0]), 0.5).to_event(1))

    learning = FlowLearning(n_chains=4, local="mala", n_local=2, n_rounds=2, n_steps=10,
                            fit_steps=30, tempering=None, show_progress=False)
    kernel = SIFlowBoost(NUTS(model), learning=learning, proposal_density="map")
    mcmc = MCMC(kernel, num_warmup=10, num_samples=10, num_chains=2,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(0))  # a crude learned flow may warn that no map is close
    sampler = kernel.flow.settings.sampler
    assert isinstance(sampler, nsi.ODESampler) and sampler.n_steps is not None
    assert bool(jnp.all(jnp.isfinite(mcmc.get_samples()["x"])))
