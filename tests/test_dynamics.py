"""eps(t) schedules and the `Fields` bundle that forms b, eps * s and the SDE drifts
(docs/math.md section 3)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fixed_mixture

import numpyro_si as nsi
from numpyro_si._dynamics import as_field
from numpyro_si.oracle import GaussianMixtureOracle

TS = np.array([0.0, 0.1, 0.35, 0.5, 0.8, 1.0])


# ----------------------------------------------------------------------------------------------
# eps schedules
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "eps, expected",
    [
        (nsi.ConstantEps(0.7), lambda t: 0.7 + 0 * t),
        (nsi.DecayingEps(2.0), lambda t: 2.0 * (1 - t)),
        (nsi.ZeroEndsEps(3.0), lambda t: 3.0 * t * (1 - t)),
        (nsi.CustomEps(lambda t: jnp.exp(-t)), lambda t: np.exp(-t)),
        (nsi.ConstantEps(0.0), lambda t: 0 * t),
    ],
    ids=["constant", "decaying", "zero-ends", "custom", "zero"],
)
def test_eps_schedule_values(eps, expected, x64):
    got = eps(TS)
    assert got.shape == TS.shape
    np.testing.assert_allclose(got, expected(TS), rtol=1e-14, atol=1e-14)
    assert float(eps(0.3)) == pytest.approx(float(expected(np.array(0.3))))


def test_eps_vanishing_at_the_data_end():
    assert float(nsi.DecayingEps(5.0)(1.0)) == 0.0
    assert float(nsi.ZeroEndsEps(5.0)(1.0)) == 0.0
    assert float(nsi.ZeroEndsEps(5.0)(0.0)) == 0.0


@pytest.mark.parametrize("cls", [nsi.ConstantEps, nsi.DecayingEps, nsi.ZeroEndsEps])
@pytest.mark.parametrize("eps0", [-0.1, -1, float("nan"), "1.0"])
def test_eps_rejects_negative_or_non_numbers(cls, eps0):
    with pytest.raises(ValueError, match="eps0"):
        cls(eps0)


@pytest.mark.parametrize(
    "value, cls",
    [(0.5, nsi.ConstantEps), (2, nsi.ConstantEps), (lambda t: t, nsi.CustomEps),
     (nsi.DecayingEps(1.0), nsi.DecayingEps)],
    ids=["float", "int", "callable", "schedule"],
)
def test_as_eps(value, cls):
    eps = nsi.as_eps(value)
    assert isinstance(eps, cls)
    if isinstance(value, nsi.AbstractEps):
        assert eps is value


def test_as_eps_rejects_other_things():
    with pytest.raises(TypeError, match="eps"):
        nsi.as_eps("big")
    with pytest.raises(ValueError, match="eps0"):
        nsi.as_eps(-1.0)


def test_eps_is_jit_compatible():
    eps = nsi.ZeroEndsEps(2.0)
    np.testing.assert_allclose(jax.jit(lambda e, t: e(t))(eps, 0.5), 0.5, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# fields
# ----------------------------------------------------------------------------------------------


def test_as_field():
    fn = lambda t, x: -x  # noqa: E731
    wrapped = as_field(fn, "velocity")
    assert isinstance(wrapped, nsi.FunctionField) and isinstance(wrapped, eqx.Module)
    np.testing.assert_allclose(wrapped(0.3, jnp.ones(2)), -jnp.ones(2))
    module = nsi.FunctionField(fn)
    assert as_field(module, "velocity") is module
    assert as_field(None, "score") is None
    with pytest.raises(TypeError, match="velocity"):
        as_field(3.0, "velocity")
    with pytest.raises(TypeError, match="score"):
        as_field(_NotCallable(), "score")  # a module without __call__


class _NotCallable(eqx.Module):
    value: float = 1.0


@pytest.fixture
def two_sided(x64):
    it = nsi.LinearInterpolant(nsi.BrownianGamma(1.0))
    return GaussianMixtureOracle(it, fixed_mixture(0, 2, 2), fixed_mixture(1, 2, 2))


@pytest.fixture
def one_sided(x64):
    return GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), fixed_mixture(2, 2, 3))


def test_has_score():
    lin, one = nsi.LinearInterpolant(nsi.BrownianGamma()), nsi.OneSidedLinearInterpolant()
    v = nsi.FunctionField(lambda t, x: x)
    assert not nsi.Fields(lin, v).has_score
    assert nsi.Fields(lin, v, v).has_score
    assert nsi.Fields(one, v).has_score  # the score follows from the velocity


def test_two_sided_without_score_cannot_form_eps_score():
    fields = nsi.Fields(nsi.LinearInterpolant(nsi.BrownianGamma()), nsi.FunctionField(lambda t, x: x))
    with pytest.raises(ValueError, match="score"):
        fields.eps_score(0.5, jnp.ones(2), 1.0)


@jax.jit
def _drifts(fields, oracle, eps, ts, xs):
    """The Fields' b, eps s, s, b_F, b_B, and the oracle's exact b and s, over ts x xs."""

    def at(t, x):
        return (fields.b(t, x), fields.eps_score(t, x, eps(t)), fields.score_value(t, x),
                fields.forward_drift(eps)(t, x), fields.backward_drift(eps)(t, x),
                oracle.velocity(t, x), oracle.score(t, x))

    return jax.vmap(jax.vmap(at, (None, 0)), (0, None))(ts, xs)


@pytest.mark.parametrize("with_score", [True, False], ids=["score-field", "from-velocity"])
@pytest.mark.parametrize(
    "eps", [nsi.ConstantEps(0.8), nsi.DecayingEps(1.5), nsi.ZeroEndsEps(2.0)],
    ids=["constant", "decaying", "zero-ends"],
)
def test_drifts_are_b_plus_minus_eps_score(one_sided, two_sided, with_score, eps):
    """b_F = b + eps s and b_B = b - eps s, with s the exact score, whether the score comes from a
    score field (two-sided) or from the velocity (one-sided)."""
    oracle = two_sided if with_score else one_sided
    # The oracle's bound methods are Equinox modules (pytrees), usable as fields directly.
    fields = nsi.Fields(oracle.interpolant, oracle.velocity, oracle.score if with_score else None)
    ts = np.array([0.0, 0.2, 0.5, 0.9, 0.99])
    xs = 2.0 * np.random.default_rng(3).standard_normal((4, 2))
    b, eps_s, s, forward, backward, exact_b, exact_s = _drifts(fields, oracle, eps, ts, xs)
    e = eps(ts)[:, None, None]
    np.testing.assert_allclose(b, exact_b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s, exact_s, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(eps_s, e * exact_s, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(forward, exact_b + e * exact_s, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(backward, exact_b - e * exact_s, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "eps", [nsi.DecayingEps(1.5), nsi.ZeroEndsEps(2.0)], ids=["decaying", "zero-ends"]
)
def test_velocity_only_drift_is_finite_at_the_data_end(one_sided, eps):
    """The one-sided score from the velocity is singular at t = 1, but with eps(1) = 0 the drifts
    there are finite and equal to b."""
    fields = nsi.Fields(one_sided.interpolant, one_sided.velocity)
    xs = 2.0 * np.random.default_rng(4).standard_normal((4, 2))
    b, eps_s, _, forward, backward, _, _ = _drifts(fields, one_sided, eps, np.array([1.0]), xs)
    np.testing.assert_array_equal(eps_s, 0.0)
    np.testing.assert_array_equal(forward, b)
    np.testing.assert_array_equal(backward, b)
    assert bool(jnp.all(jnp.isfinite(b)))
