"""`nsi.save` / `nsi.load` of plain (unconditional, unconstrained) `SIFlow`s: bit-exact round
trips of every array and option, atomic writes, and clear errors for damaged, foreign or
incompatible files."""

import io
import json
import os
import zipfile

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import numpyro_si as nsi


def array_leaves(tree):
    return jax.tree.leaves(eqx.filter(tree, eqx.is_array))


def assert_same_arrays(a, b):
    leaves_a, leaves_b = array_leaves(a), array_leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def one_sided_flow(dim=3, key=0):
    k_net, k_shift = jax.random.split(jax.random.key(key))
    velocity = nsi.FieldMLP(dim, width=16, depth=2, key=k_net)
    standardization = nsi.Standardization(
        jax.random.normal(k_shift, (dim,)), jnp.linspace(0.5, 2.0, dim)
    )
    return nsi.SIFlow(nsi.OneSidedLinearInterpolant(), velocity, standardization=standardization,
                      rtol=1e-6, atol=1e-7)


def two_sided_flow(dim=2):
    k_v, k_s = jax.random.split(jax.random.key(1))
    interpolant = nsi.LinearInterpolant(nsi.BrownianGamma(0.5))
    velocity = nsi.FieldMLP(dim, width=8, depth=1, residual=False, activation="tanh", key=k_v)
    score = nsi.FieldMLP(dim, width=8, depth=2, residual=True, key=k_s)
    return nsi.SIFlow(interpolant, velocity, score, sampler="sde", eps=nsi.DecayingEps(0.7),
                      divergence="exact")


# ----------------------------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------------------------


def test_round_trip_is_bit_exact(tmp_path):
    flow = one_sided_flow()
    path = tmp_path / "flow.nsi"
    nsi.save(path, flow)
    loaded = nsi.load(path)
    assert isinstance(loaded, nsi.SIFlow) and loaded.dim == flow.dim
    assert_same_arrays(loaded.velocity, flow.velocity)
    np.testing.assert_array_equal(loaded.standardization.shift, flow.standardization.shift)
    np.testing.assert_array_equal(loaded.standardization.scale, flow.standardization.scale)
    assert (loaded.rtol, loaded.atol) == (flow.rtol, flow.atol)
    assert type(loaded.interpolant) is type(flow.interpolant)
    assert loaded.velocity.config() == flow.velocity.config()
    # the same function: the network gives identical outputs
    x = jnp.linspace(-1.0, 1.0, flow.dim)
    np.testing.assert_array_equal(loaded.velocity(0.3, x), flow.velocity(0.3, x))
    # saving the loaded flow again writes the same arrays and configuration
    again = tmp_path / "again.nsi"
    nsi.save(again, loaded)
    with zipfile.ZipFile(path) as a, zipfile.ZipFile(again) as b:
        assert a.read("leaves.eqx") == b.read("leaves.eqx")
        assert json.loads(a.read("meta.json")) == json.loads(b.read("meta.json"))


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
    # a non-default likelihood solver and fixed steps
    custom = flow.with_sampler(
        "ode", n_steps=12, likelihood_solver=nsi.ODESampler(diffrax.Dopri5())
    )
    nsi.save(tmp_path / "g.nsi", custom)
    back = nsi.load(tmp_path / "g.nsi")
    assert isinstance(back.sampler, nsi.ODESampler) and back.sampler.n_steps == 12
    assert isinstance(back.likelihood_solver.solver, diffrax.Dopri5)


def test_float64_round_trip(tmp_path, x64):
    flow = one_sided_flow(dim=2)
    assert array_leaves(flow.velocity)[0].dtype == jnp.float64
    nsi.save(tmp_path / "f.nsi", flow)
    loaded = nsi.load(tmp_path / "f.nsi")
    assert_same_arrays(loaded.velocity, flow.velocity)


def test_custom_base_must_be_given_again(tmp_path):
    base = dist.Normal(jnp.array([1.0, -1.0]), jnp.array([0.5, 2.0])).to_event(1)
    flow = nsi.SIFlow(nsi.LinearInterpolant(), nsi.FieldMLP(2, width=8, depth=1,
                                                            key=jax.random.key(0)), base=base)
    nsi.save(tmp_path / "f.nsi", flow)
    with pytest.raises(ValueError, match="non-default base"):
        nsi.load(tmp_path / "f.nsi")
    loaded = nsi.load(tmp_path / "f.nsi", base=base)
    assert loaded.base is base
    assert_same_arrays(loaded.velocity, flow.velocity)


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


def _rewrite_meta(path, change):
    with zipfile.ZipFile(path) as archive:
        meta = json.loads(archive.read("meta.json"))
        leaves = archive.read("leaves.eqx")
    change(meta)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("meta.json", json.dumps(meta))
        archive.writestr("leaves.eqx", leaves)
    path.write_bytes(buffer.getvalue())


def test_incompatible_format_version_is_named(tmp_path):
    path = tmp_path / "flow.nsi"
    nsi.save(path, one_sided_flow())
    _rewrite_meta(path, lambda meta: meta.update(format_version=999, numpyro_si_version="9.9"))
    with pytest.raises(ValueError, match=r"format version 999.*numpyro_si 9\.9"):
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


def test_arrays_that_do_not_match_the_configuration(tmp_path):
    path = tmp_path / "flow.nsi"
    nsi.save(path, one_sided_flow(dim=3))
    _rewrite_meta(path, lambda meta: None)  # re-zipping unchanged content still loads
    nsi.load(path)
    # the configuration of a small network with the arrays of a wider one
    small, big = tmp_path / "small.nsi", tmp_path / "big.nsi"
    nsi.save(small, one_sided_flow(dim=3))
    big_flow = nsi.SIFlow(nsi.OneSidedLinearInterpolant(),
                          nsi.FieldMLP(3, width=32, depth=2, key=jax.random.key(0)))
    nsi.save(big, big_flow)
    with zipfile.ZipFile(small) as a:
        meta_small = a.read("meta.json")
    with zipfile.ZipFile(big) as b:
        leaves_big = b.read("leaves.eqx")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("meta.json", meta_small)
        archive.writestr("leaves.eqx", leaves_big)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="do not match"):
        nsi.load(path)


def test_flows_on_plain_functions_cannot_be_saved(tmp_path):
    flow = nsi.SIFlow(nsi.OneSidedLinearInterpolant(), lambda t, x: -x, dim=2)
    with pytest.raises(ValueError, match="cannot be saved"):
        nsi.save(tmp_path / "f.nsi", flow)
    assert not any(tmp_path.iterdir())  # nothing written
    with pytest.raises(TypeError, match="SIFlow"):
        nsi.save(tmp_path / "f.nsi", "not a flow")
