"""`SIFlowBoost`: flow moves inside `numpyro.infer.MCMC`, in the unconstrained space."""

import arviz
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from helpers import toy_conditional_flow
from numpyro.distributions import constraints
from numpyro.infer import MCMC, NUTS, SA

import numpyro_si as nsi
from numpyro_si.inference import SIFlowBoost, unconstrained_draws
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle

from . import assert_unbiased, assert_within_mc_error, mixture_problem


@pytest.mark.slow
def test_boosted_nuts_recovers_mode_weights(x64):
    target, _, flow = mixture_problem()

    def model():
        numpyro.sample("x", target.to_numpyro())

    n_chains, n_samples = 4, 1500
    mcmc = MCMC(SIFlowBoost(NUTS(model), flow), num_warmup=200, num_samples=n_samples,
                num_chains=n_chains, chain_method="vectorized", progress_bar=False)
    # every chain starts in the minor mode, where NUTS alone stays (see test_mixed)
    mcmc.run(jax.random.key(0), init_params={"x": jnp.tile(target.means[0], (n_chains, 1))})
    x = mcmc.get_samples(group_by_chain=True)["x"]
    assert x.shape == (n_chains, n_samples, 2)
    weight_se, ess = assert_unbiased(x, target, burn_in=0)
    assert weight_se < 0.01, f"too few effective draws for the mode weight (ESS {ess:.0f})"

    stats = arviz.from_numpyro(mcmc).sample_stats
    for name in ("acceptance_rate", "diverging", "global_accept_prob", "global_is_accepted"):
        assert stats[name].shape == (n_chains, n_samples)
    assert float(stats.acceptance_rate.mean()) > 0.7
    assert 0.5 < float(stats.global_accept_prob.mean()) < 0.95
    assert float(stats.global_is_accepted.mean()) > 0.5


@pytest.mark.slow
def test_constrained_sites_use_the_unconstrained_space(x64):
    """A positive site: the flow lives on (m, log s); the draws come back constrained."""
    loc_m, scale_m, loc_log_s, scale_log_s = -1.0, 2.0, 1.0, 0.5

    def model():
        numpyro.sample("m", dist.Normal(loc_m, scale_m))
        numpyro.sample("s", dist.LogNormal(loc_log_s, scale_log_s))

    # ravelled unconstrained vector: sites sorted by name, (m, log s)
    prior = {"m": jnp.array([0.5, -2.0]), "s": jnp.array([0.3, 4.0])}
    np.testing.assert_allclose(unconstrained_draws(model, prior),
                               [[0.5, np.log(0.3)], [-2.0, np.log(4.0)]], rtol=1e-12)

    mean = jnp.array([loc_m, loc_log_s])
    cov = 1.3 * jnp.diag(jnp.array([scale_m, scale_log_s]) ** 2)
    proposal = GaussianMixture(jnp.ones(1), mean[None], cov[None])
    oracle = GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), proposal)
    flow = nsi.SIFlow(oracle.interpolant, oracle.velocity, dim=2,
                      settings=nsi.SolverSettings(rtol=1e-7, atol=1e-7))
    mcmc = MCMC(SIFlowBoost(NUTS(model), flow, n_local=2), num_warmup=200, num_samples=2000,
                progress_bar=False)
    mcmc.run(jax.random.key(1))
    samples = mcmc.get_samples(group_by_chain=True)
    assert bool(jnp.all(samples["s"] > 0))
    assert_within_mc_error(samples["s"], np.exp(loc_log_s + scale_log_s**2 / 2), "E s")
    assert_within_mc_error(samples["m"], loc_m, "E m")

    # local and global acceptance reach ArviZ's sample_stats
    stats = arviz.from_numpyro(mcmc).sample_stats
    for name in ("acceptance_rate", "diverging", "global_accept_prob", "global_is_accepted"):
        assert stats[name].shape == (1, 2000)
    assert float(stats.acceptance_rate.mean()) > 0.7
    # q is the target with 1.3x the variances: the flow moves are mostly accepted
    assert float(stats.global_accept_prob.mean()) > 0.7


def test_argument_errors(x64):
    target, _, flow = mixture_problem()

    def model():
        numpyro.sample("x", target.to_numpyro())

    def model_3d():
        numpyro.sample("x", dist.Normal(jnp.zeros(3), 1.0).to_event(1))

    with pytest.raises(ValueError, match="Hutchinson"):
        SIFlowBoost(NUTS(model), flow.with_settings(divergence="hutchinson"))
    # the kernel moves in the model's unconstrained space: a flow on a support is refused
    with pytest.raises(TypeError, match="unconstrained space"):
        SIFlowBoost(NUTS(model), nsi.ConstrainedSIFlow(flow, constraints.positive))
    with pytest.raises(TypeError, match=r"ConditionalSIFlow.*flow\.condition\(y\)"):
        SIFlowBoost(NUTS(model), toy_conditional_flow())
    with pytest.raises(TypeError, match="refresh"):
        SIFlowBoost(SA(model), flow)
    with pytest.raises(ValueError, match="n_local"):
        SIFlowBoost(NUTS(model), flow, n_local=0)
    mcmc = MCMC(SIFlowBoost(NUTS(model_3d), flow), num_warmup=1, num_samples=1,
                progress_bar=False)
    with pytest.raises(ValueError, match="3 entries"):
        mcmc.run(jax.random.key(0))
