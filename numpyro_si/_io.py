"""Saving and loading `SIFlow`s: Equinox leaf serialisation plus JSON metadata, in one zip file.

The file holds `meta.json` (format and package versions, the flow's configuration: interpolant,
networks, sampler, solver options, standardisation shape, the support of a `ConstrainedSIFlow`)
and `leaves.eqx` (every array, written by `eqx.tree_serialise_leaves`). It is written to a
temporary file in the same folder, flushed to disk, then renamed over the target, so a crash never
leaves a half-written file behind (`write_atomically`).

Loading trusts nothing in the file: the configuration is rebuilt through the classes'
constructors (which validate it), every array is checked against the shape and dtype the
configuration gives before anything is allocated, numbers stored twice (in the metadata and
among the leaves) must agree, stored arrays must be finite, and a support is rebuilt by its
constructor from validated parameters. What `load` refuses, `save` refuses to write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import re
import socket
import stat
import tempfile
import threading
import time
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
from ._dynamics import Fields
from ._flow import Standardization, _FlowModel
from ._networks import FieldMLP, FieldUNet
from ._version import __version__

__all__ = ["save", "load", "FORMAT_VERSION"]

# Version 2 added constrained flows ("support") and conditional flows ("conditional"); version 3
# groups the solver options into `SolverSettings`. Versions 1 and 2 still load. ("base_check" and
# "validate_args" are optional version 3 entries: readers that predate them ignore them.)
FORMAT_VERSION = 3
_READABLE_VERSIONS = (1, 2, 3)
_MAGIC = "numpyro_si.SIFlow"
_META_KEYS = {"format", "format_version", "numpyro_si_version", "dim", "base", "model", "support",
              "conditional", "base_check", "validate_args"}
_MEMBERS = {"meta.json", "leaves.eqx"}
_MAX_META_BYTES = 64 * 2**20  # a flow's configuration is kilobytes; refuse absurd metadata
_NPY_HEADER_MAX = 4096  # bytes of one leaf's .npy header beyond its data (NumPy writes 64-128)

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
# ... and of those, the ones a file can hold (the others hold functions or keys)
_LOADABLE = {name: cls for name, cls in _ALLOWED.items() if not issubclass(cls, _NOT_SAVEABLE)}

# dtypes a stored array may have (a float64 / int64 one needs 64-bit JAX to load without loss)
_ARRAY_DTYPES = {"float16", "bfloat16", "float32", "float64", "bool", "int8", "int16", "int32",
                 "int64", "uint8", "uint16", "uint32", "uint64"}
_NETWORK_DTYPES = {"float16", "bfloat16", "float32", "float64"}


# Continuous NumPyro constraints a saved support may name (by class; parameters are stored).
_CONSTRAINT_EXAMPLES = {
    type(obj).__name__: obj
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
_CONSTRAINTS = {name: type(obj) for name, obj in _CONSTRAINT_EXAMPLES.items()}


def _is_singleton(cls) -> bool:
    """Whether `cls()` is NumPyro's one shared instance (constraints.positive, ...)."""
    try:
        return cls() is cls()
    except TypeError:
        return False


_SINGLETONS = {name: cls() for name, cls in _CONSTRAINTS.items() if _is_singleton(cls)}
_INTERVALS = (type(constraints.interval(0.0, 1.0)), type(constraints.open_interval(0.0, 1.0)))


class _UnsaveableError(ValueError):
    pass


class _InvalidFile(ValueError):
    """Something in a saved flow that must not be loaded (the message names it)."""


# ----------------------------------------------------------------------------------------------
# values shared by save and load
# ----------------------------------------------------------------------------------------------


def _x64_enabled() -> bool:
    return jax.dtypes.canonicalize_dtype(np.float64) == np.float64


def _check_dtype(name, where: str, allowed=_ARRAY_DTYPES) -> np.dtype:
    """A stored dtype name: one of `allowed`, and a 64-bit one only when JAX can hold it."""
    if not isinstance(name, str) or name not in allowed:
        raise _InvalidFile(f"{where} has an unsupported dtype {name!r}.")
    dtype = jnp.dtype(name)
    if dtype.itemsize == 8 and not _x64_enabled():
        raise _InvalidFile(
            f"{where} is stored as {name}, which this process cannot hold without rounding it to"
            " 32 bits (changing the flow). Enable 64-bit JAX first:"
            " jax.config.update('jax_enable_x64', True), or load inside"
            " `with jax.enable_x64(True):`."
        )
    return dtype


def _describe(path) -> str:
    return jax.tree_util.keystr(path)


