"""Saving and loading `SIFlow`s: Equinox leaf serialisation plus JSON metadata, in one zip file.

The file holds `meta.json` (format and package versions, the flow's configuration: interpolant,
networks, sampler, solver options, standardisation shape) and `leaves.eqx` (every array, written
by `eqx.tree_serialise_leaves`). It is written to a temporary file in the same folder, flushed to
disk, then renamed over the target, so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from . import _dynamics, _interpolants, _objectives, _solvers
from ._distribution import SIFlow, Standardization, _FlowModel
from ._networks import FieldMLP
from ._version import __version__

__all__ = ["save", "load", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_MAGIC = "numpyro_si.SIFlow"

# Classes a saved configuration may name; nothing else is ever instantiated on load.
_ALLOWED = {}
for _module in (_interpolants, _dynamics, _solvers, _objectives):
    for _name in dir(_module):
        _obj = getattr(_module, _name)
        if isinstance(_obj, type) and issubclass(_obj, eqx.Module) and not _name.startswith("_"):
            _ALLOWED[f"numpyro_si.{_name}"] = _obj
for _name in dir(diffrax):
    _obj = getattr(diffrax, _name)
    if isinstance(_obj, type) and issubclass(_obj, diffrax.AbstractSolver):
        _ALLOWED[f"diffrax.{_name}"] = _obj
_ALLOWED["numpyro_si.Standardization"] = Standardization
_ALLOWED["numpyro_si._FlowModel"] = _FlowModel
_NOT_SAVEABLE = (_dynamics.FunctionField, _interpolants.CustomInterpolant, _interpolants.CustomGamma,
                 _dynamics.CustomEps, _solvers.HutchinsonDivergence)


class _UnsaveableError(ValueError):
    pass


def _class_name(obj) -> str:
    cls = type(obj)
    prefix = "diffrax" if cls.__module__.startswith("diffrax") else "numpyro_si"
    name = f"{prefix}.{cls.__name__}"
    if _ALLOWED.get(name) is not cls:
        raise _UnsaveableError(f"{cls.__module__}.{cls.__name__}")
    return name


def _encode(obj, where: str):
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, tuple | list):
        return [_encode(item, f"{where}[{i}]") for i, item in enumerate(obj)]
    if eqx.is_array(obj):
        array = np.asarray(obj)
        return {"__array__": list(array.shape), "dtype": str(array.dtype)}
    if isinstance(obj, FieldMLP):
        return {"__network__": "FieldMLP", "config": obj.config(),
                "dtype": str(obj.input_layer.weight.dtype)}
    if isinstance(obj, _NOT_SAVEABLE):
        raise _UnsaveableError(f"{where} = {type(obj).__name__} (it holds a Python function or key)")
    if isinstance(obj, eqx.Module):
        try:
            name = _class_name(obj)
        except _UnsaveableError as error:
            raise _UnsaveableError(f"{where} = {error}") from None
        fields = {
            f.name: _encode(getattr(obj, f.name), f"{where}.{f.name}")
            for f in dataclasses.fields(obj) if f.init
        }
        return {"__class__": name, "fields": fields}
    raise _UnsaveableError(f"{where} = {obj!r}")


def _decode(obj):
    if isinstance(obj, list):
        return tuple(_decode(item) for item in obj)
    if not isinstance(obj, dict):
        return obj
    if "__array__" in obj:
        return jnp.zeros(tuple(obj["__array__"]), dtype=obj["dtype"])
    if "__network__" in obj:
        if obj["__network__"] != "FieldMLP":
            raise ValueError(f"Unknown network type {obj['__network__']!r} in a saved flow.")
        return FieldMLP(**obj["config"], key=jax.random.key(0), dtype=obj["dtype"])
    if "__class__" in obj:
        cls = _ALLOWED.get(obj["__class__"])
        if cls is None:
            raise ValueError(f"A saved flow names an unknown class {obj['__class__']!r}.")
        return cls(**{name: _decode(value) for name, value in obj["fields"].items()})
    raise ValueError(f"Malformed entry in a saved flow: {obj!r}.")


def _is_standard_normal(base: dist.Distribution) -> bool:
    if not (isinstance(base, dist.Independent) and isinstance(base.base_dist, dist.Normal)):
        return False
    normal = base.base_dist
    return bool(jnp.all(normal.loc == 0) and jnp.all(normal.scale == 1))


def save(path: str | os.PathLike, flow: SIFlow) -> None:
    """Write `flow` to `path` atomically (temporary file, fsync, rename).

    Saveable: flows whose fields are `FieldMLP` networks or numpyro_si modules (as `fit` makes),
    with named interpolants and eps schedules. A flow built on plain Python functions cannot be
    saved (the functions are code, not data): `ValueError` names the field. A base other than the
    standard normal is not stored; `load(path, base=flow.base)` supplies it again.
    """
    if not isinstance(flow, SIFlow):
        raise TypeError(f"save expects an SIFlow, got {type(flow).__name__}.")
    try:
        config = _encode(flow._model, "flow")
    except _UnsaveableError as error:
        raise ValueError(
            f"This SIFlow cannot be saved: {error}. Only numpyro_si networks and named"
            " interpolants/schedules can be written; rebuild flows on plain functions in code."
        ) from None
    meta = {
        "format": _MAGIC,
        "format_version": FORMAT_VERSION,
        "numpyro_si_version": __version__,
        "dim": flow.dim,
        "base": "standard_normal" if _is_standard_normal(flow.base) else "custom",
        "model": config,
    }
    leaves = io.BytesIO()
    eqx.tree_serialise_leaves(leaves, flow._model)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.writestr("meta.json", json.dumps(meta, indent=1))
                archive.writestr("leaves.eqx", leaves.getvalue())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def load(path: str | os.PathLike, *, base: dist.Distribution | None = None) -> SIFlow:
    """Read a flow written by `save`. Every array is restored bit for bit.

    `base` must be given (as `flow.base` was) when the flow was saved with a non-default base.
    Raises `ValueError` for a truncated or corrupted file, a file that is not a saved flow, or
    one written by an incompatible format version.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No saved flow at {path}.")
    try:
        with zipfile.ZipFile(path, "r") as archive:
            bad = archive.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"checksum mismatch in {bad}")
            meta = json.loads(archive.read("meta.json"))
            leaves = archive.read("leaves.eqx")
    # A damaged deflate stream raises zlib.error, a damaged header flag NotImplementedError or
    # RuntimeError ("encrypted"), bad UTF-8 in meta.json UnicodeDecodeError (a ValueError).
    except (zipfile.BadZipFile, zlib.error, KeyError, EOFError, ValueError, OSError,
            NotImplementedError, RuntimeError) as error:
        raise ValueError(
            f"{path} is not a readable numpyro_si flow (truncated or corrupted?): {error}"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != _MAGIC:
        raise ValueError(f"{path} is not a numpyro_si flow file.")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} was written in flow-file format version {meta.get('format_version')} (by"
            f" numpyro_si {meta.get('numpyro_si_version')}); this numpyro_si {__version__} reads"
            f" version {FORMAT_VERSION}."
        )
    skeleton = _decode(meta["model"])
    if not isinstance(skeleton, _FlowModel):
        raise ValueError(f"{path} does not hold an SIFlow model.")
    try:
        model = eqx.tree_deserialise_leaves(io.BytesIO(leaves), skeleton)
    except Exception as error:  # noqa: BLE001 - any failure here means a damaged file
        raise ValueError(f"{path}: the stored arrays do not match the stored configuration: {error}") from None
    if meta["base"] == "custom" and base is None:
        raise ValueError(
            f"{path} was saved with a non-default base distribution; pass it again:"
            " load(path, base=...)."
        )
    flow = SIFlow(
        model.fields.interpolant, model.fields.velocity, model.fields.score,
        base=base if meta["base"] == "custom" else None, dim=meta["dim"],
        sampler=model.sampler, rtol=model.rtol, atol=model.atol, divergence=model.divergence,
        likelihood_solver=model.likelihood_solver, standardization=model.standardization,
    )
    return flow
