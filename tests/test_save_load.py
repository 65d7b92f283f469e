"""`nsi.save` / `nsi.load`: bit-exact round trips of plain, constrained and conditional flows
(every array and option; no training and no ODE solves), files of earlier format versions, atomic
writes (through symbolic links, never over what is not a regular file, with a plain write's
permissions, no temporary files left behind), and clear errors for damaged, foreign, edited or
incompatible files (everything a constructed flow could not hold is refused, by save too)."""

import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from helpers import array_leaves
from numpyro.distributions import constraints

import numpyro_si as nsi
from numpyro_si import _io as nsi_io

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


def rewrite_archive(path, meta_change=None, leaves_change=None, meta_text=None, extra=None):
    """Rewrite the file as an editor would, with valid zip checksums: `meta_change(meta)` applied
    to its metadata (or the metadata replaced by `meta_text`), `leaves_change(bytes)` to the
    stored arrays, `extra` members added."""
    meta, leaves = read_archive(path)
    if meta_change is not None:
        meta_change(meta)
    if leaves_change is not None:
        leaves = leaves_change(leaves)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("meta.json", json.dumps(meta) if meta_text is None else meta_text)
        archive.writestr("leaves.eqx", leaves)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    path.write_bytes(buffer.getvalue())


def rewrite_meta(path, change):
    """Rewrite the file with `change(meta)` applied to its metadata (the arrays unchanged)."""
    rewrite_archive(path, meta_change=change)


def stored_paths(tree):
    """The tree paths of the leaves `eqx.tree_serialise_leaves` writes, in its order."""
    return [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
            if eqx.is_array_like(leaf)]


def stored_spans(leaves):
    """(offset, shape, dtype) of the data of each .npy record in leaves.eqx, in order."""
    stream, spans = io.BytesIO(leaves), []
    while stream.tell() < len(leaves):
        assert np.lib.format.read_magic(stream) == (1, 0)
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        spans.append((stream.tell(), shape, dtype))
        stream.seek(stream.tell() + int(np.prod(shape)) * dtype.itemsize)
    return spans


def replace_leaf(tree, path_name, values):
    """A `leaves_change` writing `values` (cast to the stored dtype) over the stored leaf of
    `tree` at `path_name` (e.g. ".standardization.shift")."""
    index = stored_paths(tree).index(path_name)

    def change(leaves):
        offset, shape, dtype = stored_spans(leaves)[index]
        data = np.broadcast_to(np.asarray(values, dtype=dtype), shape).tobytes()
        return leaves[:offset] + data + leaves[offset + len(data):]

    return change


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


def test_interrupted_write_removes_its_temporary(tmp_path):
    path = tmp_path / "flow.nsi"
    nsi.save(path, one_sided_flow(key=0))
    before = path.read_bytes()

    def interrupted(handle):
        handle.write(b"half of a fl")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        nsi_io.write_atomically(path, interrupted)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow.nsi"]


def test_save_through_a_symbolic_link_replaces_the_file_it_points_to(tmp_path, monkeypatch):
    """The link stays a link; the file at its end (through a chain of links, relative or
    absolute) is replaced atomically, its temporary file beside it, its mode kept."""
    data, links = tmp_path / "data", tmp_path / "links"
    data.mkdir()
    links.mkdir()
    target = data / "flow.nsi"
    target.write_bytes(b"old contents")
    target.chmod(0o640)
    (links / "absolute.nsi").symlink_to(target)
    (links / "relative.nsi").symlink_to(Path("..") / "data" / "flow.nsi")
    (links / "chain.nsi").symlink_to("relative.nsi")
    folders = []
    mkstemp = nsi_io.tempfile.mkstemp

    def recording_mkstemp(*args, **kwargs):
        folders.append(Path(kwargs["dir"]))
        return mkstemp(*args, **kwargs)

    monkeypatch.setattr(nsi_io.tempfile, "mkstemp", recording_mkstemp)
    for key, name in enumerate(("absolute.nsi", "relative.nsi", "chain.nsi")):
        flow = one_sided_flow(key=key)
        nsi.save(links / name, flow)
        assert (links / name).is_symlink()
        assert_same_arrays(nsi.load(target)._model, flow._model)
        assert_same_arrays(nsi.load(links / name)._model, flow._model)
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert folders == [data] * 3  # the temporary file beside the target, renamed over it
    assert os.readlink(links / "absolute.nsi") == str(target)
    assert os.readlink(links / "chain.nsi") == "relative.nsi"
    assert sorted(p.name for p in data.iterdir()) == ["flow.nsi"]
    assert sorted(p.name for p in links.iterdir()) == ["absolute.nsi", "chain.nsi", "relative.nsi"]
    # a dangling link: the file it names is created, the link kept
    (links / "new.nsi").symlink_to(data / "new.nsi")
    nsi.save(links / "new.nsi", one_sided_flow())
    assert (links / "new.nsi").is_symlink() and (data / "new.nsi").is_file()


