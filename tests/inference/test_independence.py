"""Independence Metropolis-Hastings with an SIFlow proposal (numpyro_si.inference.independence).

Target: a 2-d mixture with modes at x = -4 and x = +4 of weights 0.3 / 0.7; proposal: the exact
oracle flow to the same means with 1.3x covariances and weights 0.5 / 0.5 (see `__init__.py`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from helpers import toy_conditional_flow
from numpyro.distributions import constraints

import numpyro_si as nsi
from numpyro_si.inference import IMHInfo, IMHState, independence, run_chain
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle

from . import (
    assert_unbiased,
    assert_within_mc_error,
    expected_imh_acceptance,
    mixture_problem,
    run_parallel,
)

N_CHAINS = 4


@pytest.mark.slow  # statistical; `make test-all`
def test_imh_is_unbiased_on_a_mixture(x64):
    target, proposal, flow = mixture_problem()
    imh = independence.as_top_level_api(target.log_prob, flow)
    # every chain starts at the minor mode's mean: the flow moves must find the other mode
    start = jnp.tile(target.means[0], (N_CHAINS, 1))
    states, infos = run_parallel(imh, jax.random.key(1), start, 2000)
    assert isinstance(states, IMHState) and isinstance(infos, IMHInfo)
    assert states.position.shape == (N_CHAINS, 2000, 2)
    assert not bool(jnp.any(infos.proposal_logdensity_failed))

    burn_in = 100
    weight_se, ess = assert_unbiased(states.position, target, burn_in)
    assert weight_se < 0.01, f"too few effective draws for the mode weight (ESS {ess:.0f})"

    # the stored log pi and log q are those of the current position (q: to solver tolerance)
    positions = states.position.reshape(-1, 2)
    np.testing.assert_allclose(states.logdensity.reshape(-1), target.log_prob(positions),
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(states.proposal_logdensity.reshape(-1),
                               proposal.log_prob(positions), rtol=0, atol=1e-5)

    # the acceptance rate is the stationary E[min(1, w(y)/w(x))] computed from closed forms
    expected, expected_se = expected_imh_acceptance(jax.random.key(7), target, proposal)
    assert 0.5 < expected < 0.95
    acceptance = np.asarray(infos.acceptance_rate)[:, burn_in:]
    estimate, se, _ = assert_within_mc_error(acceptance, expected, "acceptance rate")
    assert abs(estimate - expected) < 4 * np.hypot(se, expected_se)


@pytest.mark.slow  # statistical; `make test-all`
def test_vmap_runs_independent_chains(x64):
    """Each vmapped chain is exactly the single chain run with its own key: no coupling."""
    target, _, flow = mixture_problem()
    imh = independence.as_top_level_api(target.log_prob, flow)
    n_steps = 30
    keys = jax.random.split(jax.random.key(3), N_CHAINS)
    starts = target.means[jnp.array([0, 1, 0, 1])] + 0.1
    initial = jax.jit(jax.vmap(imh.init))(starts)
    run = jax.jit(lambda k, s: run_chain(k, imh.step, s, n_steps))
    batched, batched_info = jax.jit(jax.vmap(run))(keys, initial)
    for i in range(N_CHAINS):
        single, single_info = run(keys[i], jax.tree.map(lambda leaf, i=i: leaf[i], initial))
        np.testing.assert_allclose(batched.position[i], single.position, rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(batched_info.is_accepted[i], single_info.is_accepted)
    # different keys give different paths
    paths = np.asarray(batched.position).reshape(N_CHAINS, -1)
    for i in range(N_CHAINS):
        for j in range(i):
            assert not np.allclose(paths[i], paths[j])
    assert bool(jnp.all(batched_info.is_accepted.sum(axis=1) > 0))


def test_failed_proposal_density_is_never_accepted(x64):
    """A density solve that runs out of steps gives log q = -inf: the proposal is rejected, the
    chain does not move and nothing becomes NaN, whether or not log q of the current state is
    finite."""
    target, _, good_flow = mixture_problem()
    bad_flow = good_flow.with_settings(likelihood=nsi.ODELikelihood(max_steps=2))
    kernel = independence.build_kernel()
    start = target.means[1]

    @jax.jit
    def run(state):
        return run_chain(jax.random.key(5), lambda k, s: kernel(k, s, target.log_prob, bad_flow),
                         state, 40)

    init = jax.jit(lambda x, flow: independence.init(x, target.log_prob, flow))
    failed_start = init(start, bad_flow)
    assert float(failed_start.proposal_logdensity) == -np.inf
    finite_start = init(start, good_flow)
    assert np.isfinite(float(finite_start.proposal_logdensity))
    for initial in (failed_start, finite_start):
        states, infos = run(initial)
        np.testing.assert_array_equal(states.position, np.broadcast_to(start, (40, 2)))
        assert not bool(jnp.any(infos.is_accepted))
        assert bool(jnp.all(infos.proposal_logdensity_failed))
        assert bool(jnp.all(infos.acceptance_rate == 0.0))
        for leaf in jax.tree.leaves((states, infos)):
            assert not bool(jnp.any(jnp.isnan(leaf)))
        assert bool(jnp.all(states.proposal_logdensity == initial.proposal_logdensity))


def test_pytree_positions(x64):
    """A position may be any pytree whose ravelled size is the flow's dimension."""
    target, _, flow = mixture_problem()

    def logdensity(position):
        return target.log_prob(jnp.concatenate([position["a"], position["b"][None]]))

    imh = independence.as_top_level_api(logdensity, flow)
    start = {"a": jnp.array([-4.0]), "b": jnp.array(1.0)}
    states, infos = jax.jit(lambda k, s: run_chain(k, imh.step, s, 20))(
        jax.random.key(2), jax.jit(imh.init)(start)
    )
    assert states.position["a"].shape == (20, 1) and states.position["b"].shape == (20,)
    assert bool(jnp.any(infos.is_accepted))


