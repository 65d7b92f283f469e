"""Input checks shared by training, the flows, diagnostics and inference: one home for each rule,
so every entry point refuses the same bad input with the same message.

Each check raises `TypeError` (wrong kind of value) or `ValueError` (right kind, bad value) naming
the argument and what was expected, and returns the value in the form the caller uses.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

__all__ = [
    "check_positive_int",
    "check_real",
    "check_data",
    "check_points",
    "describe_rows",
    "as_float_array",
    "reject_unknown",
    "check_sample_shape",
]


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """`value` as an int >= `minimum` (Python or NumPy integers; bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def check_real(
    name: str, value, *, low: float | None = None, high: float | None = None,
    low_open: bool = False, high_open: bool = False,
) -> float:
    """`value` as a finite float within the given bounds (open or closed); bools, strings, NaN
    and infinities are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}.")
    number = float(value)
    ok = math.isfinite(number)
    if ok and low is not None:
        ok = number > low if low_open else number >= low
    if ok and high is not None:
        ok = number < high if high_open else number <= high
    if not ok:
        lower = "" if low is None else f"{'(' if low_open else '['}{low}"
        upper = "" if high is None else f"{high}{')' if high_open else ']'}"
        where = (
            f" in {lower}, {upper}" if low is not None and high is not None
            else f" {'>' if low_open else '>='} {low}" if low is not None
            else f" {'<' if high_open else '<='} {high}" if high is not None else ""
        )
        raise ValueError(f"{name} must be a finite number{where}, got {value!r}.")
    return number


def describe_rows(bad: ArrayLike) -> str:
    """'3 row(s) (rows 4, 7, 9)': how many rows a boolean mask flags, and the first few."""
    rows = np.flatnonzero(np.asarray(bad))
    shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if rows.size > 5 else "")
    return f"{rows.size} row(s) (rows {shown})"


def as_float_array(x: ArrayLike, name: str) -> Array:
    """`x` as a JAX array of floating dtype: integers are cast to the default float dtype;
    booleans, strings and objects are refused."""
    array = np.asarray(x) if not isinstance(x, jax.Array) else x
    if array.dtype == object or array.dtype.kind in "bUSVc":
        raise TypeError(f"{name} must be a real numeric array, got dtype {array.dtype}.")
    array = jnp.asarray(array)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        array = array.astype(jnp.zeros(()).dtype)
    return array


def check_data(data: ArrayLike, name: str = "data", dim: int | None = None) -> Array:
    """Training samples: a finite floating array of shape (N, d) with N >= 1 (and d == `dim`).

    Raises `TypeError` for ArviZ objects and non-float dtypes (discrete data must be dequantised
    first), `ValueError` naming the shape or the rows with NaN / inf.
    """
    if hasattr(data, "posterior") and not hasattr(data, "shape"):
        raise TypeError(
            f"{name} looks like an ArviZ InferenceData; pass an array of draws of shape (N, d)."
        )
    array = jnp.asarray(data)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a floating-point array, got dtype {array.dtype}. Cast it to float"
            " (and dequantise discrete data first)."
        )
    if jnp.finfo(array.dtype).bits < 32:
        raise TypeError(
            f"{name} has dtype {array.dtype}, too coarse to train in (its range and resolution"
            " break the standardisation and the optimiser); cast it to float32 or float64."
        )
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (N, d), got shape {array.shape}.")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}); need at least one sample.")
    if array.shape[1] == 0:
        raise ValueError(f"{name} has zero dimensions (shape {array.shape}).")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}), got {array.shape}.")
    finite = np.asarray(jnp.all(jnp.isfinite(array), axis=1))
    if not finite.all():
        bad_rows = np.flatnonzero(~finite)
        raise ValueError(
            f"{name} contains NaN or inf in {bad_rows.size} row(s), first at row {bad_rows[0]};"
            " remove or impute them before fitting."
        )
    return array


def check_points(
    x: ArrayLike, dim: int, name: str = "x", *, what: str = "flow", finite: bool = False,
    min_rows: int = 0, nonempty: bool = False,
) -> Array:
    """Points of a `dim`-dimensional space: an array of shape `(..., dim)` cast to float.

    With `min_rows`, the shape must be `(n, dim)` with n >= `min_rows`; with `nonempty`, at
    least one point; with `finite`, NaN and inf are refused (only when the values are concrete,
    i.e. outside `jax.jit`).
    """
    array = as_float_array(x, name)
    if min_rows:
        if array.ndim != 2 or array.shape[0] < min_rows or array.shape[1] != dim:
            raise ValueError(
                f"{name} must have shape (n, {dim}) with n >= {min_rows}, got {array.shape}."
            )
    elif array.ndim == 0 or array.shape[-1] != dim:
        raise ValueError(
            f"{name} must have shape (..., {dim}) for this {dim}-dimensional {what}, got"
            f" {array.shape}."
        )
    if nonempty and array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}): no points to evaluate.")
    if finite and not isinstance(array, jax.core.Tracer):
        ok = np.asarray(jnp.all(jnp.isfinite(array.reshape(-1, dim)), axis=1))
        if not ok.all():
            raise ValueError(
                f"{name} contains NaN or infinite values in {describe_rows(~ok)}."
            )
    return array


def check_sample_shape(sample_shape) -> tuple[int, ...]:
    """A `sample_shape`: a tuple of non-negative ints."""
    try:
        shape = tuple(sample_shape)
    except TypeError:
        raise TypeError(f"sample_shape must be a tuple of ints, got {sample_shape!r}.") from None
    if any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0 for n in shape):
        raise ValueError(f"sample_shape must be a tuple of non-negative ints, got {shape!r}.")
    return tuple(int(n) for n in shape)


def reject_unknown(options: dict, where: str, renamed: dict[str, str], known=()) -> None:
    """Raise `TypeError` for keyword arguments `where` does not take, saying what a renamed
    option is called now (`renamed`: old name -> how to spell it today)."""
    for name in options:
        if name in renamed:
            raise TypeError(f"{where} got the option {name!r}, which is now {renamed[name]}.")
    if options:
        accepted = f" It accepts: {', '.join(sorted(known))}." if known else ""
        raise TypeError(f"{where} got unexpected option(s) {sorted(options)}.{accepted}")