def _check_values(tree, where: str) -> None:
    """Every floating array of `tree` finite and every standardisation scale positive (what a
    flow needs to have a density); raises naming the field."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in leaves:
        if eqx.is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.inexact):
            bad = int(np.sum(~np.asarray(jnp.isfinite(leaf))))
            if bad:
                raise _InvalidFile(
                    f"{where}{_describe(path)} contains NaN or inf ({bad} of {leaf.size} values)."
                )
    standardizations = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda node: isinstance(node, Standardization)
    )[0]
    for path, node in standardizations:
        if isinstance(node, Standardization) and eqx.is_array(node.scale):
            if not bool(np.all(np.asarray(node.scale) > 0)):
                raise _InvalidFile(
                    f"{where}{_describe(path)}.scale must be positive, got {np.asarray(node.scale)}."
                )


def _recheck(node, where: str) -> None:
    """Run every `__check_init__` of every module in `node` again, now on the loaded arrays (the
    constructors ran on the configuration, with abstract arrays)."""
    if isinstance(node, tuple | list):
        for i, item in enumerate(node):
            _recheck(item, f"{where}[{i}]")
        return
    if not isinstance(node, eqx.Module):
        return
    for field in dataclasses.fields(node):
        _recheck(getattr(node, field.name, None), f"{where}.{field.name}")
    for cls in type(node).__mro__:
        check = cls.__dict__.get("__check_init__")
        if check is not None:
            try:
                check(node)
            except (ValueError, TypeError) as error:
                raise _InvalidFile(f"{where} ({type(node).__name__}): {error}") from None


def _check_networks(model, dim: int, context_dim: int | None, where: str = "flow") -> None:
    """The fields are `FieldMLP`s (or, in a plain flow, `ConditionedField`s of one) of the flow's
    dimension, taking the context the flow gives them: what `fit` makes, and all a file holds.
    Works on loaded skeletons (array shapes only) as on flows."""
    if not isinstance(model, _FlowModel) or not isinstance(model.fields, Fields):
        raise _InvalidFile(f"{where} is not an SIFlow model (fields, settings, standardization).")
    if model.standardization is not None and not isinstance(model.standardization, Standardization):
        raise _InvalidFile(f"{where}.standardization is a {type(model.standardization).__name__},"
                           " not a Standardization.")
    for name in ("velocity", "score"):
        field = getattr(model.fields, name)
        at = f"{where}.fields.{name}"
        if field is None:
            if name == "velocity":
                raise _InvalidFile(f"{at} is missing.")
            continue
        network = field.network if isinstance(field, ConditionedField) else field
        if isinstance(network, FieldUNet) and not isinstance(field, ConditionedField):
            size = network.shape[0] * network.shape[1] * network.shape[2]
            if size != dim:
                raise _InvalidFile(f"{at} is a FieldUNet on images of {size} values, not {dim}.")
            continue
        if not isinstance(network, FieldMLP):
            raise _InvalidFile(
                f"{at} is a {type(network).__name__}, not a FieldMLP (the networks `fit` makes)"
                " or a FieldUNet."
            )
        if isinstance(field, ConditionedField):
            if context_dim is not None:
                raise _InvalidFile(f"{at} binds a context inside a conditional flow.")
            k = network.context_dim
            if k < 1 or not hasattr(field.context, "shape") or tuple(field.context.shape) != (k,):
                shape = getattr(field.context, "shape", None)
                raise _InvalidFile(
                    f"{at}.context has shape {shape}; its network takes a context of shape ({k},)."
                )
            standardization = field.context_standardization
            if standardization is not None and (
                not isinstance(standardization, Standardization)
                or tuple(standardization.shift.shape) != (k,)
            ):
                raise _InvalidFile(f"{at}.context_standardization does not map ({k},) contexts.")
        elif network.context_dim != (context_dim or 0):
            expected = context_dim or 0
            raise _InvalidFile(
                f"{at} takes a context of dimension {network.context_dim}, but the flow gives it"
                f" {expected}."
            )
        if network.dim != dim:
            raise _InvalidFile(f"{at} has dimension {network.dim}, the flow {dim}.")


# ----------------------------------------------------------------------------------------------
# supports
# ----------------------------------------------------------------------------------------------


def _check_constraint(support, where: str = "support") -> None:
    """The parameters of a support (NumPyro does not check them): real, finite numbers, and
    lower < upper for an interval."""
    params, (keys, _) = support.tree_flatten()
    for key, value in zip(keys, params, strict=True):
        if isinstance(value, constraints.Constraint):
            _check_constraint(value, f"{where}.{key}")
            continue
        array = np.asarray(value)
        if array.dtype.kind not in "fiu":
            raise _InvalidFile(f"{where}.{key} must be a real number or array, got {value!r}.")
        if not np.all(np.isfinite(array)):
            raise _InvalidFile(f"{where}.{key} must be finite, got {array.tolist()}.")
    if isinstance(support, _INTERVALS):
        try:
            ordered = np.all(np.asarray(support.lower_bound) < np.asarray(support.upper_bound))
        except ValueError as error:  # shapes that do not broadcast
            raise _InvalidFile(f"{where}: bounds of mismatched shapes ({error}).") from None
        if not ordered:
            raise _InvalidFile(
                f"{where} needs lower_bound < upper_bound, got {np.asarray(support.lower_bound)}"
                f" and {np.asarray(support.upper_bound)}."
            )


def _encode_constraint(support):
    """A JSON description of a NumPyro constraint: class name, parameters (numbers, arrays as
    lists with dtype and kind, or nested constraints) and static attributes."""
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
            # Python numbers come back as Python numbers, arrays as arrays of their own kind
            if isinstance(value, jax.Array):
                encoded[key]["kind"] = "jax"
            elif isinstance(value, np.ndarray):
                encoded[key]["kind"] = "numpy"
            elif isinstance(value, np.generic):
                encoded[key]["kind"] = "numpy_scalar"
    return {"class": cls.__name__, "params": encoded, "aux": dict(aux)}


def _expect_keys(obj, required: set, optional: set, where: str) -> None:
    if not isinstance(obj, dict):
        raise _InvalidFile(f"{where} must be a JSON object, got {obj!r:.200}.")
    missing, unknown = required - set(obj), set(obj) - required - optional
    if missing or unknown:
        raise _InvalidFile(
            f"{where} has {'missing entries ' + str(sorted(missing)) if missing else ''}"
            f"{' and ' if missing and unknown else ''}"
            f"{'unknown entries ' + str(sorted(unknown)) if unknown else ''}."
        )


def _decode_parameter(value, where: str):
    _expect_keys(value, {"value", "dtype"}, {"kind"}, where)
    dtype = value["dtype"]
    if not isinstance(dtype, str) or dtype not in _ARRAY_DTYPES - {"bool"}:
        raise _InvalidFile(f"{where} has an unsupported dtype {dtype!r}.")
    kind = value.get("kind")
    if kind not in (None, "jax", "numpy", "numpy_scalar"):
        raise _InvalidFile(f"{where} has an unknown kind {kind!r}.")
    try:
        array = np.asarray(value["value"], dtype=dtype)
    except (ValueError, TypeError, OverflowError) as error:
        raise _InvalidFile(f"{where}: {error}") from None
    if kind == "numpy":
        return array
    if kind == "numpy_scalar":
        return array[()]
    if kind is None and array.ndim == 0:  # a Python number (or a file older than "kind")
        return float(array) if array.dtype.kind == "f" else int(array)
    _check_dtype(dtype, where)  # a 64-bit JAX array needs 64-bit JAX
    return jnp.asarray(array)


def _decode_constraint(obj, where: str = "support"):
    """A support, rebuilt by its constructor (never by setting attributes: the named constraints
    are NumPyro's shared instances) and checked."""
    if not isinstance(obj, dict) or _CONSTRAINTS.get(obj.get("class")) is None:
        raise _InvalidFile(f"A saved flow names an unknown support {obj!r:.200}.")
    _expect_keys(obj, {"class", "params", "aux"}, set(), where)
    name = obj["class"]
    if name in _SINGLETONS:
        canonical = _encode_constraint(_SINGLETONS[name])
        if obj != canonical:
            raise _InvalidFile(
                f"{where}: {name} has no parameters of its own (expected {canonical['params']}"
                f" and {canonical['aux']}, got {obj['params']} and {obj['aux']})."
            )
        return _SINGLETONS[name]
    example = _CONSTRAINT_EXAMPLES[name]
    _, (keys, aux_example) = example.tree_flatten()
    params, aux = obj["params"], obj["aux"]
    if not isinstance(params, dict) or list(params) != list(keys):
        raise _InvalidFile(f"{where}: {name} takes the parameters {list(keys)}, got {params!r:.200}.")
    if not isinstance(aux, dict) or set(aux) != set(aux_example):
        raise _InvalidFile(f"{where}: {name} takes the options {sorted(aux_example)}, got {aux!r}.")
    values = []
    for key, value in params.items():
        if isinstance(value, dict) and "constraint" in value:
            _expect_keys(value, {"constraint"}, set(), f"{where}.{key}")
            values.append(_decode_constraint(value["constraint"], f"{where}.{key}"))
        else:
            values.append(_decode_parameter(value, f"{where}.{key}"))
    if name == "_IndependentConstraint":
        ndims = aux["reinterpreted_batch_ndims"]
        if isinstance(ndims, bool) or not isinstance(ndims, int) or not 0 <= ndims <= 2:
            raise _InvalidFile(f"{where}.reinterpreted_batch_ndims must be 0, 1 or 2, got {ndims!r}.")
        if not isinstance(values[0], constraints.Constraint):
            raise _InvalidFile(f"{where}.base_constraint must be a constraint.")
        support = constraints.independent(values[0], ndims)
    else:
        if any(isinstance(v, constraints.Constraint) for v in values):
            raise _InvalidFile(f"{where}: {name} takes numbers, not constraints.")
        support = _CONSTRAINTS[name](*values)
    _check_constraint(support, where)
    return support


# ----------------------------------------------------------------------------------------------
# the configuration
# ----------------------------------------------------------------------------------------------


def _class_name(obj) -> str:
    cls = type(obj)
    prefix = "diffrax" if cls.__module__.startswith("diffrax") else "numpyro_si"
    name = f"{prefix}.{cls.__name__}"
    if _ALLOWED.get(name) is not cls:
        raise _UnsaveableError(f"{cls.__module__}.{cls.__name__}")
    return name


def _encode(obj, where: str):
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise _InvalidFile(f"{where} = {obj} is not a finite number.")
        return obj
    if isinstance(obj, tuple | list):
        return [_encode(item, f"{where}[{i}]") for i, item in enumerate(obj)]
    if eqx.is_array(obj):
        array = np.asarray(obj)
        if str(array.dtype) not in _ARRAY_DTYPES:
            raise _InvalidFile(f"{where} has dtype {array.dtype}, which a flow file cannot hold.")
        return {"__array__": list(array.shape), "dtype": str(array.dtype)}
    if isinstance(obj, FieldMLP):
        return {"__network__": "FieldMLP", "config": obj.config(),
                "dtype": str(obj.input_layer.weight.dtype)}
    if isinstance(obj, FieldUNet):
        return {"__network__": "FieldUNet", "config": obj.config(),
                "dtype": str(obj.conv_in.weight.dtype)}
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


_NETWORK_CONFIG = {"dim": int, "width": int, "depth": int, "n_frequencies": int,
                   "residual": bool, "activation": str, "context_dim": int}
_UNET_CONFIG = {"shape": list, "widths": list, "patch": int, "n_frequencies": int,
                "activation": str}


def _abstract_network(cls, config: dict, dtype, where: str):
    """`cls(**config)` built abstractly (array shapes only), its constructor's checks turned into
    `_InvalidFile` naming `where`."""
    try:
        return eqx.filter_eval_shape(lambda: cls(**config, key=jax.random.key(0), dtype=dtype))
    except (ValueError, TypeError, OverflowError) as error:
        raise _InvalidFile(f"{where}: {error}") from None


class _Decoder:
    """Rebuilds a saved configuration through the classes' constructors (so it is validated as
    a constructed one is), with abstract arrays (`jax.ShapeDtypeStruct`): nothing is allocated
    before the stored leaves are known to match. `leaves_size` (bytes of leaves.eqx) bounds what
    a configuration may ask for."""

    def __init__(self, leaves_size: int, format_version: int):
        self.leaves_size = leaves_size
        self.format_version = format_version

    def __call__(self, obj, where: str):
        if isinstance(obj, list):
            return tuple(self(item, f"{where}[{i}]") for i, item in enumerate(obj))
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        if not isinstance(obj, dict):
            raise _InvalidFile(f"Malformed entry {where} in a saved flow: {obj!r:.200}.")
        if "__array__" in obj:
            return self.array(obj, where)
        if "__network__" in obj:
            return self.network(obj, where)
        if "__class__" in obj:
            return self.module(obj, where)
        raise _InvalidFile(f"Malformed entry {where} in a saved flow: {obj!r:.200}.")

    def array(self, obj, where):
        _expect_keys(obj, {"__array__", "dtype"}, set(), where)
        shape = obj["__array__"]
        if not isinstance(shape, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        ):
            raise _InvalidFile(f"{where} has an invalid shape {shape!r:.200}.")
        dtype = _check_dtype(obj["dtype"], where)
        if math.prod(shape) * dtype.itemsize > self.leaves_size:
            raise _InvalidFile(
                f"{where} is described as an array of shape {tuple(shape)} ({obj['dtype']}), more"
                f" than the {self.leaves_size} bytes of stored arrays hold: the stored arrays do"
                " not match the stored configuration."
            )
        return jax.ShapeDtypeStruct(tuple(shape), dtype)

    def network(self, obj, where):
        _expect_keys(obj, {"__network__", "config", "dtype"}, set(), where)
        if obj["__network__"] == "FieldUNet":
            return self.unet(obj, where)
        if obj["__network__"] != "FieldMLP":
            raise _InvalidFile(f"Unknown network type {obj['__network__']!r} in a saved flow.")
        config = obj["config"]
        # a version 3 file names every option; older ones may leave some at their defaults
        required = set(_NETWORK_CONFIG) if self.format_version >= 3 else {"dim", "width", "depth"}
        _expect_keys(config, required, set(_NETWORK_CONFIG), f"{where}.config")
        for name, value in config.items():
            kind = _NETWORK_CONFIG[name]
            if type(value) is not kind or (kind is int and value < 0):
                what = "a non-negative int" if kind is int else f"a {kind.__name__}"
                raise _InvalidFile(f"{where}.config.{name} must be {what}, got {value!r}.")
        dtype = _check_dtype(obj["dtype"], f"{where}.dtype", _NETWORK_DTYPES)
        # every layer stores at least a header and `width` numbers: a depth the stored bytes
        # cannot hold is refused before the network is even built (abstractly)
        layer = 64 + config.get("width", 1) * dtype.itemsize
        if config["depth"] > self.leaves_size // layer:
            raise _InvalidFile(
                f"{where}.config.depth = {config['depth']} is more layers than the"
                f" {self.leaves_size} bytes of stored arrays hold: the stored arrays do not match"
                " the stored configuration."
            )
        return _abstract_network(FieldMLP, config, dtype, where)

    def unet(self, obj, where):
        config = obj["config"]
        _expect_keys(config, set(_UNET_CONFIG), set(), f"{where}.config")
        for name, kind in _UNET_CONFIG.items():
            value = config[name]
            ok = (type(value) is kind if kind is not list else
                  type(value) is list and all(type(v) is int and 1 <= v for v in value))
            if not ok:
                raise _InvalidFile(f"{where}.config.{name} must be a {kind.__name__}"
                                   f"{' of positive ints' if kind is list else ''}, got {value!r}.")
        dtype = _check_dtype(obj["dtype"], f"{where}.dtype", _NETWORK_DTYPES)
        # every level stores at least its convolution kernels: more levels or channels than the
        # stored bytes hold is refused before the network is built (abstractly)
        kernels = sum(9 * w * w for w in config["widths"]) * dtype.itemsize
        if len(config["widths"]) > 16 or kernels > self.leaves_size:
            raise _InvalidFile(
                f"{where}.config.widths = {config['widths']} needs more than the"
                f" {self.leaves_size} bytes of stored arrays hold: the stored arrays do not match"
                " the stored configuration."
            )
        return _abstract_network(FieldUNet, config, dtype, where)

    def module(self, obj, where):
        _expect_keys(obj, {"__class__", "fields"}, set(), where)
        name = obj["__class__"]
        cls = _LOADABLE.get(name) if isinstance(name, str) else None
        if cls is None:
            raise _InvalidFile(f"A saved flow names an unknown class {name!r:.200} ({where}).")
        if not isinstance(obj["fields"], dict):
            raise _InvalidFile(f"{where}.fields must be a JSON object.")
        values = {key: self(value, f"{where}.{key}") for key, value in obj["fields"].items()}
        try:
            return cls(**values)
        except (ValueError, TypeError, AttributeError) as error:
            raise _InvalidFile(f"{where} ({cls.__name__}): {error}") from None


# ----------------------------------------------------------------------------------------------
# the arrays
# ----------------------------------------------------------------------------------------------


def _stored_leaves(tree):
    """(path, leaf) of the leaves `eqx.tree_serialise_leaves` writes, in its order: arrays
    (abstract ones too) and Python / NumPy scalars."""
    return [
        (path, leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        if isinstance(leaf, jax.ShapeDtypeStruct) or eqx.is_array_like(leaf)
    ]


def _read_leaves(data: bytes, trees) -> list:
    """The trees `(where, tree)` with their arrays read from `data`, in order (as
    `eqx.tree_serialise_leaves` wrote them): every header checked against the shape and dtype
    the tree gives before its data is read, the scalars checked against the configuration's
    values, and no byte left over."""
    stream = io.BytesIO(data)
    results = [_read_tree(stream, data, tree, where) for where, tree in trees]
    if stream.tell() != len(data):
        raise _InvalidFile(
            "the stored arrays do not match the stored configuration:"
            f" {len(data) - stream.tell()} bytes of leaves.eqx are left over."
        )
    return results


def _read_tree(stream, data: bytes, tree, where: str):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    loaded = []

    def mismatch(at, what):
        return _InvalidFile(
            f"the stored arrays do not match the stored configuration: {where}{at} {what}."
        )

    for path, leaf in leaves:
        at = _describe(path)
        if not (isinstance(leaf, jax.ShapeDtypeStruct) or eqx.is_array_like(leaf)):
            loaded.append(leaf)  # not stored (eqx.default_serialise_filter_spec)
            continue
        try:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except ValueError as error:
            raise mismatch(at, f"has no readable array header ({error})") from None
        if isinstance(leaf, jax.ShapeDtypeStruct):
            expected_shape, expected_dtype = tuple(leaf.shape), np.dtype(leaf.dtype)
        elif isinstance(leaf, bool | int | float | complex):
            expected_shape, expected_dtype = (), dtype
        else:  # a NumPy scalar, or an array a constructor made
            expected_shape, expected_dtype = np.shape(leaf), np.asarray(leaf).dtype
        if fortran or tuple(shape) != expected_shape:
            raise mismatch(at, f"is stored with shape {tuple(shape)}, described as {expected_shape}")
        if dtype != expected_dtype and not (
            expected_dtype == jnp.bfloat16 and dtype == np.dtype("V2")  # how NumPy writes it
        ):
            raise mismatch(at, f"is stored as {dtype}, described as {expected_dtype}")
        if dtype.hasobject or dtype.kind not in "biufcV":
            raise mismatch(at, f"is stored with unsupported dtype {dtype}")
        count = math.prod(shape)
        start = stream.tell()
        if start + count * dtype.itemsize > len(data):
            raise mismatch(at, "is cut short")
        array = np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(shape)
        stream.seek(start + count * dtype.itemsize)
        if isinstance(leaf, jax.ShapeDtypeStruct):
            if dtype == np.dtype("V2"):
                array = array.view(jnp.bfloat16)
            loaded.append(jnp.asarray(array))
            continue
        # a value the configuration gives too (an eps0, a gamma's a): both must agree, bit for
        # bit, and the configuration's (validated by its constructor) is kept
        if isinstance(leaf, bool | int | float | complex):
            value = array.item()
            same = type(value) is type(leaf) and (
                value.hex() == leaf.hex() if isinstance(leaf, float) else value == leaf
            )
        else:
            value = array
            same = array.tobytes() == np.ascontiguousarray(np.asarray(leaf)).tobytes()
        if not same:
            raise _InvalidFile(
                f"{where}{at} is {leaf!r} in the configuration but {value!r} among the stored"
                " arrays (the file was edited or damaged)."
            )
        loaded.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, loaded)


def _leaves_bounds(trees) -> tuple[int, int]:
    """The fewest and most bytes leaves.eqx can have for these (abstract) trees."""
    low = high = 0
    for tree in trees:
        for _, leaf in _stored_leaves(tree):
            if isinstance(leaf, jax.ShapeDtypeStruct):
                size = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
            else:
                size = 1
            low += size + 64
            high += max(size, 16) + _NPY_HEADER_MAX
    return low, high


# ----------------------------------------------------------------------------------------------
# the base
# ----------------------------------------------------------------------------------------------


def _base_check(base) -> dict | None:
    """A few draws of a non-default base and its log density there, so that `load` can tell
    whether the base it is given is the one the flow was saved with (None if unavailable)."""
    try:
        points = np.asarray(base.sample(jax.random.key(0), (4,)))
        values = np.asarray(base.log_prob(jnp.asarray(points)), dtype=np.float64)
    except Exception:  # noqa: BLE001 - a base we cannot probe is simply not checked
        return None
    if not (np.all(np.isfinite(points)) and np.all(np.isfinite(values))):
        return None
    return {"points": points.tolist(), "dtype": str(points.dtype), "log_prob": values.tolist()}


def _verify_base(check, base, path) -> None:
    _expect_keys(check, {"points", "dtype", "log_prob"}, set(), "base_check")
    try:
        points = np.asarray(check["points"], dtype=np.dtype(check["dtype"]))
        expected = np.asarray(check["log_prob"], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise _InvalidFile(f"base_check: {error}") from None
    try:
        values = np.asarray(base.log_prob(jnp.asarray(points)), dtype=np.float64)
    except Exception as error:  # noqa: BLE001 - the given base cannot evaluate the points
        raise ValueError(
            f"{path}: the base given to load cannot evaluate the saved base's draws ({error});"
            " pass the base the flow was saved with."
        ) from None
    if values.shape != expected.shape or not np.allclose(values, expected, rtol=1e-5, atol=1e-5):
        raise ValueError(
            f"{path} was saved with another base distribution: at the saved base's draws the"
            f" given base has log density {values.tolist()}, the saved one {expected.tolist()}."
            " Pass the base the flow was saved with."
        )


# ----------------------------------------------------------------------------------------------
# save
# ----------------------------------------------------------------------------------------------


def _explicit_validate_args(distribution):
    value = distribution.__dict__.get("_validate_args")
    return value if isinstance(value, bool) else None


def save(path: str | os.PathLike, flow: SIFlow | ConstrainedSIFlow | ConditionalSIFlow) -> None:
    """Write `flow` to `path` atomically (temporary file, fsync, rename; see `write_atomically`).

    Saveable: flows whose fields are `FieldMLP` networks or numpyro_si modules (as `fit` makes),
    with named interpolants and eps schedules; `ConstrainedSIFlow`s of such flows on NumPyro's
    named constraints (positive, interval(a, b), simplex, ...; their parameters are stored);
    `ConditionalSIFlow`s, and the flows their `condition(y)` returns. A flow built on plain Python
    functions cannot be saved (the functions are code, not data): `ValueError` names the field,
    as it does for a flow `load` would refuse (NaN or inf weights or standardisation, a
    non-positive scale, a non-finite option, support parameters that are not finite or an
    interval with lower >= upper). A base other than the standard normal is not stored;
    `load(path, base=flow.base)` supplies it again (and checks it is the same).

    If `path` is a symbolic link, the file it points to is replaced (the link stays). A `path`
    that exists but is not a regular file (a directory, a device such as /dev/null, a FIFO) is
    refused with `ValueError`.
    """
    support = None
    validate_args = {}
    if isinstance(flow, ConstrainedSIFlow):
        validate_args["constrained"] = _explicit_validate_args(flow)
        flow, support = flow.flow, flow.constraint
    conditional = None
    if isinstance(flow, ConditionalSIFlow):
        model, base, support = flow._model, flow.base, flow.support
        arrays = (flow._model, flow.context_standardization)
        context_dim = flow.context_dim
    elif isinstance(flow, SIFlow):
        model, base, arrays, context_dim = flow._model, flow.base, flow._model, None
        validate_args["flow"] = _explicit_validate_args(flow)
    else:
        raise TypeError(
            "save expects a flow (an SIFlow, a ConstrainedSIFlow or a ConditionalSIFlow), got"
            f" {type(flow).__name__}."
        )
    try:
        config = _encode(model, "flow")
        _check_networks(model, flow.dim, context_dim)
        _check_values(model, "flow")
        support_config = None
        if support is not None:
            support_config = _encode_constraint(support)
            _check_constraint(support)
        if isinstance(flow, ConditionalSIFlow):
            conditional = {
                "context_dim": flow.context_dim,
                "context_standardization": _encode(
                    flow.context_standardization, "flow.context_standardization"
                ),
            }
            if flow.context_standardization is not None:
                _check_values(flow.context_standardization, "flow.context_standardization")
    except _UnsaveableError as error:
        raise ValueError(
            f"This {type(flow).__name__} cannot be saved: {error}. Only numpyro_si networks and"
            " named interpolants/schedules can be written; rebuild flows on plain functions in"
            " code."
        ) from None
    except _InvalidFile as error:
        raise ValueError(
            f"This {type(flow).__name__} cannot be saved: {error} A flow file must load again,"
            " and this value would make it invalid."
        ) from None
    custom_base = not (base is None or is_standard_normal(base))
    meta = {
        "format": _MAGIC,
        "format_version": FORMAT_VERSION,
        "numpyro_si_version": __version__,
        "dim": flow.dim,
        "base": "custom" if custom_base else "standard_normal",
        "model": config,
        "support": support_config,
        "conditional": conditional,
    }
    if custom_base and (check := _base_check(base)) is not None:
        meta["base_check"] = check
    validate_args = {key: value for key, value in validate_args.items() if value is not None}
    if validate_args:
        meta["validate_args"] = validate_args
    leaves = io.BytesIO()
    eqx.tree_serialise_leaves(leaves, arrays)
    text = json.dumps(meta, indent=1, allow_nan=False)

    def write(handle):
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("meta.json", text)
            archive.writestr("leaves.eqx", leaves.getvalue())

    write_atomically(path, write)


# ----------------------------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------------------------

# A writer's temporary file is `.<name>.<pid>-<tag>-<random>.tmp` beside the target, `tag`
# naming the machine, boot and PID namespace: a later write to the same target removes those of
# writers that are gone (killed, or crashed before they could clean up). Temporaries it cannot
# check (another machine, an older numpyro_si: `.<name>.<random>.tmp`) are removed once nobody
# has written to them for `_STALE_SECONDS`.
_STALE_SECONDS = 60.0
_STALE_SECONDS_ALIVE = 24 * 3600.0  # a writer alive but silent this long: its pid was reused
_TEMPORARY = re.compile(r"(?P<pid>[0-9]+)-(?P<tag>[0-9a-f]{8})-[a-z0-9_]+\.tmp")
_LEGACY_TEMPORARY = re.compile(r"[a-z0-9_]{8}\.tmp")
_host_tag = None
_umask_lock = threading.Lock()


def _writer_tag() -> str:
    global _host_tag
    if _host_tag is None:
        parts = [socket.gethostname()]
        with contextlib.suppress(OSError):
            parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        with contextlib.suppress(OSError, AttributeError):
            parts.append(os.readlink("/proc/self/ns/pid"))
        _host_tag = hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]
    return _host_tag


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing
    if os.name == "nt" or pid <= 0:  # os.kill(pid, 0) terminates a process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")  # a zombie writes nothing any more
    return True


def _remove_stale_temporaries(target: Path) -> None:
    """Remove the temporary files earlier writes to `target` left behind (see above)."""
    prefix = f".{target.name}."
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(target.parent) as entries:
        for entry in entries:
            name = entry.name
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            ours, legacy = _TEMPORARY.fullmatch(rest), _LEGACY_TEMPORARY.fullmatch(rest)
            if not (ours or legacy):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            idle = now - info.st_mtime
            if ours and ours["tag"] == _writer_tag():
                stale = not _process_alive(int(ours["pid"])) or idle > _STALE_SECONDS_ALIVE
            else:
                stale = idle > _STALE_SECONDS
            if stale:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _umask() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _umask_lock:  # no /proc: read it the racy way
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISSOCK, "a socket"))