def test_constrained_flow_proposes_on_its_support(x64):
    """A ConstrainedSIFlow proposes points of its support: target theta ~ LogNormal(0.5, 0.4),
    proposal the exact flow to log theta ~ N(0.5, 1.3 * 0.4^2) pushed through exp. The stored
    log q is the flow's density on the support (the log-Jacobian -log theta included) and every
    position stays positive."""
    loc, scale = 0.5, 0.4
    log_space = GaussianMixture(jnp.ones(1), jnp.array([[loc]]), jnp.array([[[1.3 * scale**2]]]))
    oracle = GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), log_space)
    flow = nsi.ConstrainedSIFlow(
        nsi.SIFlow(oracle.interpolant, oracle.velocity, dim=1,
                   settings=nsi.SolverSettings(rtol=1e-7, atol=1e-7)),
        constraints.positive,
    )

    def logdensity(theta):
        return jnp.sum(dist.LogNormal(loc, scale).log_prob(theta))

    def log_q(theta):
        return log_space.log_prob(jnp.log(theta)) - jnp.log(theta[..., 0])

    imh = independence.as_top_level_api(logdensity, flow)
    start = jnp.array([1.5])
    initial = jax.jit(imh.init)(start)
    np.testing.assert_allclose(initial.proposal_logdensity, log_q(start[None])[0], atol=1e-6)
    states, infos = jax.jit(lambda k, s: run_chain(k, imh.step, s, 30))(jax.random.key(6), initial)
    assert states.position.shape == (30, 1) and bool(jnp.all(states.position > 0))
    assert bool(jnp.any(infos.is_accepted)) and not bool(jnp.any(infos.proposal_logdensity_failed))
    np.testing.assert_allclose(states.logdensity, jax.vmap(logdensity)(states.position),
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(states.proposal_logdensity, log_q(states.position), atol=1e-5)


def test_inexact_proposals_are_refused(x64):
    target, _, flow = mixture_problem()
    start = target.means[0]
    hutchinson = flow.with_settings(divergence="hutchinson")
    sde = flow.with_settings(sampler="sde", eps=1.0)
    for bad in (hutchinson, sde):
        with pytest.raises(ValueError, match="Hutchinson|SDE"):
            independence.init(start, target.log_prob, bad)
        with pytest.raises(ValueError, match="Hutchinson|SDE"):
            independence.as_top_level_api(target.log_prob, bad)
        with pytest.raises(ValueError, match="Hutchinson|SDE"):
            state = IMHState(start, jnp.zeros(()), jnp.zeros(()))
            independence.build_kernel()(jax.random.key(0), state, target.log_prob, bad)
    with pytest.raises(TypeError, match="SIFlow"):
        independence.as_top_level_api(target.log_prob, target.to_numpyro())
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        independence.init(jnp.zeros(3), target.log_prob, flow)
    with pytest.raises(TypeError, match=r"ConditionalSIFlow.*flow\.condition\(y\)"):
        independence.as_top_level_api(target.log_prob, toy_conditional_flow())
    fixed_steps = (flow.with_settings(likelihood=nsi.ODELikelihood(n_steps=8)),
                   flow.with_settings(sampler=nsi.ODESampler(n_steps=8)))
    for fixed_step, which in zip(fixed_steps, ("likelihood", "sampler"), strict=True):
        with pytest.warns(UserWarning, match=f"flow.settings.{which} .*fixed step count"):
            independence.as_top_level_api(target.log_prob, fixed_step)