def _non_regular_files(tmp_path):
    """(path, what the error must call it) for each kind of non-regular file we can make."""
    made = []
    (tmp_path / "folder.nsi").mkdir()
    made.append((tmp_path / "folder.nsi", "a directory"))
    os.mkfifo(tmp_path / "fifo.nsi")
    made.append((tmp_path / "fifo.nsi", "a FIFO"))
    (tmp_path / "link-to-fifo.nsi").symlink_to(tmp_path / "fifo.nsi")
    made.append((tmp_path / "link-to-fifo.nsi", "points to a FIFO"))
    try:  # a device node like /dev/null (needs root / CAP_MKNOD)
        os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        made.append((tmp_path / "null", "a character device"))
    except (PermissionError, OSError):
        pass
    return made


def test_save_refuses_what_is_not_a_regular_file(tmp_path):
    before = {}
    for path, what in _non_regular_files(tmp_path):
        before[path] = os.lstat(path).st_mode
        with pytest.raises(ValueError, match=rf"{path}.*{what}.*not a regular file"):
            nsi.save(path, one_sided_flow())
    for path, mode in before.items():  # each left as it was, and nothing else written
        assert os.lstat(path).st_mode == mode
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(not stat.S_ISCHR(os.stat(os.devnull).st_mode), reason="no /dev/null device")
def test_save_to_dev_null_is_refused_before_anything_is_written(monkeypatch):
    def must_not_write(*args, **kwargs):
        raise AssertionError("save went on to write beside /dev/null")

    # guards: if the refusal ever broke, nothing is created in /dev nor renamed over /dev/null
    monkeypatch.setattr(nsi_io.tempfile, "mkstemp", must_not_write)
    monkeypatch.setattr(nsi_io.os, "replace", must_not_write)
    with pytest.raises(ValueError, match=rf"{os.devnull}: it is a character device"):
        nsi.save(os.devnull, one_sided_flow())


def test_load_refuses_what_is_not_a_regular_file(tmp_path):
    (tmp_path / "folder.nsi").mkdir()
    with pytest.raises(ValueError, match="is a directory, not a saved flow"):
        nsi.load(tmp_path / "folder.nsi")
    if stat.S_ISCHR(os.stat(os.devnull).st_mode):
        with pytest.raises(ValueError, match="is a character device, not a saved flow"):
            nsi.load(os.devnull)


