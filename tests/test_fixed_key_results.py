"""Fixed-key results that refactors must not change.

`tests/data/fixed_key_results.npz` holds the network parameters, histories, log densities and
draws of fixed-key fits (plain, two-sided with a score, conditional, constrained, moving average
and weight decay, no validation, a given base, early stopping, no standardisation, residual
network with a Beta time sampler), exact-field flows (log_prob, ODE and SDE draws, Hutchinson,
the fixed-step search), diagnostics and MCMC kernels, recorded by the package before the
build/train redesign (same keys, same arguments in the old spelling). The saved flows in
`tests/data/saved_v2/` were written by that version too.

On the versions of JAX and friends the values were recorded with, every value must match bit for
bit. On other versions floating-point results may differ in the last bits (and training
amplifies them), so the comparison falls back to a tolerance that still catches a changed
computation (a wrong key, a step more or less, another loss).
"""

import json
import platform
from pathlib import Path

import blackjax
import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from helpers import array_leaves
from numpyro.distributions import constraints
from numpyro.infer import MCMC, NUTS

import numpyro_si as nsi
import numpyro_si.diagnostics
from numpyro_si.inference import SIFlowBoost, independence, mixed, run_chain

DATA = Path(__file__).parent / "data"
REFERENCE = np.load(DATA / "fixed_key_results.npz")
RECORDED_WITH = json.loads(str(REFERENCE["__versions__"]))
VERSIONS = {m.__name__: m.__version__ for m in (jax, jaxlib, numpyro, eqx, diffrax, optax, blackjax)}
VERSIONS["machine"] = platform.machine()
SAME_VERSIONS = VERSIONS == RECORDED_WITH

NET = nsi.FieldMLPSpec(width=16, depth=2)
BASE_OPTIONS = dict(num_steps=270, batch_size=100, network=NET, show_progress=False)


def assert_recorded(name, value):
    expected = REFERENCE[name]
    value = np.asarray(value)
    if SAME_VERSIONS:
        np.testing.assert_array_equal(value, expected, err_msg=name)
    else:  # see the module docstring
        np.testing.assert_allclose(value, expected, rtol=1e-3, atol=1e-3, err_msg=name)


def gaussian(key, n):
    return jnp.array([10.0, -5.0]) + jnp.array([3.0, 0.5]) * jax.random.normal(key, (n, 2))


DATA_2D = gaussian(jax.random.key(0), 1000)
POINTS = DATA_2D[:8]


def assert_fit(name, flow, history, points=POINTS, context=None):
    inner = flow.flow if isinstance(flow, nsi.ConstrainedSIFlow) else flow
    for i, leaf in enumerate(array_leaves(inner.velocity)):
        assert_recorded(f"{name}/velocity/{i}", leaf)
    if inner.score is not None:
        for i, leaf in enumerate(array_leaves(inner.score)):
            assert_recorded(f"{name}/score/{i}", leaf)
    for field in ("train_loss", "val_loss", "val_loss_smoothed", "epoch", "num_steps",
                  "best_epoch", "stopped_early"):
        assert_recorded(f"{name}/history/{field}", getattr(history, field))
    if context is None:
        assert_recorded(f"{name}/log_prob", flow.log_prob(points))
        assert_recorded(f"{name}/sample", flow.sample(jax.random.key(7), (8,)))
    else:
        assert_recorded(f"{name}/log_prob", flow.log_prob(points, context))
        assert_recorded(f"{name}/sample", flow.condition(context[0]).sample(jax.random.key(7), (8,)))


@pytest.fixture(scope="module")
def plain_flow():
    return nsi.fit(jax.random.key(1), DATA_2D, **BASE_OPTIONS)


def test_plain_fit(plain_flow):
    assert_fit("A", *plain_flow)


def test_two_sided_fit_with_a_score():
    flow, history = nsi.fit(
        jax.random.key(2), DATA_2D, interpolant=nsi.LinearInterpolant(nsi.BrownianGamma(1.0)),
        learn_score=True, settings=nsi.SolverSettings(sampler=nsi.SDESampler(0.5, n_steps=256)),
        **BASE_OPTIONS,
    )
    assert_fit("B", flow, history)


def conditional_data():
    theta = jax.random.normal(jax.random.key(3), (1000, 2))
    y = theta @ jnp.array([[1.0, 0.5], [0.0, 1.0]]) + 0.3 * jax.random.normal(
        jax.random.key(4), (1000, 2)
    )
    return theta, y[:, :1]


def test_conditional_fit():
    theta, context = conditional_data()
    flow, history = nsi.fit(jax.random.key(5), theta, context=context, **BASE_OPTIONS)
    assert_fit("C", flow, history, points=theta[:8], context=context[:8])


def positive_data():
    return jnp.exp(0.5 * jax.random.normal(jax.random.key(6), (1000, 2)))


def test_constrained_fit():
    data = positive_data()
    flow, history = nsi.fit(jax.random.key(8), data, support=constraints.positive,
                            **BASE_OPTIONS)
    assert_fit("D", flow, history, points=data[:8])


@pytest.mark.parametrize("name, key, options", [
    ("E", 9, dict(ema_decay=0.9, weight_decay=0.1, learning_rate=1e-2, **BASE_OPTIONS)),
    ("F", 10, dict(validation=nsi.Validation(fraction=0.0), num_steps=90, batch_size=100,
                   network=NET, show_progress=False)),
    ("G", 11, dict(interpolant=nsi.LinearInterpolant(),
                   base=dist.Normal(jnp.array([1.0, 1.0]), 2.0).to_event(1), **BASE_OPTIONS)),
    ("H", 12, dict(num_steps=864, batch_size=100, learning_rate=5e-2, network=NET,
                   early_stopping=nsi.EarlyStopping(patience=12, window=1), show_progress=False)),
    ("J", 14, dict(network=nsi.FieldMLPSpec(width=16, depth=2, residual=True, activation="gelu",
                                            n_frequencies=2),
                   objective=nsi.Objective(nsi.BetaTime(2.0, 1.0), antithetic=False),
                   max_epochs=30, batch_size=100, show_progress=False)),
])
def test_fit_options(name, key, options):
    flow, history = nsi.fit(jax.random.key(key), DATA_2D, **options)
    assert_fit(name, flow, history)
    if name == "H":
        assert history.stopped_early  # the case exercises early stopping


