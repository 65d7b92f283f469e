"""Saving and loading `SIFlow`s: Equinox leaf serialisation plus JSON metadata, in one zip file.

The file holds `meta.json` (format and package versions, the flow's configuration: interpolant,
networks, sampler, solver options, standardisation shape, the support of a `ConstrainedSIFlow`)
and `leaves.eqx` (every array, written by `eqx.tree_serialise_leaves`). It is written to a
temporary file in the same folder, flushed to disk, then renamed over the target, so a crash never
leaves a half-written file behind.
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
from numpyro.distributions import constraints

from . import _dynamics, _interpolants, _objectives, _solvers
from ._conditional import ConditionalSIFlow, ConditionedField
from ._constrained import ConstrainedSIFlow
from ._distribution import SIFlow, is_standard_normal
from ._flow import Standardization, _FlowModel
from ._networks import FieldMLP
from ._version import __version__

__all__ = ["save", "load", "FORMAT_VERSION"]

# Version 2 added constrained flows ("support") and conditional flows ("conditional"); version 3
# groups the solver options into `SolverSettings`. Versions 1 and 2 still load.
FORMAT_VERSION = 3
_READABLE_VERSIONS = (1, 2, 3)
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
_ALLOWED["numpyro_si.ConditionedField"] = ConditionedField
_NOT_SAVEABLE = (_dynamics.FunctionField, _interpolants.CustomInterpolant,
                 _interpolants.CustomGamma, _dynamics.CustomEps, _solvers.HutchinsonDivergence)


# Continuous NumPyro constraints a saved support may name (by class; parameters are stored).
_CONSTRAINTS = {
    type(obj).__name__: type(obj)
    for obj in (
        constraints.real, constraints.real_vector, constraints.positive, constraints.nonnegative,
        constraints.softplus_positive, constraints.unit_interval, constraints.circular,
        constraints.simplex, constraints.ordered_vector, constraints.positive_ordered_vector,
        constraints.positive_definite, constraints.greater_than(0.0),
        constraints.greater_than_eq(0.0), constraints.less_than(0.0), constraints.less_than_eq(0.0),
        constraints.interval(0.0, 1.0), constraints.open_interval(0.0, 1.0),
        constraints.independent(constraints.real, 1), constraints.lower_cholesky,
        constraints.corr_cholesky, constraints.corr_matrix,
    )
}


class _UnsaveableError(ValueError):
    pass


def _encode_constraint(support):
    """A JSON description of a NumPyro constraint: class name, parameters (numbers, arrays as
    lists with dtype, or nested constraints) and static attributes."""
    cls = type(support)
    if _CONSTRAINTS.get(cls.__name__) is not cls:
        raise _UnsaveableError(f"support = {support} (not one of NumPyro's named constraints)")
    params, (keys, aux) = support.tree_flatten()
    encoded = {}
    for key, value in zip(keys, params, strict=True):
        if isinstance(value, constraints.Constraint):
            encoded[key] = {"constraint": _encode_constraint(value)}
        else:
            array = np.asarray(value)
            encoded[key] = {"value": array.tolist(), "dtype": str(array.dtype)}
    return {"class": cls.__name__, "params": encoded, "aux": dict(aux)}


def _decode_constraint(obj):
    cls = _CONSTRAINTS.get(obj.get("class")) if isinstance(obj, dict) else None
    if cls is None:
        raise ValueError(f"A saved flow names an unknown support {obj!r}.")
    keys = tuple(obj["params"])
    params = []
    for value in obj["params"].values():
        if "constraint" in value:
            params.append(_decode_constraint(value["constraint"]))
        else:
            array = np.asarray(value["value"], dtype=value["dtype"])
            params.append(float(array) if array.ndim == 0 else jnp.asarray(array))
    return cls.tree_unflatten((keys, obj["aux"]), tuple(params))


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
        raise _UnsaveableError(
            f"{where} = {type(obj).__name__} (it holds a Python function or key)"
        )
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


def save(path: str | os.PathLike, flow: SIFlow | ConstrainedSIFlow | ConditionalSIFlow) -> None:
    """Write `flow` to `path` atomically (temporary file, fsync, rename).

    Saveable: flows whose fields are `FieldMLP` networks or numpyro_si modules (as `fit` makes),
    with named interpolants and eps schedules; `ConstrainedSIFlow`s of such flows on NumPyro's
    named constraints (positive, interval(a, b), simplex, ...; their parameters are stored);
    `ConditionalSIFlow`s, and the flows their `condition(y)` returns. A flow built on plain Python
    functions cannot be saved (the functions are code, not data): `ValueError` names the field. A
    base other than the standard normal is not stored; `load(path, base=flow.base)` supplies it
    again.
    """
    support = None
    if isinstance(flow, ConstrainedSIFlow):
        flow, support = flow.flow, flow.constraint
    conditional = None
    if isinstance(flow, ConditionalSIFlow):
        model, base, support = flow._model, flow.base, flow.support
        arrays = (flow._model, flow.context_standardization)
    elif isinstance(flow, SIFlow):
        model, base, arrays = flow._model, flow.base, flow._model
    else:
        raise TypeError(
            "save expects a flow (an SIFlow, a ConstrainedSIFlow or a ConditionalSIFlow), got"
            f" {type(flow).__name__}."
        )
    try:
        config = _encode(model, "flow")
        support_config = None if support is None else _encode_constraint(support)
        if isinstance(flow, ConditionalSIFlow):
            conditional = {
                "context_dim": flow.context_dim,
                "context_standardization": _encode(
                    flow.context_standardization, "flow.context_standardization"
                ),
            }
    except _UnsaveableError as error:
        raise ValueError(
            f"This {type(flow).__name__} cannot be saved: {error}. Only numpyro_si networks and"
            " named interpolants/schedules can be written; rebuild flows on plain functions in"
            " code."
        ) from None
    meta = {
        "format": _MAGIC,
        "format_version": FORMAT_VERSION,
        "numpyro_si_version": __version__,
        "dim": flow.dim,
        "base": "standard_normal" if base is None or is_standard_normal(base) else "custom",
        "model": config,
        "support": support_config,
        "conditional": conditional,
    }
    leaves = io.BytesIO()
    eqx.tree_serialise_leaves(leaves, arrays)

    def write(handle):
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("meta.json", json.dumps(meta, indent=1))
            archive.writestr("leaves.eqx", leaves.getvalue())

    write_atomically(path, write)


def write_atomically(path: str | os.PathLike, write) -> None:
    """`write(handle)` (a binary file) into a uniquely named temporary file beside `path`,
    synced, then renamed over `path`: a write stopped midway, or a second writer, never leaves
    half a file at `path`, and a failed write removes its temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def _settings_from_version_2(model: dict) -> dict:
    """A version 1 / 2 model (sampler, divergence, likelihood_solver, rtol, atol beside the
    fields) in the version 3 layout (one `SolverSettings`). The arrays keep their order: only the
    fields and the sampler hold any."""
    try:
        old = model["fields"]
        likelihood = dict(old["likelihood_solver"], __class__="numpyro_si.ODELikelihood")
        settings = {"sampler": old["sampler"], "likelihood": likelihood,
                    "divergence": old["divergence"], "rtol": old["rtol"], "atol": old["atol"]}
        return {"__class__": model["__class__"], "fields": {
            "fields": old["fields"],
            "settings": {"__class__": "numpyro_si.SolverSettings", "fields": settings},
            "standardization": old["standardization"],
        }}
    except (KeyError, TypeError):
        raise KeyError("a version 1 / 2 model without its solver options") from None


