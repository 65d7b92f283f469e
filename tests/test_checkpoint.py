"""Interrupted training loses nothing: Ctrl-C returns the best flow so far, and a run saved to a
checkpoint (interrupted by SIGINT, or killed by SIGKILL) resumes and ends bit for bit where the
uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import array_leaves

import numpyro_si as nsi
import numpyro_si._training as training

DATA = jax.random.normal(jax.random.key(0), (1000, 2))
OPTIONS = dict(num_steps=900, batch_size=100, network=nsi.FieldMLPSpec(width=16, depth=2),
               show_progress=False)

# A training run as its own process: writes its networks and history to OUT when it ends.
SCRIPT = """
import os, sys
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
import jax, numpy as np
import numpyro_si as nsi
from helpers import array_leaves
data = jax.random.normal(jax.random.key(0), (1000, 2))
flow, history = nsi.fit(jax.random.key(1), data, num_steps=int(sys.argv[3]), batch_size=100,
                        network=nsi.FieldMLPSpec(width=16, depth=2), show_progress=False,
                        checkpoint=nsi.Checkpoint(sys.argv[1], every_seconds=0))
np.savez(sys.argv[2], *array_leaves(flow.velocity), val_loss=history.val_loss,
         interrupted=history.interrupted, num_steps=history.num_steps)
"""


def assert_same_flow(flow_a, flow_b):
    for a, b in zip(array_leaves(flow_a.velocity), array_leaves(flow_b.velocity), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def uninterrupted():
    return nsi.fit(jax.random.key(1), DATA, **OPTIONS)


def interrupt_at_round(monkeypatch, n):
    """Make the n-th round raise KeyboardInterrupt, as Ctrl-C during training would."""
    one_round, calls = training._one_round, []

    def interrupted(run, state, description):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return one_round(run, state, description)

    monkeypatch.setattr(training, "_one_round", interrupted)


def test_ctrl_c_returns_the_best_flow_so_far(monkeypatch, uninterrupted):
    interrupt_at_round(monkeypatch, 3)
    with pytest.warns(RuntimeWarning, match=r"interrupted after 2 round\(s\)"):
        flow, history = nsi.fit(jax.random.key(1), DATA, **OPTIONS)
    assert history.interrupted and not uninterrupted[1].interrupted
    plan = nsi.plan_steps(900, batch_size=100, num_steps=900)  # 900 training points
    assert len(history.train_loss) == 2
    assert history.num_steps == 2 * plan.epochs_per_round * plan.steps_per_epoch
    # the two rounds it ran are the uninterrupted run's first two
    np.testing.assert_array_equal(history.val_loss, uninterrupted[1].val_loss[:2])
    initial = nsi.build_flow(jax.random.key(0), DATA, network=OPTIONS["network"])
    assert not np.array_equal(array_leaves(flow.velocity)[0], array_leaves(initial.velocity)[0])


def test_a_run_resumed_from_its_checkpoint_ends_where_the_uninterrupted_run_ends(
    monkeypatch, tmp_path, uninterrupted
):
    path = tmp_path / "run.ckpt"
    interrupt_at_round(monkeypatch, 4)
    with pytest.warns(RuntimeWarning, match=str(path)):
        nsi.fit(jax.random.key(1), DATA, checkpoint=nsi.Checkpoint(path, every_seconds=0),
                **OPTIONS)
    monkeypatch.undo()
    with zipfile.ZipFile(path) as archive:
        assert json.loads(archive.read("meta.json"))["rounds_done"] == 3
    flow, history = nsi.fit(jax.random.key(1), DATA, checkpoint=path, **OPTIONS)
    reference, reference_history = uninterrupted
    assert_same_flow(flow, reference)
    for field in ("train_loss", "val_loss", "val_loss_smoothed", "epoch", "num_steps",
                  "best_epoch"):
        np.testing.assert_array_equal(getattr(history, field), getattr(reference_history, field))
    # the finished run's checkpoint gives the same flow again at once
    again, _ = nsi.fit(jax.random.key(1), DATA, checkpoint=path, **OPTIONS)
    assert_same_flow(again, reference)


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    path = tmp_path / "run.ckpt"
    nsi.fit(jax.random.key(1), DATA, checkpoint=path, **(OPTIONS | dict(num_steps=90)))
    for other in (dict(key=jax.random.key(2)), dict(data=DATA + 1.0),
                  dict(options=OPTIONS | dict(num_steps=180))):
        with pytest.raises(ValueError, match="written by another training run"):
            nsi.fit(other.get("key", jax.random.key(1)), other.get("data", DATA),
                    checkpoint=path, **other.get("options", OPTIONS | dict(num_steps=90)))
    (tmp_path / "junk").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable training checkpoint"):
        nsi.fit(jax.random.key(1), DATA, checkpoint=tmp_path / "junk", **OPTIONS)
    with pytest.raises(TypeError, match="checkpoint must be a path"):
        nsi.fit(jax.random.key(1), DATA, checkpoint=3, **OPTIONS)
    with pytest.raises(ValueError, match="every_seconds"):
        nsi.Checkpoint(path, every_seconds=-1.0)


def _rounds_saved(path: Path) -> int:
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("meta.json"))["rounds_done"]
    except (OSError, zipfile.BadZipFile, KeyError):
        return 0


def _run_process(folder: Path, name: str, wait: bool = True):
    """The training script as its own process, writing `{name}.ckpt` and `{name}.npz`."""
    script = folder / "run.py"
    if not script.exists():
        script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    command = [sys.executable, str(script), str(folder / f"{name}.ckpt"),
               str(folder / f"{name}.npz"), "6000"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    return process.wait() if wait else process


@pytest.fixture(scope="module")
def uninterrupted_process(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    assert _run_process(folder, "reference") == 0
    return np.load(folder / "reference.npz")


@pytest.mark.parametrize("signal_number", [
    # SIGINT (Ctrl-C, a clean stop) runs in the slow suite; SIGKILL, the harsher case, in both
    pytest.param(signal.SIGINT, id="SIGINT", marks=pytest.mark.slow),
    pytest.param(signal.SIGKILL, id="SIGKILL"),
])
def test_a_killed_process_resumes_bit_for_bit(tmp_path, signal_number, uninterrupted_process):
    """The run is a separate process, stopped by a signal once its checkpoint holds two rounds;
    a second process resumes it; it ends as one uninterrupted process does."""
    process = _run_process(tmp_path, "stopped", wait=False)
    deadline = time.monotonic() + 300
    while _rounds_saved(tmp_path / "stopped.ckpt") < 2:
        assert process.poll() is None, "the run ended before it could be stopped"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal_number)
    process.wait()
    stopped_early = (tmp_path / "stopped.npz").exists()
    assert stopped_early == (signal_number == signal.SIGINT)  # SIGINT: it returned its flow
    assert 2 <= _rounds_saved(tmp_path / "stopped.ckpt") < 60  # stopped before the end
    assert _run_process(tmp_path, "stopped") == 0  # resumes from the checkpoint
    resumed = np.load(tmp_path / "stopped.npz")
    assert not resumed["interrupted"]
    for name in uninterrupted_process.files:  # networks, validation losses, steps taken
        np.testing.assert_array_equal(resumed[name], uninterrupted_process[name], err_msg=name)