def test_unstandardised_trigonometric_fit():
    flow, history = nsi.fit(
        jax.random.key(13), DATA_2D / 5.0, standardize=False,
        interpolant=nsi.OneSidedTrigonometricInterpolant(), **BASE_OPTIONS,
    )
    assert_fit("I", flow, history, points=POINTS / 5.0)


@pytest.mark.parametrize("name, expected_kind", [
    ("plain", nsi.SIFlow), ("two_sided_sde", nsi.SIFlow), ("conditional", nsi.ConditionalSIFlow),
    ("positive", nsi.ConstrainedSIFlow),
])
def test_flows_saved_by_the_previous_format_load_unchanged(name, expected_kind):
    flow = nsi.load(DATA / "saved_v2" / f"{name}.nsi")
    assert type(flow) is expected_kind
    recorded = dict(plain="A", two_sided_sde="B", conditional="C", positive="D")[name]
    if name == "conditional":
        theta, context = conditional_data()
        value = flow.log_prob(theta[:8], context[:8])
    else:
        points = positive_data()[:8] if name == "positive" else POINTS
        value = flow.log_prob(points)
    assert_recorded(f"{recorded}/log_prob", value)


@pytest.mark.parametrize("label", ["one_sided", "two_sided"])
def test_exact_field_flows(label, x64):
    target = nsi.oracle.GaussianMixture(
        jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0, 1.0], [1.5, 1.0, -1.0]]),
        jnp.stack([jnp.eye(3) * 0.5, jnp.eye(3) * 0.8]),
    )
    interpolant = (nsi.OneSidedLinearInterpolant() if label == "one_sided"
                   else nsi.LinearInterpolant(nsi.BrownianGamma(1.0)))
    oracle = nsi.oracle.GaussianMixtureOracle(interpolant, target)
    fields = {} if label == "one_sided" else dict(score=oracle.score,
                                                  base=oracle.base_distribution())
    flow = nsi.SIFlow(interpolant, oracle.velocity, dim=3,
                      settings=nsi.SolverSettings(rtol=1e-8, atol=1e-8), **fields)
    x = target.sample(jax.random.key(20), 6)[0]
    assert_recorded(f"oracle/{label}/log_prob", flow.log_prob(x))
    assert_recorded(f"oracle/{label}/ode_sample", flow.sample(jax.random.key(21), (4,)))
    sde = flow.with_settings(sampler=nsi.SDESampler(0.5, n_steps=64))
    assert_recorded(f"oracle/{label}/sde_sample", sde.sample(jax.random.key(22), (4,)))
    hutchinson = flow.with_settings(divergence="hutchinson")
    assert_recorded(f"oracle/{label}/hutchinson", hutchinson.log_prob(x))
    fast, report = flow.with_fixed_step_likelihood(x, max_error=1e-3)
    assert_recorded(f"oracle/{label}/fixed_steps",
                    -1 if report["n_steps"] is None else report["n_steps"])
    assert_recorded(f"oracle/{label}/fixed_log_prob", fast.log_prob(x))


def log_target(x):
    return dist.Normal(jnp.array([10.0, -5.0]), jnp.array([3.0, 0.5])).to_event(1).log_prob(x)


def test_diagnostics(plain_flow):
    flow = plain_flow[0]
    ce = nsi.diagnostics.cross_entropy(flow, DATA_2D[:50])
    assert_recorded("diag/cross_entropy", [ce.mean, ce.se])
    importance = nsi.diagnostics.importance_diagnostics(jax.random.key(30), flow, log_target,
                                                        n=64)
    assert_recorded("diag/importance_log_weights", importance.log_weights)
    sde = nsi.diagnostics.sde_log_likelihood(jax.random.key(31), flow, DATA_2D[:4], eps=0.5,
                                             n_paths=4, n_steps=32)
    assert_recorded("diag/sde_ll", sde.values)


def test_mcmc_kernels(plain_flow):
    flow = plain_flow[0].with_settings(sampler="ode", rtol=1e-6, atol=1e-6)
    imh = independence.as_top_level_api(log_target, flow)
    states, _ = jax.jit(lambda k, s: run_chain(k, imh.step, s, 10))(
        jax.random.key(40), imh.init(DATA_2D[0])
    )
    assert_recorded("inf/imh_positions", states.position)
    local = blackjax.mala(log_target, 0.1)
    boosted = mixed.as_top_level_api(log_target, flow, local, n_local=2)
    states, _ = jax.jit(lambda k, s: run_chain(k, boosted.step, s, 10))(
        jax.random.key(41), boosted.init(DATA_2D[0])
    )
    assert_recorded("inf/mixed_positions", states.local_state.position)

    def model():
        numpyro.sample("x", dist.Normal(jnp.array([10.0, -5.0]), jnp.array([3.0, 0.5])).to_event(1))

    mcmc = MCMC(SIFlowBoost(NUTS(model), flow), num_warmup=10, num_samples=10,
                progress_bar=False)
    mcmc.run(jax.random.key(42))
    assert_recorded("inf/boost_x", mcmc.get_samples()["x"])
