"""Local BlackJAX moves interleaved with global SIFlow moves (numpyro_si.inference.mixed).

Same problem as test_independence: modes at x = -4 (weight 0.3) and x = +4 (weight 0.7), about
16 nats of barrier between them, and an imperfect exact-density oracle flow as the proposal.
"""

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import toy_conditional_flow

import numpyro_si as nsi
from numpyro_si.inference import MixedInfo, MixedState, mixed

from . import (
    assert_unbiased,
    assert_within_mc_error,
    expected_imh_acceptance,
    in_second_mode,
    mixture_problem,
    run_parallel,
    target_moments,
)

N_CHAINS = 4
N_STEPS = 2000


def test_local_kernels_alone_stay_stuck(x64):
    """Why the flow moves are needed: NUTS and MALA started in the minor mode never leave it."""
    target, _, _ = mixture_problem()
    start = jnp.tile(target.means[0], (N_CHAINS, 1))
    nuts = blackjax.nuts(target.log_prob, 0.5, jnp.ones(2))
    mala = blackjax.mala(target.log_prob, 0.1)
    for local in (nuts, mala):
        states, infos = run_parallel(local, jax.random.key(0), start, N_STEPS)
        assert float(jnp.mean(infos.acceptance_rate)) > 0.5  # the chains do move...
        assert float(jnp.std(states.position[..., 1])) > 0.3
        assert np.all(in_second_mode(states.position) == 0.0)  # ...but only within their mode


@pytest.mark.slow  # statistical; `make test-all`
def test_mixed_nuts_recovers_mode_weights(x64):
    target, proposal, flow = mixture_problem()
    nuts = blackjax.nuts(target.log_prob, 0.5, jnp.ones(2))
    algorithm = mixed.as_top_level_api(target.log_prob, flow, nuts, n_local=1)
    start = jnp.tile(target.means[0], (N_CHAINS, 1))  # all chains in the minor mode
    states, infos = run_parallel(algorithm, jax.random.key(1), start, N_STEPS)
    assert isinstance(states, MixedState) and isinstance(infos, MixedInfo)
    positions = states.local_state.position
    assert positions.shape == (N_CHAINS, N_STEPS, 2)
    assert not bool(jnp.any(infos.global_proposal_failed))

    burn_in = 100
    weight_se, ess = assert_unbiased(positions, target, burn_in)
    assert weight_se < 0.0075, f"too few effective draws for the mode weight (ESS {ess:.0f})"
    weight = in_second_mode(positions[:, burn_in:]).mean()
    assert abs(weight - target_moments(target)[0]) < 0.03  # the accuracy the kernel is meant for

    # local and global acceptance are reported separately
    assert infos.local_info.acceptance_rate.shape == (N_CHAINS, N_STEPS, 1)
    assert float(jnp.mean(infos.local_info.acceptance_rate)) > 0.7
    # after the local move x ~ pi, so the flow move accepts at the stationary IMH rate
    expected, expected_se = expected_imh_acceptance(jax.random.key(7), target, proposal)
    acceptance = np.asarray(infos.global_acceptance_rate)[:, burn_in:]
    estimate, se, _ = assert_within_mc_error(acceptance, expected, "global acceptance rate")
    assert abs(estimate - expected) < 4 * np.hypot(se, expected_se)


@pytest.mark.slow
def test_state_stays_consistent_across_global_moves(x64):
    """With a bare MALA step function and n_local = 3: after every transition the local state's
    log pi and gradient, and the stored log q, are those of the current position."""
    target, proposal, flow = mixture_problem()
    mala = blackjax.mala(target.log_prob, 0.1)
    algorithm = mixed.as_top_level_api(
        target.log_prob, flow, mala.step, n_local=3, local_init=mala.init
    )
    start = jnp.tile(target.means[0], (N_CHAINS, 1))
    states, infos = run_parallel(algorithm, jax.random.key(2), start, 40)
    local = states.local_state
    assert type(local).__name__ == "MALAState"
    assert infos.local_info.acceptance_rate.shape == (N_CHAINS, 40, 3)
    assert bool(jnp.any(infos.global_is_accepted))
    assert bool(jnp.any(in_second_mode(local.position) == 1.0))  # some chain jumped modes
    positions = local.position.reshape(-1, 2)
    np.testing.assert_allclose(local.logdensity.reshape(-1), target.log_prob(positions),
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(local.logdensity_grad.reshape(-1, 2),
                               jax.vmap(jax.grad(target.log_prob))(positions),
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(states.proposal_logdensity.reshape(-1),
                               proposal.log_prob(positions), rtol=0, atol=1e-5)


@pytest.mark.slow  # independence's failed-density test covers the shared move in `make test`
def test_failed_flow_density_rejects_global_moves_only(x64):
    target, _, flow = mixture_problem()
    bad_flow = flow.with_settings(likelihood=nsi.ODELikelihood(max_steps=2))
    nuts = blackjax.nuts(target.log_prob, 0.5, jnp.ones(2))
    algorithm = mixed.as_top_level_api(target.log_prob, bad_flow, nuts)
    states, infos = run_parallel(algorithm, jax.random.key(3), target.means[:1], 30)
    assert not bool(jnp.any(infos.global_is_accepted))
    assert bool(jnp.all(infos.global_proposal_failed))
    assert bool(jnp.all(infos.global_acceptance_rate == 0.0))
    assert np.unique(np.asarray(states.local_state.position), axis=1).shape[1] > 20  # NUTS moves
    assert np.all(in_second_mode(states.local_state.position) == 0.0)
    for leaf in jax.tree.leaves((states, infos)):
        assert not bool(jnp.any(jnp.isnan(leaf)))


def test_argument_errors(x64):
    target, _, flow = mixture_problem()
    nuts = blackjax.nuts(target.log_prob, 0.5, jnp.ones(2))
    for bad in (flow.with_settings(divergence="hutchinson"),
                flow.with_settings(sampler="sde", eps=1.0)):
        with pytest.raises(ValueError, match="Hutchinson|SDE"):
            mixed.as_top_level_api(target.log_prob, bad, nuts)
        with pytest.raises(ValueError, match="Hutchinson|SDE"):
            mixed.init(target.means[0], target.log_prob, bad, nuts.init)
    with pytest.raises(TypeError, match=r"ConditionalSIFlow.*flow\.condition\(y\)"):
        mixed.as_top_level_api(target.log_prob, toy_conditional_flow(), nuts)
    with pytest.raises(ValueError, match="local_init"):
        mixed.as_top_level_api(target.log_prob, flow, nuts.step)
    with pytest.raises(ValueError, match="n_local"):
        mixed.as_top_level_api(target.log_prob, flow, nuts, n_local=-1)
    with pytest.raises(TypeError, match="position"):
        mixed.init(target.means[0], target.log_prob, flow, lambda x: (x, 0.0))