def _kind_of(mode: int) -> str:
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a regular file")


def _write_target(path: Path) -> tuple[Path, os.stat_result | None]:
    """The file a write to `path` replaces (the end of a symbolic link, which stays), and its
    status if it exists; refuses anything but a regular file."""
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        info = os.stat(target)
    except FileNotFoundError:
        return target, None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError(f"Cannot write to {path}: a loop of symbolic links.") from None
        raise
    if not stat.S_ISREG(info.st_mode):
        link = f" (a symbolic link to {target})" if target != path else ""
        what = "it points to" if link else "it is"
        raise ValueError(
            f"Cannot write to {path}{link}: {what} {_kind_of(info.st_mode)}, not a regular file."
            " Give the path of a regular file (or of one to create)."
        )
    if not os.access(target, os.W_OK):  # as a plain write would, leave a read-only file alone
        raise PermissionError(errno.EACCES, "Cannot write to a read-only file", str(path))
    return target, info


def write_atomically(path: str | os.PathLike, write) -> None:
    """`write(handle)` (a binary file) into a uniquely named temporary file beside the file
    `path` names, synced, then renamed over it: a write stopped midway, or a second writer,
    never leaves half a file at `path`, and a failed write (an exception, Ctrl-C) removes its
    temporary file. A write killed outright (SIGKILL, power loss) cannot; the next write to the
    same file removes what it left.

    The file gets the permissions a plain write would give it: those of the file it replaces
    (and its owner and group where allowed), or 0666 less the umask for a new one. A symbolic
    link at `path` is written through (the file it points to is replaced; the temporary file
    sits beside that file). A `path` that is a directory, a device, a FIFO or a socket is
    refused with `ValueError`. (Another hard link to the old file keeps the old contents: the
    new file is a new inode, as with any atomic replace.)
    """
    path = Path(path)
    target, existing = _write_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.{os.getpid()}-{_writer_tag()}-", suffix=".tmp", dir=target.parent
    )
    try:
        if existing is not None and hasattr(os, "fchown"):
            created = os.fstat(fd)
            if (created.st_uid, created.st_gid) != (existing.st_uid, existing.st_gid):
                try:
                    os.fchown(fd, existing.st_uid, existing.st_gid)
                except OSError:  # not allowed to give it away: keep at least the group
                    with contextlib.suppress(OSError):
                        os.fchown(fd, -1, existing.st_gid)
        mode = stat.S_IMODE(existing.st_mode) if existing is not None else 0o666 & ~_umask()
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            fd = None
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
        tmp_name = None
        _fsync_folder(target.parent)
    except BaseException:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
        raise


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (where the platform allows syncing a folder)."""
    with contextlib.suppress(OSError, AttributeError):
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


# ----------------------------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------------------------


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


def _json_object(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicated = sorted({key for key in keys if keys.count(key) > 1})
        raise _InvalidFile(f"meta.json repeats the entries {duplicated}.")
    return dict(pairs)


def _json_constant(name):
    raise _InvalidFile(f"meta.json holds the non-finite number {name}.")


def _json_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise _InvalidFile(f"meta.json holds the non-finite number {text}.")
    return value


def _read_archive(path: Path) -> tuple[dict, zipfile.ZipInfo, zipfile.ZipFile]:
    archive = zipfile.ZipFile(path, "r")
    try:
        names = [info.filename for info in archive.infolist()]
        if sorted(names) != sorted(_MEMBERS):
            raise zipfile.BadZipFile(
                f"it holds {sorted(names)}, expected exactly {sorted(_MEMBERS)}"
            )
        for info in archive.infolist():
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise zipfile.BadZipFile(
                    f"{info.filename} uses compression method {info.compress_type}; a flow file"
                    " is stored or deflated"
                )
        meta_info = archive.getinfo("meta.json")
        if meta_info.file_size > _MAX_META_BYTES:
            raise zipfile.BadZipFile(f"meta.json is {meta_info.file_size} bytes")
        meta = json.loads(archive.read("meta.json"), object_pairs_hook=_json_object,
                          parse_constant=_json_constant, parse_float=_json_float)
        return meta, archive.getinfo("leaves.eqx"), archive
    except BaseException:
        archive.close()
        raise


def load(
    path: str | os.PathLike, *, base: dist.Distribution | None = None
) -> SIFlow | ConstrainedSIFlow | ConditionalSIFlow:
    """Read a flow written by `save`. Every array is restored bit for bit (constraint parameters
    too); a `ConstrainedSIFlow` or a `ConditionalSIFlow` comes back as one.

    `base` must be given (as `flow.base` was) when the flow was saved with a non-default base;
    it is checked against draws of the saved base, and a base given for a flow saved with the
    standard normal must be the standard normal.

    Raises `ValueError` for a truncated or corrupted file, a file that is not a saved flow, one
    written by an incompatible format version, and for any content a constructed flow could not
    hold (an option out of range, NaN or inf in a network or standardisation, arrays that do not
    match the configuration, support parameters a support cannot have), naming what is wrong. A
    file of float64 arrays needs 64-bit JAX (`jax_enable_x64`) rather than being rounded.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No saved flow at {path}.")
    if not path.is_file():
        raise ValueError(
            f"{path} is {_kind_of(os.stat(path).st_mode)}, not a saved flow (a regular file)."
        )
    try:
        meta, leaves_info, archive = _read_archive(path)
    except _InvalidFile as error:
        raise ValueError(f"{path} is not a readable numpyro_si flow: {error}") from None
    # A damaged deflate stream raises zlib.error, a damaged header flag NotImplementedError or
    # RuntimeError ("encrypted"), bad UTF-8 in meta.json UnicodeDecodeError (a ValueError).
    except (zipfile.BadZipFile, zlib.error, KeyError, EOFError, ValueError, OSError,
            NotImplementedError, RuntimeError, RecursionError) as error:
        raise ValueError(
            f"{path} is not a readable numpyro_si flow (truncated or corrupted?): {error}"
        ) from None
    with archive:
        if not isinstance(meta, dict) or meta.get("format") != _MAGIC:
            raise ValueError(f"{path} is not a numpyro_si flow file.")
        version = meta.get("format_version")
        if isinstance(version, bool) or version not in _READABLE_VERSIONS:
            raise ValueError(
                f"{path} was written in flow-file format version {version} (by"
                f" numpyro_si {meta.get('numpyro_si_version')}); this numpyro_si {__version__}"
                f" reads versions {', '.join(map(str, _READABLE_VERSIONS))}."
            )
        try:
            return _load(path, meta, archive, leaves_info, base)
        except _InvalidFile as error:
            raise ValueError(f"{path}: {error}") from None
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError,
                RuntimeError) as error:
            raise ValueError(
                f"{path} is not a readable numpyro_si flow (truncated or corrupted?): {error}"
            ) from None
        except (KeyError, TypeError, AttributeError, IndexError, RecursionError) as error:
            raise ValueError(f"{path}: malformed configuration: {error!r}") from None


