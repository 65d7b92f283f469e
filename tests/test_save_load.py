"""`nsi.save` / `nsi.load`: bit-exact round trips of plain, constrained and conditional flows
(every array and option; no training and no ODE solves), files of earlier format versions, atomic
writes, and clear errors for damaged, foreign or incompatible files."""

import io
import json
import os
import zipfile
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from helpers import array_leaves
from numpyro.distributions import constraints

import numpyro_si as nsi

SAVED_V2 = Path(__file__).parent / "data" / "saved_v2"


def assert_same_arrays(a, b):
    leaves_a, leaves_b = array_leaves(a), array_leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def network(dim=2, context_dim=0, seed=0):
    return nsi.FieldMLP(dim, width=8, depth=2, context_dim=context_dim, key=jax.random.key(seed))


def standardization(dim, seed):
    rng = np.random.default_rng(seed)
    return nsi.Standardization(jnp.asarray(rng.normal(size=dim)),
                               jnp.asarray(rng.uniform(0.5, 2.0, size=dim)))


def one_sided_flow(dim=3, key=0):
    k_net, k_shift = jax.random.split(jax.random.key(key))
    velocity = nsi.FieldMLP(dim, width=16, depth=2, key=k_net)
    standardization = nsi.Standardization(
        jax.random.normal(k_shift, (dim,)), jnp.linspace(0.5, 2.0, dim)
    )
    return nsi.SIFlow(nsi.OneSidedLinearInterpolant(), velocity, standardization=standardization,
                      settings=nsi.SolverSettings(rtol=1e-6, atol=1e-7))


def two_sided_flow(dim=2):
    k_v, k_s = jax.random.split(jax.random.key(1))
    interpolant = nsi.LinearInterpolant(nsi.BrownianGamma(0.5))
    velocity = nsi.FieldMLP(dim, width=8, depth=1, residual=False, activation="tanh", key=k_v)
    score = nsi.FieldMLP(dim, width=8, depth=2, residual=True, key=k_s)
    settings = nsi.SolverSettings(sampler=nsi.SDESampler(nsi.DecayingEps(0.7)),
                                  divergence=nsi.ExactDivergence())
    return nsi.SIFlow(interpolant, velocity, score, settings=settings)


def round_trip(tmp_path, flow, **load_options):
    path = tmp_path / "flow.nsi"
    nsi.save(path, flow)
    return nsi.load(path, **load_options)


