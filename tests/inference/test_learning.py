"""Boosting a NumPyro model with no posterior draws: `SIFlowBoost(NUTS(model))` learns its flow
(`learn_flow`, `FlowLearning`), optionally on tempered targets (`adaptive.Tempering`)."""

import arviz
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC, NUTS

from numpyro_si.diagnostics import log_target_from_model
from numpyro_si.inference import FlowLearning, SIFlowBoost, adaptive, learn_flow

from . import N_SE

# a tiny learning budget: these tests check the plumbing, not the flow's quality
TINY = dict(n_chains=4, local="mala", n_local=2, n_rounds=2, n_steps=10, fit_steps=30,
            show_progress=False)


def scale_model(y, prior_scale=2.0):
    """A location (R) and a positive scale: the flow lives on (m, log s)."""
    m = numpyro.sample("m", dist.Normal(0.0, prior_scale))
    s = numpyro.sample("s", dist.HalfNormal(2.0))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(m, s), obs=y)


def two_mode_model(sd=0.3):
    """Prior N(0, 5^2 I) in 2-d times a two-mode likelihood at -(3, 3) and (3, 3) with weights
    0.3 / 0.7; the prior is symmetric, so the posterior keeps the weights 0.3 / 0.7."""
    x = numpyro.sample("x", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
    numpyro.factor("likelihood", jnp.logaddexp(
        jnp.log(0.3) - 0.5 * jnp.sum((x + 3.0) ** 2) / sd**2,
        jnp.log(0.7) - 0.5 * jnp.sum((x - 3.0) ** 2) / sd**2,
    ))


Y = jnp.array([0.4, -0.2, 1.1, 0.3])


def test_log_prior_and_log_likelihood_split_the_log_density():
    log_density = log_target_from_model(scale_model, Y)
    u = jnp.array([0.3, -0.5])  # (m, log s)
    m, s = u[0], jnp.exp(u[1])
    log_prior = (dist.Normal(0.0, 2.0).log_prob(m) + dist.HalfNormal(2.0).log_prob(s) + u[1])
    log_likelihood = jnp.sum(dist.Normal(m, s).log_prob(Y))
    np.testing.assert_allclose(log_density.log_prior(u), log_prior, rtol=1e-5)
    np.testing.assert_allclose(log_density.log_likelihood(u), log_likelihood, rtol=1e-5)
    np.testing.assert_allclose(log_density(u), log_prior + log_likelihood, rtol=1e-5)

    factor = log_target_from_model(two_mode_model)  # a factor counts as likelihood
    x = jnp.array([1.0, -2.0])
    np.testing.assert_allclose(factor.log_prior(x), jnp.sum(dist.Normal(0.0, 5.0).log_prob(x)),
                               rtol=1e-5)


def test_a_model_log_density_can_be_used_inside_another_model():
    """Its sites stay out of the calling model's trace (NeuTra, a factor of another model)."""
    log_density = log_target_from_model(scale_model, Y)

    def outer():
        u = numpyro.sample("u", dist.ImproperUniform(dist.constraints.real_vector, (), (2,)))
        numpyro.factor("log_pi", log_density(u) + log_density.log_likelihood(u))

    u = jnp.array([0.3, -0.5])
    value, _ = numpyro.infer.util.log_density(outer, (), {}, {"u": u})
    np.testing.assert_allclose(value, log_density(u) + log_density.log_likelihood(u), rtol=1e-6)


@pytest.mark.slow  # compiles a learning run and MCMC: kept out of the 15-minute fast suite; `make test-all`
def test_boost_with_no_flow_learns_one_and_starts_where_learning_ended():
    kernel = SIFlowBoost(NUTS(scale_model), learning=FlowLearning(**TINY))
    assert kernel.flow is None
    mcmc = MCMC(kernel, num_warmup=10, num_samples=10, num_chains=2,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(0), Y, prior_scale=3.0)  # model args and kwargs reach the learning
    learned = kernel.learned
    assert kernel.flow is learned.flow and learned.flow.dim == 2
    assert learned.log_density.model_kwargs == {"prior_scale": 3.0}
    assert learned.result.samples.shape == (4, 0, 2)  # warm-up only: no production draws
    assert learned.result.final_positions.shape == (4, 2)
    init = learned.init_params(2)
    assert init["m"].shape == (2,) and init["s"].shape == (2,)  # unconstrained (log s)

    samples = mcmc.get_samples(group_by_chain=True)
    assert samples["m"].shape == (2, 10) and bool(jnp.all(samples["s"] > 0))
    stats = arviz.from_numpyro(mcmc).sample_stats
    for name in ("acceptance_rate", "global_accept_prob", "global_is_accepted"):
        assert stats[name].shape == (2, 10)

    # continuing from the last state reuses the learned flow
    mcmc.post_warmup_state = mcmc.last_state
    mcmc.run(mcmc.post_warmup_state.rng_key, Y, prior_scale=3.0)
    assert kernel.learned is learned
    assert mcmc.get_samples()["m"].shape == (20,)


def test_learning_options_are_checked():
    with pytest.raises(ValueError, match="start must be one of"):
        FlowLearning(start="box")
    with pytest.raises(ValueError, match="n_chains must be an int >= 1"):
        FlowLearning(n_chains=0)
    with pytest.raises(TypeError, match="tempering must be True, None/False or a sequence"):
        FlowLearning(tempering=0.5)
    with pytest.raises(TypeError, match="tempering must be True, None/False or a sequence"):
        FlowLearning(tempering="yes")
    with pytest.raises(TypeError, match="learning must be a FlowLearning"):
        SIFlowBoost(NUTS(scale_model), learning={"n_chains": 4})
    with pytest.raises(ValueError, match="built from a potential_fn"):
        SIFlowBoost(NUTS(potential_fn=lambda z: jnp.sum(z**2)))
    with pytest.raises(ValueError, match="n_chains=4"):
        learn_flow(jax.random.key(0), scale_model, (Y,),
                   learning=FlowLearning(**TINY | {"start": {"m": jnp.zeros(3),
                                                             "s": jnp.ones(3)}}))


def test_learning_is_tempered_by_default_and_can_be_turned_off():
    assert FlowLearning().betas() == adaptive.DEFAULT_BETAS
    assert FlowLearning(tempering=True).betas() == adaptive.DEFAULT_BETAS
    assert FlowLearning(tempering=None).betas() == FlowLearning(tempering=False).betas() == ()
    assert FlowLearning(tempering=[0.1, 0.5]).betas() == (0.1, 0.5)


def improper_model():
    """A flat improper prior on m: tempering at beta = 0 would sample nothing proper."""
    m = numpyro.sample("m", dist.ImproperUniform(dist.constraints.real, (), ()))
    numpyro.sample("y", dist.Normal(m, 1.0), obs=Y)


def test_tempering_refuses_an_improper_prior_by_name():
    with pytest.raises(ValueError, match=r"prior cannot be sampled.*tempering=None"):
        learn_flow(jax.random.key(0), improper_model, learning=FlowLearning(**TINY))
    # with starts of its own it is refused too: the first temperature samples the prior alone
    with pytest.raises(ValueError, match=r"prior cannot be sampled.*tempering=None"):
        learn_flow(jax.random.key(0), improper_model,
                   learning=FlowLearning(**TINY | {"start": "uniform"}))


def test_learning_refuses_a_traced_init():
    kernel = SIFlowBoost(NUTS(scale_model), learning=FlowLearning(**TINY))
    with pytest.raises(RuntimeError, match="chain_method='vectorized' or 'sequential'"):
        jax.jit(lambda key: kernel.init(key, 10, None, (Y,), {}).z)(jax.random.key(0))


def test_tempering_is_checked():
    reference = log_target_from_model(two_mode_model).log_prior
    with pytest.raises(ValueError, match="non-decreasing"):
        adaptive.Tempering(reference, (0.3, 0.1))
    with pytest.raises(ValueError, match="each of betas"):
        adaptive.Tempering(reference, (0.0, 1.0))
    with pytest.raises(TypeError, match="must be callable"):
        adaptive.Tempering(0.0)
    with pytest.raises(ValueError, match="n_warmup_rounds must be at least 3"):
        adaptive.run(jax.random.key(0), log_target_from_model(two_mode_model), jnp.zeros((2, 2)),
                     tempering=adaptive.Tempering(reference, (0.0, 0.1)), n_warmup_rounds=2)
    with pytest.raises(ValueError, match="reference_logdensity_fn .* not finite"):
        adaptive.run(jax.random.key(0), log_target_from_model(two_mode_model), jnp.zeros((2, 2)),
                     tempering=adaptive.Tempering(lambda x: jnp.log(x[0]), (0.0,)))


def _second_mode_share(x):
    """Share of draws in the (3, 3) mode and its Monte Carlo s.e. (NumPyro's ESS over chains)."""
    indicator = np.asarray(x[..., 0] > 0, dtype=float)  # (chains, draws)
    share = indicator.mean()
    ess = float(effective_sample_size(indicator[..., None])[0])
    return share, np.sqrt(share * (1 - share) / ess), ess


@pytest.mark.slow
def test_tempered_learning_finds_a_mode_no_chain_started_in():
    """Every learning chain starts in the (3, 3) mode, ~100 nats of barrier from the other one.
    Untempered, no chain ever visits (-3, -3), the flow never proposes it, and its share stays
    0; tempered from the prior, the share matches the exact 0.7 within 4 Monte Carlo s.e."""
    start = {"x": 3.0 + 0.1 * jax.random.normal(jax.random.key(5), (8, 2))}
    shares = {}
    for tempering in (None, True):
        learning = FlowLearning(n_chains=8, start=start, n_steps=50, fit_steps=300,
                                tempering=tempering, show_progress=False)
        mcmc = MCMC(SIFlowBoost(NUTS(two_mode_model), learning=learning), num_warmup=200,
                    num_samples=500, num_chains=4, chain_method="vectorized",
                    progress_bar=False)
        mcmc.run(jax.random.key(0))
        shares[tempering] = _second_mode_share(mcmc.get_samples(group_by_chain=True)["x"])
    assert shares[None][0] == 1.0
    share, se, ess = shares[True]
    assert se < 0.03, f"too few effective draws for the mode weight (ESS {ess:.0f})"
    assert abs(share - 0.7) < N_SE * se, f"share {share:.3f} ± {se:.3f}, exact 0.7"


@pytest.mark.slow
def test_learning_from_the_prior_recovers_the_mode_weights():
    """With the default starts (prior draws, spread over both modes) two modes need no
    tempering (`tempering=None`; the default tempers, `test_tempered_learning_...`)."""
    learning = FlowLearning(n_chains=8, n_steps=50, fit_steps=300, tempering=None,
                            show_progress=False)
    mcmc = MCMC(SIFlowBoost(NUTS(two_mode_model), learning=learning), num_warmup=200,
                num_samples=500, num_chains=4, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(0), sd=0.5)
    share, se, ess = _second_mode_share(mcmc.get_samples(group_by_chain=True)["x"])
    assert se < 0.03, f"too few effective draws for the mode weight (ESS {ess:.0f})"
    assert abs(share - 0.7) < N_SE * se, f"share {share:.3f} ± {se:.3f}, exact 0.7"
