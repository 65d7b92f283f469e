"""Cases that used to give a silent wrong result or an obscure error: each now gives a clear
error naming the problem, or a correct result."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints

import numpyro_si as nsi
from numpyro_si.diagnostics import cross_entropy
from numpyro_si.inference import adaptive, unconstrained_draws

NET = nsi.FieldMLPSpec(width=8, depth=1)
DATA = jax.random.normal(jax.random.key(0), (300, 2))
QUICK = dict(num_steps=30, batch_size=100, network=NET, show_progress=False)


@pytest.fixture(scope="module")
def flow():
    return nsi.build_flow(jax.random.key(1), DATA, network=NET)


# ----------------------------------------------------------------------------------------------
# options refused where they enter
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, error, match", [
    (dict(validation=lambda: nsi.Validation(repeats=0)), ValueError, "repeats"),
    (dict(learning_rate=0.0), ValueError, "learning_rate"),
    (dict(learning_rate=-1e-3), ValueError, "learning_rate"),
    (dict(learning_rate=1e3), ValueError, r"learning_rate must be a finite number in \(0.0, 1.0\]"),
    (dict(num_steps=0), ValueError, "num_steps"),
    (dict(num_steps=-5), ValueError, "num_steps"),
    (dict(batch_size=32.5), ValueError, "batch_size"),
    (dict(max_epochs=0), ValueError, "max_epochs"),
])
def test_bad_training_options_are_refused_before_training(options, error, match):
    with pytest.raises(error, match=match):
        options = {name: value() if callable(value) else value for name, value in options.items()}
        nsi.fit(jax.random.key(0), DATA, **(QUICK | options))


def test_bad_solver_options_are_refused(flow):
    for settings, match in ((dict(rtol=-1.0), "rtol"), (dict(rtol=0.0, atol=0.0), "rtol"),
                            (dict(atol=0.0), "atol")):
        with pytest.raises(ValueError, match=match):
            flow.with_settings(**settings)
    for make in (lambda: nsi.ODESampler(n_steps=0), lambda: nsi.SDESampler(1.0, n_steps=0),
                 lambda: nsi.ODELikelihood(n_steps=0)):
        with pytest.raises(ValueError, match="n_steps"):
            make()
    with pytest.raises(ValueError, match=r"sample_shape must be a tuple of non-negative ints"):
        flow.sample(jax.random.key(0), (-1,))


def test_eps_numbers_are_accepted_and_bad_schedules_refused():
    for eps in (np.float32(0.5), jnp.asarray(0.5), 1):
        assert nsi.as_eps(eps) == nsi.ConstantEps(float(eps))
    for eps in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ValueError, match="eps0 must be a non-negative number"):
            nsi.as_eps(eps)
    with pytest.raises(ValueError, match=r"eps\(t\) must be finite and >= 0 on \[0, 1\];"
                                         r" eps\(0\) = -1.0"):
        nsi.as_eps(lambda t: -1.0)
    with pytest.raises(ValueError, match=r"eps\(0.53125\) = nan"):
        nsi.as_eps(lambda t: jnp.sqrt(0.5 - t))
    with pytest.raises(TypeError, match="callable as eps"):
        nsi.as_eps(lambda t: "large")


def test_sde_sampling_that_blows_up_raises_instead_of_returning_nan():
    narrow = 4.0 + 0.15 * jax.random.normal(jax.random.key(2), (300, 2))
    flow = nsi.build_flow(jax.random.key(3), narrow, network=NET)
    fixed = flow.with_settings(sampler=nsi.SDESampler(1e6, n_steps=256))
    with pytest.raises(RuntimeError, match="gave non-finite draws with 256 fixed steps"):
        fixed.sample(jax.random.key(4), (8,))
    adaptive = flow.with_settings(sampler=nsi.SDESampler(1e6, max_steps=64))
    with pytest.raises(RuntimeError, match=r"eps = ConstantEps\(eps0=1000000\.0\) needed more"
                                           r" than max_steps = 64"):
        adaptive.sample(jax.random.key(4), (8,))


# ----------------------------------------------------------------------------------------------
# numerics at the edges
# ----------------------------------------------------------------------------------------------


def test_huge_float32_data_standardise_without_overflow():
    huge = 1e18 * DATA
    standardization = nsi.Standardization.from_data(huge)
    assert np.all(np.isfinite(standardization.scale)) and np.all(standardization.scale > 0)
    np.testing.assert_allclose(standardization.scale, 1e18 * jnp.std(DATA, axis=0), rtol=1e-5)
    flow = nsi.build_flow(jax.random.key(1), huge, network=NET)
    assert np.all(np.isfinite(flow.log_prob(huge[:4])))


def test_unstandardised_large_data_warn():
    with pytest.warns(UserWarning, match="standardize=False on data with standard deviation"):
        nsi.build_flow(jax.random.key(1), 1e8 * DATA, standardize=False, network=NET)


def test_float16_data_are_refused_before_training():
    with pytest.raises(TypeError, match="float16, too coarse to train in"):
        nsi.fit(jax.random.key(0), DATA.astype(jnp.float16), **QUICK)


def test_a_constant_context_column_keeps_scale_one(x64):
    """A context column that never varies in training: a later context a little off it must
    not become millions of standard deviations (it used to give log_prob ~ -3e7)."""
    theta = jax.random.normal(jax.random.key(5), (400, 2))
    context = jnp.stack([theta[:, 0] + 0.1 * jax.random.normal(jax.random.key(6), (400,)),
                         jnp.full(400, 2.0)], axis=1)
    with pytest.warns(UserWarning, match=r"context column\(s\) \[1\] are constant"):
        flow, _ = nsi.fit(jax.random.key(7), theta, context=context, **QUICK)
    assert float(flow.context_standardization.scale[1]) == 1.0
    points = theta[:8]
    at = flow.log_prob(points, context[:8])
    near = flow.log_prob(points, context[:8].at[:, 1].add(1e-3))
    assert np.all(np.isfinite(near)) and float(jnp.max(jnp.abs(near - at))) < 0.1


def test_nan_in_gives_nan_out_and_the_support_ends_agree(flow):
    values = flow.log_prob(jnp.array([[0.1, 0.2], [jnp.nan, 0.2], [0.1, jnp.inf]]))
    assert np.isfinite(values[0]) and np.isnan(values[1]) and values[2] == -np.inf
    unit = jax.random.uniform(jax.random.key(8), (300, 2), minval=0.05, maxval=0.95)
    bounded = nsi.build_flow(jax.random.key(9), unit, support=constraints.interval(0.0, 1.0),
                             network=NET)
    ends = bounded.log_prob(jnp.array([[0.0, 0.5], [1.0, 0.5], [-0.1, 0.5], [1.1, 0.5],
                                       [jnp.nan, 0.5], [0.5, 0.5]]))
    np.testing.assert_array_equal(ends[:4], -np.inf)  # both ends, and beyond them
    assert np.isnan(ends[4]) and np.isfinite(ends[5])


def test_cross_entropy_says_why_a_value_is_not_finite(flow):
    with pytest.warns(RuntimeWarning, match="solve succeeded but the density is not finite"):
        result = cross_entropy(flow, jnp.array([[0.1, 0.2], [1e30, 0.0]]))
    assert result.n_failed == 1
    starved = flow.with_settings(likelihood=nsi.ODELikelihood(max_steps=1))
    with pytest.warns(RuntimeWarning, match="exhausted the step budget"):
        cross_entropy(starved, DATA[:4])


# ----------------------------------------------------------------------------------------------
# NumPyro models where a log density is expected
# ----------------------------------------------------------------------------------------------


def model(n, y=None):
    x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([n]).to_event(1))
    numpyro.sample("y", dist.Normal(x.sum(), 1.0), obs=y)


def test_a_numpyro_model_passed_as_a_log_density_is_named():
    with pytest.raises(TypeError, match="log_target_from_model"):
        adaptive.run(jax.random.key(0), lambda x: model(2), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"model_args=\(\) .* failed .* pass the arguments"):
        unconstrained_draws(model, {"x": jnp.zeros((3, 2))})
    draws = unconstrained_draws(model, {"x": jnp.ones((3, 2))}, model_args=(2,),
                                model_kwargs={"y": 1.0})
    np.testing.assert_array_equal(draws, jnp.ones((3, 2)))
