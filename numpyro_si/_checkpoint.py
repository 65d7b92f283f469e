"""Training checkpoints: `train(..., checkpoint=path)` writes the whole state of a run (networks,
optimiser, moving average, key, early-stopping state, history) atomically after validation
rounds, and a later `train` with the same arguments resumes from it and ends bit for bit where
the uninterrupted run ends."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ._checks import check_real
from ._io import write_atomically

__all__ = ["Checkpoint"]

_FORMAT = "numpyro_si.checkpoint"
_VERSION = 1


class Checkpoint(eqx.Module):
    """Where and how often `train` saves its run.

    - `path`: the checkpoint file (written atomically; a run that finds its own checkpoint there
      resumes from it).
    - `every_seconds`: at least this many seconds between two writes after validation rounds
      (default 60); the run also writes when it ends and when it is interrupted (Ctrl-C).
    """

    path: str = eqx.field(static=True)
    every_seconds: float = eqx.field(default=60.0, static=True)

    def __init__(self, path: str | os.PathLike, every_seconds: float = 60.0):
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"Checkpoint path must be a str or os.PathLike, got {path!r}.")
        self.path = os.fspath(path)
        self.every_seconds = check_real("every_seconds", every_seconds, low=0.0)


def as_checkpoint(value) -> Checkpoint | None:
    """`train`'s `checkpoint` option: None, a path, or a `Checkpoint`."""
    if value is None or isinstance(value, Checkpoint):
        return value
    if isinstance(value, str | os.PathLike):
        return Checkpoint(value)
    raise TypeError(
        f"checkpoint must be a path or an nsi.Checkpoint(path, every_seconds), got {value!r}."
    )


def fingerprint(*parts: Any) -> str:
    """A digest of a run's inputs (arrays by value, everything else by its repr): a checkpoint
    is only resumed by the run that wrote it."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(parts):
        if eqx.is_array(leaf):
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            array = np.asarray(leaf)
            digest.update(f"{array.shape}{array.dtype}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        else:
            digest.update(repr(leaf).encode())
    return digest.hexdigest()


def _arrays(state) -> tuple:
    """The array part of a loop state, with the key as its raw data (serialisable)."""
    return (state.params, state.carry, state.best_params, jax.random.key_data(state.key))


def write_checkpoint(checkpoint: Checkpoint, digest: str, state) -> None:
    """Write the loop state (a `_LoopState` of `train`) atomically."""
    meta = {
        "format": _FORMAT, "version": _VERSION, "fingerprint": digest,
        "rounds_done": state.rounds_done, "best_epoch": state.best_epoch,
        "stopped_early": state.stopped_early, "train_losses": list(state.train_losses),
        "epochs": list(state.epochs), "stopping": list(state.stopping),
    }
    leaves = io.BytesIO()
    eqx.tree_serialise_leaves(leaves, _arrays(state))

    def write(handle):
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("meta.json", json.dumps(meta))
            archive.writestr("leaves.eqx", leaves.getvalue())

    write_atomically(checkpoint.path, write)


def read_checkpoint(checkpoint: Checkpoint, digest: str, skeleton, stopping_type):
    """The loop state saved at `checkpoint.path` by this run (`digest`), or None if there is no
    file; `skeleton` is the run's initial loop state (its structure and dtypes)."""
    path = Path(checkpoint.path)
    if not path.exists():
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            meta = json.loads(archive.read("meta.json"))
            leaves = archive.read("leaves.eqx")
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        raise ValueError(f"{path} is not a readable training checkpoint: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a numpyro_si training checkpoint.")
    if meta.get("version") != _VERSION or meta.get("fingerprint") != digest:
        raise ValueError(
            f"the checkpoint {path} was written by another training run (other key, data, flow"
            " or options, or another numpyro_si version); remove it or pass another path."
        )
    params, carry, best_params, key_data = eqx.tree_deserialise_leaves(
        io.BytesIO(leaves), _arrays(skeleton)
    )
    key = jax.random.wrap_key_data(key_data, impl=jax.random.key_impl(skeleton.key))
    return skeleton._replace(
        rounds_done=meta["rounds_done"], key=key, params=params, carry=carry,
        best_params=best_params, best_epoch=meta["best_epoch"],
        stopped_early=meta["stopped_early"], train_losses=tuple(meta["train_losses"]),
        epochs=tuple(meta["epochs"]),
        stopping=stopping_type(*(tuple(v) if isinstance(v, list) else v
                                 for v in meta["stopping"])),
    )