def _load(path, meta, archive, leaves_info, base):
    unknown = set(meta) - _META_KEYS
    if unknown:
        raise _InvalidFile(
            f"unknown entries {sorted(unknown)} in meta.json (written by a newer numpyro_si?)."
        )
    dim = meta["dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise _InvalidFile(f"dim must be a positive integer, got {dim!r}.")
    if meta["base"] not in ("standard_normal", "custom"):
        raise _InvalidFile(f"unknown base {meta['base']!r}.")
    conditional = meta.get("conditional")
    context_dim = None
    if conditional is not None:
        _expect_keys(conditional, {"context_dim", "context_standardization"}, set(), "conditional")
        context_dim = conditional["context_dim"]
        if isinstance(context_dim, bool) or not isinstance(context_dim, int) or context_dim < 1:
            raise _InvalidFile(f"context_dim must be a positive integer, got {context_dim!r}.")
    validate_args = meta.get("validate_args")
    validate_args = {} if validate_args is None else validate_args
    _expect_keys(validate_args, set(), {"flow", "constrained"}, "validate_args")
    if not all(isinstance(value, bool) for value in validate_args.values()):
        raise _InvalidFile(f"validate_args must be true or false, got {validate_args}.")

    # the configuration, rebuilt abstractly by the constructors (which validate it)
    # what leaves.eqx can hold: its declared size, and no more than its compressed bytes can
    # inflate to (deflate expands at most ~1032-fold)
    size = leaves_info.file_size
    if leaves_info.compress_type == zipfile.ZIP_STORED:
        size = min(size, leaves_info.compress_size)
    else:
        size = min(size, 1032 * leaves_info.compress_size + 1024)
    decode = _Decoder(size, meta["format_version"])
    model_config = meta["model"]
    if meta["format_version"] < 3:
        model_config = _settings_from_version_2(model_config)
    if not isinstance(model_config, dict) or model_config.get("__class__") != "numpyro_si._FlowModel":
        raise _InvalidFile("the file does not hold an SIFlow model.")
    skeleton = decode(model_config, "flow")
    _check_networks(skeleton, dim, context_dim)
    trees = [("flow", skeleton)]
    if conditional is not None:
        context_standardization = decode(
            conditional["context_standardization"], "flow.context_standardization"
        )
        if context_standardization is not None and (
            not isinstance(context_standardization, Standardization)
            or tuple(context_standardization.shift.shape) != (context_dim,)
        ):
            raise _InvalidFile(
                f"flow.context_standardization does not map ({context_dim},) contexts."
            )
        trees.append(("flow.context_standardization", context_standardization))
    support = None if meta.get("support") is None else _decode_constraint(meta["support"])

    # the arrays: sizes first (nothing read or allocated for a file that cannot match), then each
    # array's header, then its data; then their values
    low, high = _leaves_bounds(tree for _, tree in trees)
    if not low <= leaves_info.file_size <= high:
        raise _InvalidFile(
            f"the stored arrays do not match the stored configuration: it describes arrays of"
            f" {low}-{high} bytes with their headers, leaves.eqx has {leaves_info.file_size}."
        )
    data = archive.read("leaves.eqx")
    loaded = _read_leaves(data, trees)
    for (where, _), tree in zip(trees, loaded, strict=True):
        _recheck(tree, where)
        _check_values(tree, where)
    model = loaded[0]
    context_standardization = loaded[1] if conditional is not None else None

    # the flow, by its constructors
    if meta["base"] == "custom":
        if base is None:
            raise ValueError(
                f"{path} was saved with a non-default base distribution; pass it again:"
                " load(path, base=...)."
            )
        if meta.get("base_check") is not None:
            _verify_base(meta["base_check"], base, path)
        flow_base = base
    else:
        if base is not None and not (
            is_standard_normal(base) and tuple(base.event_shape) == (dim,)
            and tuple(base.batch_shape) == ()
        ):
            raise ValueError(
                f"{path} was saved with the standard normal base; the base given to load is"
                " another distribution, which would change the flow's density. Load it without"
                " base=."
            )
        flow_base = None
    fields = model.fields
    options = dict(base=flow_base, dim=dim, settings=model.settings,
                   standardization=model.standardization)
    try:
        if conditional is not None:
            return ConditionalSIFlow(
                fields.interpolant, fields.velocity, fields.score, context_dim=context_dim,
                context_standardization=context_standardization, support=support, **options,
            )
        flow = SIFlow(fields.interpolant, fields.velocity, fields.score,
                      validate_args=validate_args.get("flow"), **options)
        if support is None:
            return flow
        return ConstrainedSIFlow(flow, support, validate_args=validate_args.get("constrained"))
    except (ValueError, TypeError) as error:
        raise _InvalidFile(f"invalid flow: {error}") from None
