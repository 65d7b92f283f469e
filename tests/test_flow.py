"""The flow family: `build_flow` picks the kind, every kind is a pytree by one mechanism (arrays
are leaves, everything else static), shares `AbstractFlow`'s interface, and changes its solver
settings by `with_settings` only."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.distributions import constraints

import numpyro_si as nsi

NET = nsi.FieldMLPSpec(width=8, depth=1)
DATA = jnp.exp(0.3 * jax.random.normal(jax.random.key(0), (64, 2))) + 1.0
CONTEXT = jax.random.normal(jax.random.key(1), (64, 3))


def flows():
    key = jax.random.key(2)
    return {
        "plain": nsi.build_flow(key, DATA, network=NET),
        "constrained": nsi.build_flow(key, DATA, support=constraints.positive, network=NET),
        "conditional": nsi.build_flow(key, DATA, context=CONTEXT, network=NET),
        "conditional on a support": nsi.build_flow(
            key, DATA, context=CONTEXT, support=constraints.positive, network=NET
        ),
    }


KINDS = {
    "plain": nsi.SIFlow, "constrained": nsi.ConstrainedSIFlow,
    "conditional": nsi.ConditionalSIFlow, "conditional on a support": nsi.ConditionalSIFlow,
}


def log_prob(flow, x):
    if isinstance(flow, nsi.ConditionalSIFlow):
        return flow.log_prob(x, CONTEXT[: x.shape[0]])
    return flow.log_prob(x)


@pytest.fixture(scope="module")
def built():
    return flows()


@pytest.mark.parametrize("name", list(KINDS))
def test_build_flow_gives_the_kind_the_options_call_for(built, name):
    flow = built[name]
    assert type(flow) is KINDS[name] and isinstance(flow, nsi.AbstractFlow)
    assert flow.dim == 2
    unconstrained = jnp.log(DATA) if "support" in name or name == "constrained" else DATA
    np.testing.assert_allclose(flow.standardization.shift, jnp.mean(unconstrained, axis=0),
                               rtol=1e-6)
    assert flow.settings == nsi.SolverSettings()
    assert isinstance(flow.velocity, nsi.FieldMLP) and flow.velocity.width == 8


@pytest.mark.parametrize("name", list(KINDS))
def test_every_kind_crosses_jit_without_retracing(built, name):
    flow = built[name]
    x = DATA[:3]
    traces = []

    @jax.jit
    def evaluate(flow, x):
        traces.append(1)
        return log_prob(flow, x)

    first = evaluate(flow, x)
    rebuilt = jax.tree.unflatten(*reversed(jax.tree.flatten(flow)))
    second = evaluate(rebuilt, x + 0.0)
    assert len(traces) == 1  # static parts compare equal: one compilation
    np.testing.assert_array_equal(first, second)
    # eager and jitted solves differ by rounding, amplified by the adaptive step choice
    np.testing.assert_allclose(first, log_prob(flow, x), rtol=1e-3, atol=1e-3)
    # the leaves are exactly the arrays (no Python numbers or functions)
    assert all(eqx.is_array(leaf) for leaf in jax.tree.leaves(flow))
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    assert type(eqx.combine(params, static)) is KINDS[name]


@pytest.mark.parametrize("name", list(KINDS))
def test_with_settings_changes_only_the_settings(built, name):
    flow = built[name]
    tight = flow.with_settings(rtol=1e-7, atol=1e-7, divergence="hutchinson")
    assert type(tight) is type(flow)
    assert (tight.rtol, tight.atol) == (1e-7, 1e-7)
    assert isinstance(tight.divergence, nsi.HutchinsonDivergence)
    assert flow.rtol == 1e-5 and isinstance(flow.divergence, nsi.ExactDivergence)
    assert eqx.tree_equal(tight.velocity, flow.velocity)
    assert eqx.tree_equal(tight.standardization, flow.standardization)
    sde = flow.with_settings(sampler="sde", eps=0.3)  # one-sided: the score follows
    assert isinstance(sde.sampler, nsi.SDESampler) and sde.sampler.eps.eps0 == 0.3
    assert sde.with_settings(eps=0.7).sampler.eps.eps0 == 0.7  # keeps n_steps, changes eps
    with pytest.raises(ValueError, match="eps is"):
        flow.with_settings(eps=0.5)  # eps belongs to an SDE sampler
    with pytest.raises(ValueError, match="either"):
        flow.with_settings(nsi.SolverSettings(), rtol=1e-3)


@pytest.mark.parametrize("settings, match", [
    (dict(rtol=0.0), "rtol"),
    (dict(atol=-1.0), "atol"),
    (dict(rtol=float("nan")), "rtol"),
    (dict(sampler="euler"), "sampler must be"),
    (dict(likelihood=nsi.ODESampler()), "likelihood"),
    (dict(divergence="random"), "divergence must be"),
])
def test_solver_settings_refuse_bad_values(settings, match):
    with pytest.raises((TypeError, ValueError), match=match):
        nsi.SolverSettings(**settings)
    with pytest.raises((TypeError, ValueError), match=match):
        nsi.SolverSettings().replace(**settings)


def test_solver_settings_take_names_and_say_where_solver_options_went():
    settings = nsi.SolverSettings(sampler="sde", eps=0.5, divergence="hutchinson")
    assert settings.sampler == nsi.SDESampler(0.5)
    assert isinstance(settings.divergence, nsi.HutchinsonDivergence)
    assert settings.replace(rtol=1e-3) == nsi.SolverSettings(
        sampler=nsi.SDESampler(0.5), divergence=settings.divergence, rtol=1e-3
    )
    with pytest.raises(TypeError, match=r"n_steps.*ODESampler\(n_steps"):
        settings.replace(n_steps=64)
    with pytest.raises(TypeError, match="ODELikelihood"):
        flows()["plain"].with_settings(likelihood_solver=nsi.ODESampler())


def test_sde_settings_on_a_two_sided_flow_without_a_score_are_refused():
    flow = nsi.build_flow(jax.random.key(0), DATA, interpolant=nsi.LinearInterpolant(),
                          network=NET)
    with pytest.raises(ValueError, match="SDE sampling needs the score"):
        flow.with_settings(sampler="sde")
    learned = nsi.build_flow(jax.random.key(0), DATA, network=NET,
                             interpolant=nsi.LinearInterpolant(nsi.BrownianGamma(1.0)),
                             settings=nsi.SolverSettings(sampler=nsi.SDESampler()))
    assert learned.score is not None  # learn_score defaults to True for an SDE sampler


def test_field_mlp_defaults_follow_the_dimension():
    assert nsi.default_network_size(2) == (64, 6) and nsi.default_network_size(30) == (128, 3)
    net = nsi.FieldMLP(2, key=jax.random.key(0))
    assert (net.width, net.depth) == nsi.default_network_size(2)
    assert nsi.FieldMLPSpec().build(30, key=jax.random.key(0)).width == 128