def test_saved_files_get_the_permissions_of_a_plain_write(tmp_path):
    """New files: 0666 less the umask (not mkstemp's 0600); an overwritten file keeps its mode;
    a read-only file is left alone (a plain write would fail; root may write anyway)."""
    old_umask = os.umask(0o027)
    try:
        nsi.save(tmp_path / "new.nsi", one_sided_flow())
        nsi_io.write_atomically(tmp_path / "new.txt", lambda f: f.write(b"text"))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "new.nsi").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640
    path = tmp_path / "shared.nsi"
    nsi.save(path, one_sided_flow(key=0))
    path.chmod(0o664)
    nsi.save(path, one_sided_flow(key=1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o664
    assert_same_arrays(nsi.load(path)._model, one_sided_flow(key=1)._model)
    if os.geteuid() != 0:
        path.chmod(0o444)
        with pytest.raises(PermissionError):
            nsi.save(path, one_sided_flow(key=2))
        assert_same_arrays(nsi.load(path)._model, one_sided_flow(key=1)._model)


def _finished_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_next_save_removes_temporaries_of_writers_that_are_gone(tmp_path):
    """What a killed writer leaves (`.<name>.<pid>-<tag>-<random>.tmp`) is removed by the next
    write to the same file once that process is gone; a live writer's is kept; names that
    cannot be checked (another machine, older numpyro_si) once idle for a minute; other files'
    temporaries never."""
    tag, old = nsi_io._writer_tag(), time.time() - 120
    dead, alive = _finished_pid(), os.getpid()
    other_tag = "0" * 8 if tag != "0" * 8 else "1" * 8
    files = {
        f".flow.nsi.{dead}-{tag}-abcd1234.tmp": (None, "removed"),  # killed writer
        f".flow.nsi.{alive}-{tag}-abcd1234.tmp": (None, "kept"),  # writing right now
        f".flow.nsi.{alive}-{other_tag}-abcd1234.tmp": (old, "removed"),  # idle, unknown host
        f".flow.nsi.{dead}-{other_tag}-abcd1234.tmp": (None, "kept"),  # unknown host, active
        ".flow.nsi.k3x_9abc.tmp": (old, "removed"),  # an older numpyro_si's, idle
        ".flow.nsi.k3x_9abd.tmp": (None, "kept"),  # an older numpyro_si's, active
        ".other.nsi.k3x_9abc.tmp": (old, "kept"),  # another file's
        f".other.nsi.{dead}-{tag}-abcd1234.tmp": (None, "kept"),
        ".flow.nsi.notes.tmp": (old, "kept"),  # not a temporary name
    }
    for name, (mtime, _) in files.items():
        (tmp_path / name).write_bytes(b"partial")
        if mtime is not None:
            os.utime(tmp_path / name, (mtime, mtime))
    nsi.save(tmp_path / "flow.nsi", one_sided_flow())
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"flow.nsi"} | {name for name, (_, fate) in files.items() if fate == "kept"}


KILLED_WRITER = """
import sys, time
from pathlib import Path
from numpyro_si._io import write_atomically

def write(handle):
    handle.write(b"the first half of a new fi")
    handle.flush()
    Path(sys.argv[2]).write_text("writing")
    time.sleep(600)

write_atomically(sys.argv[1], write)
"""


def test_a_save_killed_midway_leaves_the_old_file_and_the_next_cleans_up(tmp_path):
    """A writer killed with SIGKILL mid-write: the old file is intact, its temporary file is
    left (nothing can remove it then), and the next save to the same file removes it."""
    path, ready = tmp_path / "flow.nsi", tmp_path / "ready"
    nsi.save(path, one_sided_flow(key=0))
    before = path.read_bytes()
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(ready)])
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert process.poll() is None, "the writer ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    assert len(left) == 1 and left[0].startswith(f".flow.nsi.{process.pid}-")
    assert path.read_bytes() == before  # the old file, whole
    nsi.save(path, one_sided_flow(key=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow.nsi", "ready"]
    assert_same_arrays(nsi.load(path)._model, one_sided_flow(key=1)._model)


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


# ----------------------------------------------------------------------------------------------
# edited files: everything a constructed flow could not hold is refused, naming it
# ----------------------------------------------------------------------------------------------


def model_fields(meta):
    return meta["model"]["fields"]


def velocity_config(meta):
    return model_fields(meta)["fields"]["fields"]["velocity"]["config"]


def solver_settings(meta):
    return model_fields(meta)["settings"]["fields"]


EDITS = {
    # (flow, edit of meta.json, what the error must name)
    "negative rtol": ("one_sided", lambda m: solver_settings(m).update(rtol=-1.0), "rtol"),
    "atol a string": ("one_sided", lambda m: solver_settings(m).update(atol="1e-5"), "atol"),
    "zero max_steps": (
        "one_sided",
        lambda m: solver_settings(m)["likelihood"]["fields"].update(max_steps=0),
        "max_steps",
    ),
    "negative eps0": (
        "two_sided", lambda m: solver_settings(m)["sampler"]["fields"]["eps"]["fields"].update(
            eps0=-0.7), "eps0",
    ),
    "negative gamma": (
        "two_sided",
        lambda m: model_fields(m)["fields"]["fields"]["interpolant"]["fields"]["gamma"][
            "fields"].update(a=-0.5),
        "a > 0",
    ),
    "unknown activation": (
        "one_sided", lambda m: velocity_config(m).update(activation="swish"), "activation",
    ),
    "residual as 1": ("one_sided", lambda m: velocity_config(m).update(residual=1), "residual"),
    "zero width": ("one_sided", lambda m: velocity_config(m).update(width=0), "width"),
    "dim true": ("one_sided", lambda m: m.update(dim=True), "dim"),
    "dim of another flow": ("one_sided", lambda m: m.update(dim=5), "dimension 3, the flow 5"),
    "unknown base": ("one_sided", lambda m: m.update(base="uniform"), "unknown base"),
    "network in float16": (
        "one_sided", lambda m: model_fields(m)["fields"]["fields"]["velocity"].update(
            dtype="float16"), "stored as float32, described as float16",
    ),
    "a missing option": ("one_sided", lambda m: velocity_config(m).pop("residual"), "missing"),
    "an unknown entry": ("one_sided", lambda m: m.update(comment="hi"), "unknown entries"),
    "a key as divergence": (
        "one_sided",
        lambda m: solver_settings(m).update(divergence={
            "__class__": "numpyro_si.HutchinsonDivergence",
            "fields": {"key": {"__array__": [], "dtype": "float32"}}}),
        "unknown class",
    ),
}


def flow_of(kind):
    return one_sided_flow() if kind == "one_sided" else two_sided_flow()


@pytest.mark.parametrize("name", list(EDITS))
def test_edited_options_are_validated_as_constructed_ones(tmp_path, name):
    kind, edit, message = EDITS[name]
    path = tmp_path / "flow.nsi"
    nsi.save(path, flow_of(kind))
    rewrite_meta(path, edit)
    with pytest.raises(ValueError, match=message):
        nsi.load(path)


def conditional_flow():
    return nsi.ConditionalSIFlow(
        nsi.OneSidedLinearInterpolant(), network(2, context_dim=3), context_dim=3,
        standardization=standardization(2, 1), context_standardization=standardization(3, 2),
    )


NON_FINITE = {
    # (flow, the tree its leaves are, stored leaf, value, what the error names)
    "NaN bytes in a weight": ("one_sided", ".fields.velocity.input_layer.weight", "0xFF",
                              r"flow\.fields\.velocity\.input_layer\.weight contains NaN or inf"),
    "inf in a bias": ("one_sided", ".fields.velocity.output_layer.bias", np.inf,
                      r"flow\.fields\.velocity\.output_layer\.bias contains NaN or inf"),
    "NaN shift": ("one_sided", ".standardization.shift", np.nan,
                  r"flow\.standardization .*shift must be finite"),
    "zero scale": ("one_sided", ".standardization.scale", 0.0,
                   r"flow\.standardization .*scale must be finite and positive"),
    "negative scale": ("one_sided", ".standardization.scale", -1.0,
                       r"flow\.standardization .*scale must be finite and positive"),
    "inf context scale": ("conditional", "[1].scale", np.inf,
                          r"flow\.context_standardization .*scale must be finite and positive"),
    "NaN bound context": ("conditioned", ".fields.velocity.context", np.nan,
                          r"flow\.fields\.velocity\.context contains NaN or inf"),
}


@pytest.mark.parametrize("name", list(NON_FINITE))
def test_non_finite_stored_arrays_are_refused(tmp_path, name):
    """Arrays overwritten in place (0xFF bytes are NaN; the zip checksums are valid): refused,
    naming the field."""
    kind, leaf, value, message = NON_FINITE[name]
    if kind == "conditional":
        flow = conditional_flow()
        tree = (flow._model, flow.context_standardization)
    elif kind == "conditioned":
        flow = conditional_flow().condition(jnp.array([0.5, -1.0, 2.0]))
        tree = flow._model
    else:
        flow = one_sided_flow()
        tree = flow._model
    path = tmp_path / "flow.nsi"
    nsi.save(path, flow)
    if value == "0xFF":
        index = stored_paths(tree).index(leaf)

        def change(leaves):
            offset, shape, dtype = stored_spans(leaves)[index]
            size = int(np.prod(shape)) * dtype.itemsize
            return leaves[:offset] + b"\xff" * size + leaves[offset + size:]
    else:
        change = replace_leaf(tree, leaf, value)
    rewrite_archive(path, leaves_change=change)
    with pytest.raises(ValueError, match=message):
        nsi.load(path)


def test_numbers_stored_twice_must_agree(tmp_path):
    """Python numbers of the configuration (a gamma's a, an eps0) are stored among the leaves
    too; an edit of either copy is refused (it used to bypass the constructor's check)."""
    flow = two_sided_flow()
    path = tmp_path / "flow.nsi"
    for leaf, value, message in (
        (".fields.interpolant.gamma.a", -5.0, r"gamma\.a is 0\.5 in the configuration but -5\.0"),
        (".settings.sampler.eps.eps0", 0.25, r"eps0 is 0\.7 in the configuration but 0\.25"),
    ):
        nsi.save(path, flow)
        rewrite_archive(path, leaves_change=replace_leaf(flow._model, leaf, value))
        with pytest.raises(ValueError, match=message):
            nsi.load(path)


def constrained(support, dim=2):
    return nsi.ConstrainedSIFlow(nsi.SIFlow(nsi.OneSidedLinearInterpolant(), network(dim)), support)


def with_support(support, dim=2):
    """A constrained flow on `support` although its constructor would refuse it (put in place
    directly, as an edited object would be)."""
    flow = constrained(constraints.interval(0.0, 1.0), dim)
    flow.constraint = support
    return flow


def number(value, dtype="float64"):
    return {"value": value, "dtype": dtype}


SUPPORT_EDITS = {
    # (saved support, the support entry written instead, what the error names)
    "positive given a bound": (
        constraints.positive, {"class": "_Positive", "params": {"lower_bound": number(5.0)},
                               "aux": {}}, "_Positive has no parameters of its own",
    ),
    "interval upside down": (
        constraints.interval(0.0, 1.0),
        {"class": "_Interval", "params": {"lower_bound": number(2.0), "upper_bound": number(1.0)},
         "aux": {}}, "lower_bound < upper_bound",
    ),
    "interval arrays upside down": (
        constraints.interval(jnp.array([0.0, -1.0]), jnp.array([1.0, 4.0])),
        {"class": "_Interval",
         "params": {"lower_bound": number([0.0, 5.0], "float32") | {"kind": "jax"},
                    "upper_bound": number([1.0, 4.0], "float32") | {"kind": "jax"}},
         "aux": {}}, "lower_bound < upper_bound",
    ),
    "interval of strings": (
        constraints.interval(0.0, 1.0),
        {"class": "_Interval", "params": {"lower_bound": number("a", "object"),
                                          "upper_bound": number(1.0)}, "aux": {}},
        "unsupported dtype 'object'",
    ),
    "interval of booleans": (
        constraints.interval(0.0, 1.0),
        {"class": "_Interval", "params": {"lower_bound": number(False, "bool"),
                                          "upper_bound": number(1.0)}, "aux": {}},
        "unsupported dtype 'bool'",
    ),
    "greater_than with an upper bound": (
        constraints.greater_than(-2.5),
        {"class": "_GreaterThan", "params": {"lower_bound": number(-2.5),
                                             "upper_bound": number(1.0)}, "aux": {}},
        r"takes the parameters \['lower_bound'\]",
    ),
    "independent of -1 dimensions": (
        constraints.independent(constraints.positive, 1),
        {"class": "_IndependentConstraint",
         "params": {"base_constraint": {"constraint": {"class": "_Positive", "params": {},
                                                       "aux": {}}}},
         "aux": {"reinterpreted_batch_ndims": -1}}, "reinterpreted_batch_ndims",
    ),
    "an option a class does not take": (
        constraints.simplex, {"class": "_Simplex", "params": {}, "aux": {"event_dim": 0}},
        "_Simplex has no parameters of its own",
    ),
}


@pytest.mark.parametrize("name", list(SUPPORT_EDITS))
def test_edited_supports_are_refused_and_numpyro_is_untouched(tmp_path, name):
    """A support is rebuilt by its constructor: never by setting attributes, which on a
    relabelled singleton changed NumPyro's shared `constraints.positive` for the whole process."""
    support, entry, message = SUPPORT_EDITS[name]
    path = tmp_path / "flow.nsi"
    nsi.save(path, constrained(support))
    rewrite_meta(path, lambda meta: meta.update(support=entry))
    with pytest.raises(ValueError, match=message):
        nsi.load(path)
    assert constraints.positive.lower_bound == 0.0 and not hasattr(constraints.positive,
                                                                   "upper_bound")
    assert "event_dim" not in vars(constraints.simplex)
    assert bool(dist.LogNormal(0.0, 1.0).support(1.0))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_in_the_metadata_are_refused(tmp_path, constant):
    path = tmp_path / "flow.nsi"
    nsi.save(path, constrained(constraints.interval(0.0, 1.0)))
    text = json.dumps(read_archive(path)[0]).replace(
        '"upper_bound": {"value": 1.0', f'"upper_bound": {{"value": {constant}'
    )
    assert constant in text
    rewrite_archive(path, meta_text=text)
    with pytest.raises(ValueError, match="non-finite number"):
        nsi.load(path)


def test_support_parameters_keep_their_kind(tmp_path):
    """Python numbers come back as Python numbers, NumPy arrays as NumPy arrays, JAX arrays as
    JAX arrays (NumPy and JAX compute in different precisions)."""
    support = constraints.interval(np.array([0.0, -1.0]), jnp.array([1.0, 4.0]))
    loaded = round_trip(tmp_path, constrained(support)).constraint
    assert type(loaded.lower_bound) is np.ndarray and loaded.lower_bound.dtype == np.float64
    assert isinstance(loaded.upper_bound, jax.Array)
    np.testing.assert_array_equal(loaded.lower_bound, support.lower_bound)
    np.testing.assert_array_equal(loaded.upper_bound, support.upper_bound)
    loaded = round_trip(tmp_path, constrained(constraints.greater_than(-2))).constraint
    assert type(loaded.lower_bound) is int and loaded.lower_bound == -2
    loaded = round_trip(tmp_path, constrained(constraints.less_than(np.float32(0.1)))).constraint
    assert type(loaded.upper_bound) is np.float32 and loaded.upper_bound == np.float32(0.1)


def test_metadata_asking_for_huge_arrays_is_refused_before_allocating(tmp_path):
    """Shapes in the metadata are checked against the bytes actually stored before anything is
    allocated (a 10^6 x 10^6 standardisation used to ask XLA for 4 TB); a network too wide or
    too deep for the stored bytes is refused before it is built."""
    path = tmp_path / "flow.nsi"
    edits = {
        "shift": lambda m: model_fields(m)["standardization"]["fields"]["shift"].update(
            __array__=[1_000_000, 1_000_000]),
        "width": lambda m: velocity_config(m).update(width=1_000_000, depth=3),
        "depth": lambda m: velocity_config(m).update(depth=10**9),
        "negative shape": lambda m: model_fields(m)["standardization"]["fields"]["shift"].update(
            __array__=[-3]),
    }
    for name, edit in edits.items():
        nsi.save(path, one_sided_flow())
        rewrite_meta(path, edit)
        start = time.monotonic()
        with pytest.raises(ValueError, match="do not match|invalid shape"):
            nsi.load(path)
        assert time.monotonic() - start < 60, name


def test_leaves_must_match_the_configuration_exactly(tmp_path):
    flow = one_sided_flow()
    path = tmp_path / "flow.nsi"
    nsi.save(path, flow)
    rewrite_archive(path, leaves_change=lambda leaves: leaves + b"\x00" * 100)
    with pytest.raises(ValueError, match="100 bytes of leaves.eqx are left over"):
        nsi.load(path)
    nsi.save(path, flow)
    rewrite_archive(path, leaves_change=lambda leaves: leaves[:-40])
    with pytest.raises(ValueError, match="do not match"):
        nsi.load(path)


def test_float64_files_need_64_bit_jax(tmp_path):
    """A float64 flow loaded without 64-bit JAX used to come back rounded to float32 (another
    flow); now it is refused, saying what to do, and loads bit for bit with it."""
    path = tmp_path / "flow.nsi"
    with jax.enable_x64(True):
        flow = one_sided_flow(dim=2)
        nsi.save(path, flow)
    with pytest.raises(ValueError, match="jax_enable_x64"):
        nsi.load(path)
    with jax.enable_x64(True):
        assert_same_arrays(nsi.load(path)._model, flow._model)
    # float64 (JAX) support parameters likewise (of a float32 flow)
    inner = nsi.SIFlow(nsi.OneSidedLinearInterpolant(), network())
    with jax.enable_x64(True):
        nsi.save(path, nsi.ConstrainedSIFlow(
            inner, constraints.interval(jnp.array([0.1, 0.2]), 1.0)))
    with pytest.raises(ValueError, match=r"support\.lower_bound is stored as float64"):
        nsi.load(path)


def test_malformed_archives_are_refused(tmp_path):
    path = tmp_path / "flow.nsi"
    nsi.save(path, one_sided_flow())
    text = json.dumps(read_archive(path)[0])
    rewrite_archive(path, meta_text=text[:-1] + ', "dim": 3}')
    with pytest.raises(ValueError, match=r"repeats the entries \['dim'\]"):
        nsi.load(path)
    nsi.save(path, one_sided_flow())
    rewrite_archive(path, extra={"notes.txt": b"hello"})
    with pytest.raises(ValueError, match="expected exactly"):
        nsi.load(path)
    # bzip2 inflates far beyond deflate's bound, which limits what a file can ask to allocate
    meta, leaves = read_archive(path)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as archive:
        archive.writestr("meta.json", json.dumps(meta))
        archive.writestr("leaves.eqx", leaves)
    with pytest.raises(ValueError, match="compression method 12"):
        nsi.load(path)


def test_networks_must_take_the_context_the_flow_gives(tmp_path):
    path = tmp_path / "flow.nsi"
    nsi.save(path, conditional_flow())
    rewrite_meta(path, lambda m: m["conditional"].update(context_dim=2,
                                                        context_standardization=None))
    with pytest.raises(ValueError, match="context of dimension 3, but the flow gives it 2"):
        nsi.load(path)
    conditioned = conditional_flow().condition(jnp.array([0.5, -1.0, 2.0]))
    nsi.save(path, conditioned)
    rewrite_meta(path, lambda m: model_fields(m)["fields"]["fields"]["velocity"]["fields"][
        "context"].update(__array__=[1]))
    with pytest.raises(ValueError, match=r"context has shape \(1,\)"):
        nsi.load(path)


def test_the_base_given_to_load_must_be_the_saved_one(tmp_path):
    base = dist.Normal(jnp.array([1.0, -1.0]), jnp.array([0.5, 2.0])).to_event(1)
    flow = nsi.SIFlow(nsi.LinearInterpolant(), network(), base=base)
    path = tmp_path / "flow.nsi"
    nsi.save(path, flow)
    again = dist.Normal(jnp.array([1.0, -1.0]), jnp.array([0.5, 2.0])).to_event(1)
    assert_same_arrays(nsi.load(path, base=again).velocity, flow.velocity)  # equal, not identical
    other = dist.Normal(jnp.array([0.0, -1.0]), jnp.array([0.5, 2.0])).to_event(1)
    with pytest.raises(ValueError, match="saved with another base distribution"):
        nsi.load(path, base=other)
    # a flow saved with the standard normal: only the standard normal may be given
    nsi.save(path, nsi.SIFlow(nsi.LinearInterpolant(), network()))
    with pytest.raises(ValueError, match="saved with the standard normal base"):
        nsi.load(path, base=other)
    standard = dist.Normal(jnp.zeros(2), jnp.ones(2)).to_event(1)
    assert nsi.load(path, base=standard).base is not standard  # the default, equivalent


def test_validate_args_survive(tmp_path):
    flow = nsi.SIFlow(nsi.OneSidedLinearInterpolant(), network(), validate_args=True)
    assert round_trip(tmp_path, flow)._validate_args is True
    loaded = round_trip(tmp_path, nsi.ConstrainedSIFlow(flow, constraints.positive,
                                                        validate_args=True))
    assert loaded._validate_args is True and loaded.flow._validate_args is True
    nsi.save(tmp_path / "plain.nsi", nsi.SIFlow(nsi.OneSidedLinearInterpolant(), network()))
    assert "validate_args" not in read_archive(tmp_path / "plain.nsi")[0]  # nothing to keep


def test_save_refuses_what_load_would_refuse(tmp_path):
    """A file must load again: save refuses (naming the field, writing nothing) the values
    load refuses."""
    nan_network = eqx.tree_at(lambda n: n.input_layer.weight, network(),
                              replace_fn=lambda w: w.at[0, 0].set(jnp.nan))
    nan_weights = nsi.SIFlow(nsi.OneSidedLinearInterpolant(), nan_network)
    # values their constructors would refuse, put in place directly
    zero_scale = eqx.tree_at(
        lambda f: f._model.standardization.scale,
        nsi.SIFlow(nsi.OneSidedLinearInterpolant(), network(),
                   standardization=nsi.Standardization(jnp.zeros(2), jnp.ones(2))),
        jnp.zeros(2),
    )
    sde = two_sided_flow()  # an option its constructor would refuse, put in place directly
    infinite_eps = sde.with_settings(
        eqx.tree_at(lambda s: s.sampler.eps.eps0, sde.settings, float("inf")))
    cases = [
        (nan_weights, r"flow\.fields\.velocity\.input_layer\.weight contains NaN or inf"),
        (zero_scale, r"flow\.standardization\.scale must be positive"),
        (infinite_eps, r"flow\.settings\.sampler\.eps\.eps0 = inf is not a finite number"),
        (with_support(constraints.interval(1.0, 0.0)), "lower_bound < upper_bound"),
        (with_support(constraints.greater_than(float("nan"))),
         r"support\.lower_bound must be finite"),
        (nsi.SIFlow(nsi.OneSidedLinearInterpolant(), nsi.BrownianGamma(1.0), dim=2),
         r"flow\.fields\.velocity is a BrownianGamma, not a FieldMLP"),
        (nsi.SIFlow(nsi.OneSidedLinearInterpolant(), network(2, context_dim=1)),
         "takes a context of dimension 1, but the flow gives it 0"),
    ]
    for flow, message in cases:
        with pytest.raises(ValueError, match="cannot be saved: .*" + message):
            nsi.save(tmp_path / "f.nsi", flow)
    assert not any(tmp_path.iterdir())


def unet_flow():
    net = nsi.FieldUNet((1, 8, 8), widths=(4, 8), patch=2, key=jax.random.key(1))
    return nsi.SIFlow(nsi.OneSidedLinearInterpolant(), net, dim=64)


def _network_entry(meta):
    """The stored description of the velocity network (found wherever the format keeps it)."""
    stack = [meta]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("__network__") == "FieldUNet":
                return node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    raise AssertionError("no FieldUNet in the metadata")


def test_unet_flow_round_trip_is_bit_exact(tmp_path):
    flow = unet_flow()
    loaded = round_trip(tmp_path, flow)
    assert isinstance(loaded.velocity, nsi.FieldUNet) and loaded.velocity.widths == (4, 8)
    for a, b in zip(array_leaves(flow), array_leaves(loaded), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    x = jax.random.normal(jax.random.key(2), (64,))
    np.testing.assert_array_equal(flow.velocity(0.3, x), loaded.velocity(0.3, x))


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(shape=[1, 6, 6]), r"divisible by 4"),
    (lambda c: c.update(shape=[1, 4, 4]), r"FieldUNet on images of 16 values, not 64"),
    (lambda c: c.update(patch=0), r"patch must be a positive int"),
    (lambda c: c.update(widths=[4, 8, 8]), r"stored arrays do not match"),
    (lambda c: c.update(widths=[4, 16]), r"stored arrays|shape"),
    (lambda c: c.update(activation="swish"), r"activation"),
    (lambda c: c.update(shape=[1, 4]), r"channels, height, width"),
    (lambda c: c.update(widths=[4, -8]), r"positive ints"),
    (lambda c: c.pop("widths"), r"widths"),
])
def test_edited_unet_configs_are_refused(tmp_path, edit, message):
    path = tmp_path / "flow.nsi"
    nsi.save(path, unet_flow())
    rewrite_meta(path, lambda meta: edit(_network_entry(meta)["config"]))
    with pytest.raises(ValueError, match=message):
        nsi.load(path)
