"""save / load: bit-exact round trips of plain, constrained and conditional flows (no training and
no ODE solves: the arrays and the configuration are compared), format versions, bad files."""

import json
import zipfile

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints

import numpyro_si as nsi


def network(dim=2, context_dim=0, seed=0):
    return nsi.FieldMLP(dim, width=8, depth=2, context_dim=context_dim, key=jax.random.key(seed))


def standardization(dim, seed):
    rng = np.random.default_rng(seed)
    return nsi.Standardization(jnp.asarray(rng.normal(size=dim)),
                               jnp.asarray(rng.uniform(0.5, 2.0, size=dim)))


def assert_same_arrays(a, b):
    leaves_a = jax.tree.leaves(eqx.filter(a, eqx.is_array))
    leaves_b = jax.tree.leaves(eqx.filter(b, eqx.is_array))
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def round_trip(tmp_path, flow, **load_options):
    path = tmp_path / "flow.nsi"
    nsi.save(path, flow)
    return nsi.load(path, **load_options)


def test_plain_flow_round_trip(tmp_path):
    flow = nsi.SIFlow(nsi.OneSidedLinearInterpolant(), network(), standardization=standardization(2, 0),
                      sampler="sde", eps=nsi.DecayingEps(0.5), rtol=1e-4, atol=1e-6)
    loaded = round_trip(tmp_path, flow)
    assert type(loaded) is nsi.SIFlow
    assert_same_arrays(loaded._model, flow._model)
    assert loaded.sampler == flow.sampler and (loaded.rtol, loaded.atol) == (1e-4, 1e-6)


SUPPORTS = {
    "positive": (constraints.positive, 2),
    "unit-interval": (constraints.unit_interval, 2),
    "interval-arrays": (constraints.interval(jnp.array([0.0, -1.0]), jnp.array([1.0, 4.0])), 2),
    "greater-than": (constraints.greater_than(-2.5), 2),
    "simplex": (constraints.simplex, 2),
    "ordered": (constraints.ordered_vector, 2),
    "positive-definite": (constraints.positive_definite, 3),
}


@pytest.mark.parametrize("name", list(SUPPORTS))
def test_constrained_flow_round_trip(tmp_path, name):
    support, dim = SUPPORTS[name]
    flow = nsi.ConstrainedSIFlow(nsi.SIFlow(nsi.OneSidedLinearInterpolant(), network(dim)), support)
    loaded = round_trip(tmp_path, flow)
    assert type(loaded) is nsi.ConstrainedSIFlow
    assert type(loaded.constraint) is type(support)
    assert loaded.event_shape == flow.event_shape
    assert_same_arrays(loaded.flow._model, flow.flow._model)
    for bound in ("lower_bound", "upper_bound"):
        if hasattr(support, bound):
            np.testing.assert_array_equal(getattr(loaded.constraint, bound), getattr(support, bound))


def test_conditional_flow_round_trip(tmp_path):
    conditional = nsi.ConditionalSIFlow(
        nsi.OneSidedLinearInterpolant(), network(2, context_dim=3), context_dim=3,
        standardization=standardization(2, 1), context_standardization=standardization(3, 2),
        support=constraints.positive,
    )
    loaded = round_trip(tmp_path, conditional)
    assert type(loaded) is nsi.ConditionalSIFlow
    assert loaded.context_dim == 3 and loaded.dim == 2 and loaded.support is constraints.positive
    assert loaded.velocity.config() == conditional.velocity.config()
    assert_same_arrays(loaded, conditional)
    # a conditioned flow is an SIFlow on a ConditionedField: saveable too, context included
    conditioned = conditional.condition(jnp.array([0.5, -1.0, 2.0]))
    again = round_trip(tmp_path, conditioned)
    assert type(again) is nsi.ConstrainedSIFlow
    assert isinstance(again.flow.velocity, nsi.ConditionedField)
    assert_same_arrays(again.flow._model, conditioned.flow._model)


def test_two_sided_conditional_with_a_custom_base_needs_it_again(tmp_path):
    base = dist.Normal(jnp.array([1.0, 2.0]), 3.0).to_event(1)
    conditional = nsi.ConditionalSIFlow(nsi.LinearInterpolant(), network(2, context_dim=1),
                                        context_dim=1, base=base)
    path = tmp_path / "flow.nsi"
    nsi.save(path, conditional)
    with pytest.raises(ValueError, match="non-default base"):
        nsi.load(path)
    assert nsi.load(path, base=base).base is base


def rewrite_meta(path, change):
    with zipfile.ZipFile(path) as archive:
        meta = json.loads(archive.read("meta.json"))
        leaves = archive.read("leaves.eqx")
    change(meta)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("meta.json", json.dumps(meta))
        archive.writestr("leaves.eqx", leaves)


def test_format_versions(tmp_path):
    """Version 1 files (before supports and conditional flows) still load; a newer version is
    refused with both versions named."""
    path = tmp_path / "flow.nsi"
    flow = nsi.SIFlow(nsi.OneSidedLinearInterpolant(), network())
    nsi.save(path, flow)

    def as_version_1(meta):
        meta["format_version"] = 1
        del meta["support"], meta["conditional"]

    rewrite_meta(path, as_version_1)
    assert_same_arrays(nsi.load(path)._model, flow._model)
    rewrite_meta(path, lambda meta: meta.update(format_version=99))
    with pytest.raises(ValueError, match="format version 99.*reads versions 1, 2"):
        nsi.load(path)


def test_bad_files_and_unsaveable_flows(tmp_path):
    path = tmp_path / "flow.nsi"
    nsi.save(path, nsi.ConstrainedSIFlow(nsi.SIFlow(nsi.OneSidedLinearInterpolant(), network()),
                                         constraints.positive))
    rewrite_meta(path, lambda meta: meta.update(support={"class": "_Evil", "params": {}, "aux": {}}))
    with pytest.raises(ValueError, match="unknown support"):
        nsi.load(path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        nsi.load(path)
    with pytest.raises(ValueError, match=r"flow.fields.velocity = FunctionField"):
        nsi.save(path, nsi.SIFlow(nsi.OneSidedLinearInterpolant(), lambda t, x: x, dim=2))
    with pytest.raises(ValueError, match="ConditionalSIFlow cannot be saved"):
        nsi.save(path, nsi.ConditionalSIFlow(nsi.OneSidedLinearInterpolant(),
                                             lambda t, x, c: x, context_dim=1, dim=2))
    with pytest.raises(TypeError, match="save expects an SIFlow"):
        nsi.save(path, dist.Normal(0.0, 1.0))
