"""Cross-entropy of a flow on held-out samples (docs/math.md section 5), checked with the oracle's
exact fields: on draws from the target it must equal the target's entropy.

Statistical assertions compare against Monte Carlo standard errors (fixed keys, 3 se of the
difference); bad inputs must raise errors that name the problem.
"""

import math

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import toy_conditional_flow

import numpyro_si as nsi
from numpyro_si.diagnostics import CrossEntropy, cross_entropy

from . import DIM, make_flow


@pytest.mark.parametrize("kind", ["two-sided", "one-sided"])
def test_cross_entropy_of_exact_flow_is_target_entropy(x64, kind):
    flow, target = make_flow(kind, rtol=1e-7, atol=1e-7)
    x, _ = target.sample(jax.random.key(2), 400)
    result = cross_entropy(flow, x)
    # Independent estimate of H(rho1) on other draws; KL = 0, so the two must agree.
    entropy, entropy_se = target.entropy_monte_carlo(jax.random.key(3), 20_000)
    combined_se = math.sqrt(result.se**2 + float(entropy_se) ** 2)
    assert abs(result.mean - float(entropy)) < 3 * combined_se
    assert combined_se < 0.1  # enough power: the entropy is about 3 nats
    # On the same points the values are -log rho1 up to the ODE solver's tolerance.
    np.testing.assert_allclose(result.values, -target.log_prob(x), atol=1e-5)
    exact_mean = float(jnp.mean(-target.log_prob(x)))
    assert abs(result.mean - exact_mean) < 1e-5
    assert result.n == 400 and result.n_failed == 0 and result.values.shape == (400,)
    np.testing.assert_allclose(result.se, np.std(result.values, ddof=1) / math.sqrt(400))


def test_result_object_and_string():  # default float32
    flow, target = make_flow()
    x, _ = target.sample(jax.random.key(2), 30)
    result = cross_entropy(flow, x)
    assert isinstance(result, CrossEntropy)
    mean, se, values, n, n_failed = result  # a NamedTuple
    assert values.dtype == jnp.float32 and np.isfinite(mean) and se > 0 and n_failed == 0
    text = str(result)
    assert "±" in text and "nats" in text and "(N=30)" in text and f"{mean:.4g}" in text
    assert repr(result).startswith("CrossEntropy(")


@pytest.mark.slow  # statistical; `make test-all`
def test_batches_and_chain_axes_do_not_change_the_result(x64):
    flow, target = make_flow()
    x, _ = target.sample(jax.random.key(2), 30)
    full = cross_entropy(flow, x)
    batched = cross_entropy(flow, x, batch_size=7)  # 5 chunks, the last one padded
    np.testing.assert_allclose(batched.values, full.values, rtol=1e-10, atol=1e-10)
    chains = cross_entropy(flow, x.reshape(3, 10, DIM))  # (chains, draws, d) is flattened
    np.testing.assert_allclose(chains.values, full.values, rtol=1e-10, atol=1e-10)
    assert chains.n == 30


def test_inference_data_gives_the_same_result_as_the_array(x64):
    flow, target = make_flow()
    x, _ = target.sample(jax.random.key(2), 24)
    draws = np.asarray(x).reshape(2, 12, DIM)  # 2 chains of 12 draws
    idata = az.from_dict(
        posterior={"b": draws[..., 1], "a": draws[..., :1], "unused": np.zeros((2, 12))}
    )
    from_array = cross_entropy(flow, x)
    # "a" is a length-1 vector and "b" a scalar; var_names orders the coordinates.
    from_idata = cross_entropy(flow, idata, var_names=["a", "b"])
    np.testing.assert_allclose(from_idata.values, from_array.values, rtol=1e-10, atol=1e-10)
    assert from_idata.n == 24
    swapped = cross_entropy(flow, idata, var_names=["b", "a"])
    np.testing.assert_allclose(
        swapped.values, cross_entropy(flow, x[:, ::-1]).values, rtol=1e-10, atol=1e-10
    )
    # Without var_names every posterior variable is used: here 3 coordinates, a mismatch.
    with pytest.raises(ValueError, match="dimension 2.*last axis 3"):
        cross_entropy(flow, idata)


def test_failed_solves_are_kept_and_reported(x64):
    flow, target = make_flow(likelihood=nsi.ODELikelihood(max_steps=2))
    x, _ = target.sample(jax.random.key(2), 5)
    with pytest.warns(RuntimeWarning, match="not finite at 5 of 5 points"):
        result = cross_entropy(flow, x)
    assert result.n_failed == 5 and result.n == 5
    assert result.mean == math.inf and np.all(np.isinf(result.values))
    assert "5 failed" in str(result)


# -- bad inputs --------------------------------------------------------------------------------


def test_dimension_mismatch_names_both_dimensions():
    flow, _ = make_flow()
    with pytest.raises(ValueError, match="flow has dimension 2.*last axis 3"):
        cross_entropy(flow, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="Dimension mismatch"):
        cross_entropy(flow, np.zeros(()))


def test_nan_draws_are_counted():
    flow, _ = make_flow()
    x = np.zeros((10, DIM))
    x[3, 0] = np.nan
    x[7, 1] = np.inf
    with pytest.raises(ValueError, match=r"NaN or infinite values in 2 of 10 draws.*index 3"):
        cross_entropy(flow, x)


def test_empty_samples():
    flow, _ = make_flow()
    with pytest.raises(ValueError, match="empty"):
        cross_entropy(flow, np.zeros((0, DIM)))


def test_inference_data_without_posterior():
    flow, _ = make_flow()
    idata = az.from_dict(prior={"theta": np.zeros((1, 10, DIM))})
    with pytest.raises(ValueError, match="no posterior group.*prior"):
        cross_entropy(flow, idata)


def test_inference_data_without_the_named_variables_lists_what_is_there():
    flow, _ = make_flow()
    idata = az.from_dict(posterior={"theta": np.zeros((1, 10, DIM)), "sigma": np.ones((1, 10))})
    # the variables it has, in the posterior's order (which older ArviZ versions sort)
    with pytest.raises(ValueError, match=r"no variable\(s\) \['mu'\]; it has \['(theta|sigma)',"
                                         r" '(sigma|theta)'\]"):
        cross_entropy(flow, idata, var_names=["theta", "mu"])


def test_other_bad_arguments():
    flow, _ = make_flow()
    with pytest.raises(TypeError, match="InferenceData"):
        cross_entropy(flow, {"theta": np.zeros((10, DIM))})
    with pytest.raises(TypeError, match="SIFlow"):
        cross_entropy(object(), np.zeros((10, DIM)))
    with pytest.raises(ValueError, match="batch_size"):
        cross_entropy(flow, np.zeros((10, DIM)), batch_size=0)
    with pytest.raises(ValueError, match="context is only for a ConditionalSIFlow"):
        cross_entropy(flow, np.zeros((10, DIM)), context=np.zeros((10, DIM)))


def test_conditional_flow_without_context_is_refused():
    """A ConditionalSIFlow is a family of densities: its cross-entropy needs one context per
    sample, or the flow conditioned first."""
    with pytest.raises(ValueError, match=r"needs a context.*flow\.condition\(y\)"):
        cross_entropy(toy_conditional_flow(), np.zeros((10, DIM)))