def load(
    path: str | os.PathLike, *, base: dist.Distribution | None = None
) -> SIFlow | ConstrainedSIFlow | ConditionalSIFlow:
    """Read a flow written by `save`. Every array is restored bit for bit (constraint parameters
    too); a `ConstrainedSIFlow` or a `ConditionalSIFlow` comes back as one.

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
    if meta.get("format_version") not in _READABLE_VERSIONS:
        raise ValueError(
            f"{path} was written in flow-file format version {meta.get('format_version')} (by"
            f" numpyro_si {meta.get('numpyro_si_version')}); this numpyro_si {__version__} reads"
            f" versions {', '.join(map(str, _READABLE_VERSIONS))}."
        )
    conditional = meta.get("conditional")
    try:
        if meta["format_version"] < 3:
            meta["model"] = _settings_from_version_2(meta["model"])
        skeleton = _decode(meta["model"])
        if conditional is not None:
            skeleton = (skeleton, _decode(conditional["context_standardization"]))
        support = None if meta.get("support") is None else _decode_constraint(meta["support"])
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: malformed configuration: {error!r}") from None
    if not isinstance(skeleton[0] if conditional is not None else skeleton, _FlowModel):
        raise ValueError(f"{path} does not hold an SIFlow model.")
    try:
        arrays = eqx.tree_deserialise_leaves(io.BytesIO(leaves), skeleton)
    except Exception as error:  # noqa: BLE001 - any failure here means a damaged file
        raise ValueError(
            f"{path}: the stored arrays do not match the stored configuration: {error}"
        ) from None
    if meta["base"] == "custom" and base is None:
        raise ValueError(
            f"{path} was saved with a non-default base distribution; pass it again:"
            " load(path, base=...)."
        )
    model = arrays[0] if conditional is not None else arrays
    fields = model.fields
    options = dict(
        base=base if meta["base"] == "custom" else None, dim=meta["dim"],
        settings=model.settings, standardization=model.standardization,
    )
    if conditional is not None:
        return ConditionalSIFlow(
            fields.interpolant, fields.velocity, fields.score,
            context_dim=conditional["context_dim"], context_standardization=arrays[1],
            support=support, **options,
        )
    flow = SIFlow(fields.interpolant, fields.velocity, fields.score, **options)
    return flow if support is None else ConstrainedSIFlow(flow, support)