def read_archive(path):
    """(meta as a dict, the bytes of leaves.eqx)."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("meta.json")), archive.read("leaves.eqx")


def rewrite_meta(path, change):
    """Rewrite the file with `change(meta)` applied to its metadata (the arrays unchanged)."""
    meta, leaves = read_archive(path)
    change(meta)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("meta.json", json.dumps(meta))
        archive.writestr("leaves.eqx", leaves)
    path.write_bytes(buffer.getvalue())


# ----------------------------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------------------------


def test_round_trip_is_bit_exact(tmp_path):
    flow = one_sided_flow()
    path = tmp_path / "flow.nsi"
    nsi.save(path, flow)
    loaded = nsi.load(path)
    assert type(loaded) is nsi.SIFlow and loaded.dim == flow.dim
    assert_same_arrays(loaded._model, flow._model)  # fields and standardisation
    np.testing.assert_array_equal(loaded.standardization.shift, flow.standardization.shift)
    np.testing.assert_array_equal(loaded.standardization.scale, flow.standardization.scale)
    assert loaded.settings == flow.settings and (loaded.rtol, loaded.atol) == (1e-6, 1e-7)
    assert type(loaded.interpolant) is type(flow.interpolant)
    assert loaded.velocity.config() == flow.velocity.config()
    # the same function: the network gives identical outputs
    x = jnp.linspace(-1.0, 1.0, flow.dim)
    np.testing.assert_array_equal(loaded.velocity(0.3, x), flow.velocity(0.3, x))
    # saving the loaded flow again writes the same arrays and configuration
    again = tmp_path / "again.nsi"
    nsi.save(again, loaded)
    assert read_archive(path) == read_archive(again)
    assert read_archive(path)[0]["format_version"] == 3


def test_sampler_score_and_interpolant_options_survive(tmp_path):
    flow = two_sided_flow()
    nsi.save(tmp_path / "f.nsi", flow)
    loaded = nsi.load(tmp_path / "f.nsi")
    assert_same_arrays(loaded.velocity, flow.velocity)
    assert_same_arrays(loaded.score, flow.score)
    assert loaded.score.config() == flow.score.config()
    assert isinstance(loaded.sampler, nsi.SDESampler)
    assert isinstance(loaded.sampler.eps, nsi.DecayingEps) and loaded.sampler.eps.eps0 == 0.7
    assert loaded.sampler.n_steps == flow.sampler.n_steps
    assert isinstance(loaded.interpolant.gamma, nsi.BrownianGamma)
    assert loaded.interpolant.gamma.a == 0.5
    assert loaded.settings == flow.settings
    # a non-default likelihood solve and a fixed-step sampler
    custom = flow.with_settings(sampler=nsi.ODESampler(n_steps=12),
                                likelihood=nsi.ODELikelihood(diffrax.Dopri5(), max_steps=100))
    back = round_trip(tmp_path, custom)
    assert isinstance(back.sampler, nsi.ODESampler) and back.sampler.n_steps == 12
    assert isinstance(back.likelihood, nsi.ODELikelihood)
    assert isinstance(back.likelihood.solver, diffrax.Dopri5)
    assert back.likelihood.max_steps == 100 and back.settings == custom.settings
    # a one-sided flow sampled by the SDE (its score follows from the velocity), own tolerances
    sde = nsi.SIFlow(nsi.OneSidedLinearInterpolant(), network(),
                     standardization=standardization(2, 0),
                     settings=nsi.SolverSettings(sampler=nsi.SDESampler(nsi.DecayingEps(0.5)),
                                                 rtol=1e-4, atol=1e-6))
    loaded = round_trip(tmp_path, sde)
    assert type(loaded) is nsi.SIFlow and loaded.score is None
    assert_same_arrays(loaded._model, sde._model)
    assert loaded.sampler == sde.sampler and (loaded.rtol, loaded.atol) == (1e-4, 1e-6)


def test_float64_round_trip(tmp_path, x64):
    flow = one_sided_flow(dim=2)
    assert array_leaves(flow.velocity)[0].dtype == jnp.float64
    loaded = round_trip(tmp_path, flow)
    assert_same_arrays(loaded._model, flow._model)


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


@pytest.mark.parametrize("kind", ["plain", "conditional"])
def test_custom_base_must_be_given_again(tmp_path, kind):
    base = dist.Normal(jnp.array([1.0, -1.0]), jnp.array([0.5, 2.0])).to_event(1)
    if kind == "plain":
        flow = nsi.SIFlow(nsi.LinearInterpolant(), network(), base=base)
    else:
        flow = nsi.ConditionalSIFlow(nsi.LinearInterpolant(), network(2, context_dim=1),
                                     context_dim=1, base=base)
    path = tmp_path / "flow.nsi"
    nsi.save(path, flow)
    with pytest.raises(ValueError, match="non-default base"):
        nsi.load(path)
    loaded = nsi.load(path, base=base)
    assert type(loaded) is type(flow) and loaded.base is base
    assert_same_arrays(loaded.velocity, flow.velocity)


# ----------------------------------------------------------------------------------------------
# files written by earlier versions
# ----------------------------------------------------------------------------------------------

# tests/data/saved_v2: format version 2, written by numpyro_si 0.1.0 (before SolverSettings).
# plain.nsi: fit(key(1), 1000 x 2 Gaussian draws, num_steps 270, batch 100, width 16, depth 2);
# the others as their names say. (Their log densities against recorded values:
# test_fixed_key_results.py.)
V2_FILES = ["plain", "two_sided_sde", "conditional", "positive"]


def check_v2_kind(name, flow):
    """What each saved_v2 file holds, as the new API spells it."""
    expected_type = {"plain": nsi.SIFlow, "two_sided_sde": nsi.SIFlow,
                     "conditional": nsi.ConditionalSIFlow, "positive": nsi.ConstrainedSIFlow}
    assert type(flow) is expected_type[name]
    assert flow.dim == 2 and flow.standardization is not None
    assert flow.velocity.config() == dict(dim=2, width=16, depth=2, n_frequencies=4,
                                          residual=False, activation="silu",
                                          context_dim=1 if name == "conditional" else 0)
    # the solver options of version 2 grouped into SolverSettings, the likelihood solve an
    # ODELikelihood (it was an ODESampler)
    settings = flow.settings
    assert isinstance(settings, nsi.SolverSettings)
    assert type(settings.likelihood) is nsi.ODELikelihood
    assert isinstance(settings.likelihood.solver, diffrax.Tsit5)
    assert (settings.likelihood.n_steps, settings.likelihood.max_steps) == (None, 4096)
    assert isinstance(settings.divergence, nsi.ExactDivergence)
    assert (settings.rtol, settings.atol) == (1e-5, 1e-5)
    if name == "two_sided_sde":
        assert isinstance(flow.interpolant, nsi.LinearInterpolant)
        assert isinstance(flow.interpolant.gamma, nsi.BrownianGamma)
        assert flow.interpolant.gamma.a == 1.0
        assert isinstance(flow.score, nsi.FieldMLP)
        assert flow.score.config() == flow.velocity.config()
        assert isinstance(settings.sampler, nsi.SDESampler)
        assert isinstance(settings.sampler.eps, nsi.ConstantEps)
        assert settings.sampler.eps.eps0 == 0.5 and settings.sampler.n_steps == 256
        assert isinstance(settings.sampler.solver, diffrax.Euler)
    else:
        assert isinstance(flow.interpolant, nsi.OneSidedLinearInterpolant)
        assert flow.score is None
        assert settings.sampler == nsi.ODESampler()
    if name == "conditional":
        assert flow.context_dim == 1 and flow.support is None
        assert flow.context_standardization.shift.shape == (1,)
    if name == "positive":
        assert type(flow.constraint) is type(constraints.positive)
        assert flow.event_shape == (2,)


@pytest.mark.parametrize("name", V2_FILES)
def test_version_2_files_load_and_resave_bit_exactly(tmp_path, name):
    """A version 2 file loads as the right kind with its arrays unchanged (the arrays keep their
    order, so re-saving writes the very same leaves); the re-saved file is format 3 and reloads
    bit for bit."""
    source = SAVED_V2 / f"{name}.nsi"
    meta_v2, leaves_v2 = read_archive(source)
    assert meta_v2["format_version"] == 2
    flow = nsi.load(source)
    check_v2_kind(name, flow)
    resaved = tmp_path / "resaved.nsi"
    nsi.save(resaved, flow)
    meta_v3, leaves_v3 = read_archive(resaved)
    assert meta_v3["format_version"] == 3
    assert leaves_v3 == leaves_v2  # every array, bit for bit, in the same order
    for key in ("dim", "base", "support", "conditional"):
        assert meta_v3[key] == meta_v2[key]
    reloaded = nsi.load(resaved)
    check_v2_kind(name, reloaded)
    assert_same_arrays(reloaded, flow)
    assert reloaded.settings == flow.settings
    # and once more: format 3 to format 3 is a fixed point
    again = tmp_path / "again.nsi"
    nsi.save(again, reloaded)
    assert read_archive(again) == (meta_v3, leaves_v3)


def test_version_1_files_still_load(tmp_path):
    """Version 1 (before supports and conditional flows): a version 2 file without those
    entries."""
    path = tmp_path / "v1.nsi"
    path.write_bytes((SAVED_V2 / "plain.nsi").read_bytes())

    def as_version_1(meta):
        meta["format_version"] = 1
        del meta["support"], meta["conditional"]

    rewrite_meta(path, as_version_1)
    loaded = nsi.load(path)
    check_v2_kind("plain", loaded)
    assert_same_arrays(loaded, nsi.load(SAVED_V2 / "plain.nsi"))


# ----------------------------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------------------------


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "flow.nsi"
    nsi.save(path, one_sided_flow(key=0))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        nsi.save(path, one_sided_flow(key=5))
    monkeypatch.undo()
    assert path.read_bytes() == before  # the saved flow is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow.nsi"]  # no temporary left


def test_save_creates_parent_folders_and_overwrites(tmp_path):
    path = tmp_path / "a" / "b" / "flow.nsi"
    nsi.save(path, one_sided_flow(key=0))
    nsi.save(path, one_sided_flow(key=1))
    assert_same_arrays(nsi.load(path).velocity, one_sided_flow(key=1).velocity)


# ----------------------------------------------------------------------------------------------
# damaged, foreign and incompatible files
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.6, 0.95])
def test_truncated_file_is_reported(tmp_path, keep):
    path = tmp_path / "flow.nsi"
    nsi.save(path, one_sided_flow())
    data = path.read_bytes()
    path.write_bytes(data[: int(keep * len(data))])
    with pytest.raises(ValueError, match="truncated or corrupted|not a readable"):
        nsi.load(path)


def test_corrupted_bytes_are_reported(tmp_path):
    path = tmp_path / "flow.nsi"
    nsi.save(path, one_sided_flow())
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(16)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        nsi.load(path)


def test_incompatible_format_version_is_named(tmp_path):
    """A newer format is refused, naming its version, the version that wrote it and the versions
    this one reads."""
    path = tmp_path / "flow.nsi"
    nsi.save(path, one_sided_flow())
    rewrite_meta(path, lambda meta: meta.update(format_version=999, numpyro_si_version="9.9"))
    message = r"format version 999 \(by numpyro_si 9\.9\); this numpyro_si .* reads versions 1, 2, 3"
    with pytest.raises(ValueError, match=message):
        nsi.load(path)


def test_foreign_files_are_rejected(tmp_path):
    not_zip = tmp_path / "notes.txt"
    not_zip.write_text("hello")
    with pytest.raises(ValueError, match="not a readable"):
        nsi.load(not_zip)
    other_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("meta.json", json.dumps({"format": "something else"}))
        archive.writestr("leaves.eqx", b"")
    with pytest.raises(ValueError, match="not a numpyro_si flow"):
        nsi.load(other_zip)
    with pytest.raises(FileNotFoundError):
        nsi.load(tmp_path / "missing.nsi")


def test_unknown_support_is_refused(tmp_path):
    path = tmp_path / "flow.nsi"
    nsi.save(path, nsi.ConstrainedSIFlow(nsi.SIFlow(nsi.OneSidedLinearInterpolant(), network()),
                                         constraints.positive))
    rewrite_meta(path, lambda meta: meta.update(support={"class": "_Evil", "params": {}, "aux": {}}))
    with pytest.raises(ValueError, match="unknown support"):
        nsi.load(path)


def test_arrays_that_do_not_match_the_configuration(tmp_path):
    path = tmp_path / "flow.nsi"
    nsi.save(path, one_sided_flow(dim=3))
    rewrite_meta(path, lambda meta: None)  # re-zipping unchanged content still loads
    nsi.load(path)
    # the configuration of a small network with the arrays of a wider one
    small, big = tmp_path / "small.nsi", tmp_path / "big.nsi"
    nsi.save(small, one_sided_flow(dim=3))
    big_flow = nsi.SIFlow(nsi.OneSidedLinearInterpolant(),
                          nsi.FieldMLP(3, width=32, depth=2, key=jax.random.key(0)))
    nsi.save(big, big_flow)
    meta_small, _ = read_archive(small)
    _, leaves_big = read_archive(big)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("meta.json", json.dumps(meta_small))
        archive.writestr("leaves.eqx", leaves_big)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="do not match"):
        nsi.load(path)


def test_unsaveable_flows_write_nothing(tmp_path):
    path = tmp_path / "f.nsi"
    with pytest.raises(ValueError, match=r"cannot be saved: flow.fields.velocity = FunctionField"):
        nsi.save(path, nsi.SIFlow(nsi.OneSidedLinearInterpolant(), lambda t, x: -x, dim=2))
    with pytest.raises(ValueError, match="ConditionalSIFlow cannot be saved"):
        nsi.save(path, nsi.ConditionalSIFlow(nsi.OneSidedLinearInterpolant(),
                                             lambda t, x, c: x, context_dim=1, dim=2))
    message = r"save expects a flow \(an SIFlow, a ConstrainedSIFlow or a ConditionalSIFlow\)"
    with pytest.raises(TypeError, match=message + ", got Normal"):
        nsi.save(path, dist.Normal(0.0, 1.0))
    with pytest.raises(TypeError, match=message + ", got str"):
        nsi.save(path, "not a flow")
    assert not any(tmp_path.iterdir())  # nothing written
