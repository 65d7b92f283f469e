"""Proposals whose log q comes from their own forward solve (`SIFlow.sample_with_log_prob`,
`proposal_density="forward"`): the same ODE density as the backward `log_prob`, from one solve."""

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints
from numpyro.infer import MCMC, NUTS

import numpyro_si as nsi
from numpyro_si.inference import SIFlowBoost, independence, mixed

from . import assert_unbiased, mixture_problem, run_parallel


def test_forward_log_q_is_the_exact_density_of_the_draw(x64):
    """Oracle flow, rtol = atol = 1e-7: the forward log q matches the closed-form mixture density
    and the backward `log_prob` to the solver's tolerance, from the base draws `sample` uses."""
    _, proposal, flow = mixture_problem()
    y, log_q, info = flow.sample_with_log_prob(jax.random.key(0), (64,))
    assert y.shape == (64, 2) and log_q.shape == (64,) and bool(jnp.all(info.succeeded))
    np.testing.assert_allclose(log_q, proposal.log_prob(y), rtol=0, atol=1e-5)
    np.testing.assert_allclose(log_q, flow.log_prob(y), rtol=0, atol=1e-5)
    np.testing.assert_allclose(y, flow.sample(jax.random.key(0), (64,)), rtol=0, atol=1e-5)


@pytest.mark.slow  # float64 solves of a network flow: `make test-all`
def test_forward_log_q_with_standardisation_and_a_support(x64):
    data = jax.random.normal(jax.random.key(1), (200, 2)) * jnp.array([3.0, 0.2]) + 5.0
    flow = nsi.build_flow(jax.random.key(2), data).with_settings(rtol=1e-8, atol=1e-8)
    assert flow.standardization is not None
    y, log_q, _ = flow.sample_with_log_prob(jax.random.key(3), (2, 8))
    assert y.shape == (2, 8, 2) and log_q.shape == (2, 8)
    np.testing.assert_allclose(log_q, flow.log_prob(y), rtol=0, atol=1e-5)

    constrained = nsi.ConstrainedSIFlow(flow, constraints.positive)
    value, log_q, _ = constrained.sample_with_log_prob(jax.random.key(4), (16,))
    assert bool(jnp.all(value > 0))
    np.testing.assert_allclose(log_q, constrained.log_prob(value), rtol=0, atol=1e-5)


def test_the_option_is_checked():
    _, _, flow = mixture_problem()
    with pytest.raises(ValueError, match="proposal_density must be one of"):
        independence.as_top_level_api(lambda x: -jnp.sum(x**2), flow, proposal_density="both")
    with pytest.raises(ValueError, match="proposal_density must be one of"):
        SIFlowBoost(NUTS(lambda: numpyro.sample("x", dist.Normal())), flow,
                    proposal_density="both")


@pytest.mark.slow  # statistical; `make test-all`
def test_forward_proposals_keep_the_chains_unbiased(x64):
    """Mixed (MALA + flow) chains all started in the minor mode, log q by forward solves."""
    target, _, flow = mixture_problem()
    algorithm = mixed.as_top_level_api(target.log_prob, flow, blackjax.mala(target.log_prob, 0.3),
                                       proposal_density="forward")
    start = jnp.tile(target.means[0], (4, 1))
    states, infos = run_parallel(algorithm, jax.random.key(1), start, 2000)
    assert not bool(jnp.any(infos.global_proposal_failed))
    weight_se, ess = assert_unbiased(states.local_state.position, target, burn_in=100)
    assert weight_se < 0.01, f"too few effective draws for the mode weight (ESS {ess:.0f})"


@pytest.mark.slow  # statistical; `make test-all`
def test_boost_with_forward_proposals_recovers_mode_weights(x64):
    target, _, flow = mixture_problem()

    def model():
        numpyro.sample("x", target.to_numpyro())

    mcmc = MCMC(SIFlowBoost(NUTS(model), flow, proposal_density="forward"), num_warmup=200,
                num_samples=1500, num_chains=4, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(0), init_params={"x": jnp.tile(target.means[0], (4, 1))})
    weight_se, ess = assert_unbiased(mcmc.get_samples(group_by_chain=True)["x"], target, 0)
    assert weight_se < 0.01, f"too few effective draws for the mode weight (ESS {ess:.0f})"

