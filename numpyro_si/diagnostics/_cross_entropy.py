"""Cross-entropy of a flow on held-out samples (docs/math.md section 5).

    H(rho1, rho^1) = -E_{x ~ rho1} log rho^1(x) = H(rho1) + KL(rho1 || rho^1)

estimated by the mean negative log-likelihood over the samples, with its Monte Carlo standard
error. The samples may be an array or the posterior group of an ArviZ `InferenceData` (then the
number is the forward cross-entropy of the flow against the posterior, the mass-covering one).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._conditional import ConditionalSIFlow
from .._constrained import ConstrainedSIFlow, to_unconstrained
from .._distribution import SIFlow

__all__ = ["CrossEntropy", "cross_entropy"]

#: The flows whose density on a point these diagnostics can evaluate without a context.
DensityFlow = SIFlow | ConstrainedSIFlow


class CrossEntropy(NamedTuple):
    """The cross-entropy -mean log q(x) of a flow q on samples x, in nats.

    **Fields:**

    - `mean`: the mean negative log-likelihood; `inf` (or `nan`) if any point failed.
    - `se`: its Monte Carlo standard error, std(values) / sqrt(n) (`nan` when n = 1).
    - `values`: the per-sample negative log-likelihoods, shape `(n,)`.
    - `n`: the number of samples.
    - `n_failed`: how many points had a non-finite log_prob (an ODE solve that ran out of steps
      gives -inf); they are kept in `mean`, never dropped.
    """

    mean: float
    se: float
    values: Float[Array, " n"]
    n: int
    n_failed: int = 0

    def __str__(self) -> str:
        failed = f", {self.n_failed} failed" if self.n_failed else ""
        return f"{self.mean:.4g} ± {self.se:.2g} nats (N={self.n}{failed})"

    def __repr__(self) -> str:
        return f"CrossEntropy({self})"


def cross_entropy(
    flow: SIFlow | ConstrainedSIFlow | ConditionalSIFlow,
    samples: Float[ArrayLike, "... d"] | Any,
    *,
    context: Float[ArrayLike, "N k"] | None = None,
    var_names: Sequence[str] | None = None,
    batch_size: int | None = None,
) -> CrossEntropy:
    """The cross-entropy of `flow` on held-out `samples`: H = -mean log q(x) with its standard
    error (docs/math.md section 5).

    On draws from a density rho1 this estimates H(rho1) + KL(rho1 || q): lower is better, and the
    gap to another flow's value on the same samples is a difference of KL divergences. `log_prob`
    is the flow's configured ODE likelihood (exact divergence by default; with
    `divergence="hutchinson"` every value is a stochastic estimate and the standard error includes
    that noise).

    **Arguments:**

    - `flow`: an `SIFlow`; a `ConstrainedSIFlow` (samples are points of its support and the
      density includes the log-Jacobian); a conditioned flow (`conditional.condition(y)`, one of
      the two); or a `ConditionalSIFlow` with `context`, one context row per sample (the
      amortised cross-entropy -mean log q(x_i | y_i)).
    - `samples`: an array of shape `(N,) + event_shape` or `(chains, draws) + event_shape`
      (leading axes are flattened), or an ArviZ `InferenceData` whose `posterior` group is read:
      scalar variables give one coordinate each and vector or matrix variables are flattened
      (C order), concatenated in the order of `var_names`.
    - `context`: for a `ConditionalSIFlow` only, shape `(N, k)`.
    - `var_names`: for `InferenceData`, the posterior variables to use, in order (default: all
      data variables of the posterior group, in its order). Ignored for arrays.
    - `batch_size`: if given, `log_prob` is evaluated on chunks of this many points (bounds the
      memory of the vmapped solves); the result does not depend on it.

    **Returns:**

    A `CrossEntropy` with `mean`, `se`, `values` (per-sample NLL, shape `(N,)`), `n` and
    `n_failed`. Points whose `log_prob` is -inf (the ODE solve exhausted its step budget) are not
    dropped: `mean` becomes `inf`, `n_failed` counts them and a `RuntimeWarning` says so.

    **Raises:**

    `ValueError` for empty samples, a shape that is not the flow's event shape, NaN or infinite
    draws, draws outside a constrained flow's support, a context that does not match, or an
    `InferenceData` without a posterior group or without the named variables; `TypeError` for
    anything that is neither an array nor an `InferenceData`, and for a flow it cannot serve.
    """
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    arrays = density_inputs(flow, samples, context=context, var_names=var_names)
    values = -_log_prob_in_batches(flow, arrays, batch_size)
    n = values.shape[0]
    finite = np.isfinite(np.asarray(values))
    n_failed = int(n - finite.sum())
    if n_failed:
        warnings.warn(
            f"cross_entropy: log_prob is not finite at {n_failed} of {n} points"
            f" ({_why_not_finite(flow, arrays, ~finite)}); they are kept, so the mean is not"
            " finite; `values` shows which points.",
            RuntimeWarning,
            stacklevel=2,
        )
    mean = float(jnp.mean(values))
    se = float(jnp.std(values, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    if n_failed:
        se = float("nan") if math.isnan(mean) else float("inf")
    return CrossEntropy(mean=mean, se=se, values=values, n=n, n_failed=n_failed)


def _why_not_finite(flow, arrays, bad) -> str:
    """Which of the points with a non-finite log_prob had a failed solve, and which a density
    that is itself not finite."""
    if isinstance(flow, ConditionalSIFlow):
        return ("a likelihood solve that exhausted its step budget, or a point where the density"
                " is not finite")
    points = arrays[0][np.asarray(bad)]
    _, info = eqx.filter_jit(lambda flow, x: flow.log_prob_with_info(x))(flow, points)
    failed = int(np.sum(~np.asarray(info.succeeded)))
    reasons = []
    if failed:
        reasons.append(
            f"{failed} likelihood solve(s) exhausted the step budget: raise it"
            " (settings=SolverSettings(likelihood=ODELikelihood(max_steps=...))) or loosen"
            " rtol/atol"
        )
    if failed < points.shape[0]:
        reasons.append(
            f"{points.shape[0] - failed} point(s) where the solve succeeded but the density is"
            " not finite (far from the data, or outside the support)"
        )
    return "; ".join(reasons)


def unconstrained_flow(flow, data: Any = None, name: str = "data"):
    """`(SIFlow, data)`: a flow whose fields these diagnostics read, with `data` (points of a
    `ConstrainedSIFlow`'s support, checked) mapped to its unconstrained space. A
    `ConditionalSIFlow` is refused: condition it first."""
    if isinstance(flow, ConstrainedSIFlow):
        return flow.flow, None if data is None else flow.to_unconstrained(data, name=name)
    if isinstance(flow, SIFlow):
        return flow, data
    if isinstance(flow, ConditionalSIFlow):
        raise TypeError(
            "this diagnostic reads the fields of one density: condition the ConditionalSIFlow"
            " first (flow.condition(y))."
        )
    raise TypeError(
        f"flow must be an SIFlow or a ConstrainedSIFlow, got {type(flow).__name__}."
    )


def density_inputs(
    flow, samples: Any, *, context=None, var_names=None, name: str = "samples"
) -> tuple[Array, ...]:
    """The arguments of `flow.log_prob` for draws `samples` (checked): `(points,)`, or
    `(points, context)` for a `ConditionalSIFlow`; points of shape `(N,) + event_shape`."""
    if isinstance(flow, ConditionalSIFlow):
        if context is None:
            raise ValueError(
                "a ConditionalSIFlow's density needs a context: pass context= (one row per"
                " sample), or condition the flow first (flow.condition(y))."
            )
    elif not isinstance(flow, DensityFlow):
        raise TypeError(
            "flow must be a numpyro_si flow (an SIFlow, a ConstrainedSIFlow or a"
            f" ConditionalSIFlow), got {type(flow).__name__}."
        )
    elif context is not None:
        raise ValueError(f"context is only for a ConditionalSIFlow, not a {type(flow).__name__}.")
    points = as_sample_array(samples, tuple(flow.event_shape), var_names=var_names, name=name)
    support = flow.support if isinstance(flow, ConditionalSIFlow) else (
        flow.constraint if isinstance(flow, ConstrainedSIFlow) else None
    )
    if support is not None:
        to_unconstrained(points, support, name=name)  # names the draws outside the support
    if context is None:
        return (points,)
    context = flow._check_context(context, batched=True)
    if context.shape != (points.shape[0], flow.context_dim):
        raise ValueError(
            f"context must have shape ({points.shape[0]}, {flow.context_dim}), one row per"
            f" sample, got {context.shape}."
        )
    return points, context


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def as_sample_array(
    samples: Any, event_shape: int | tuple[int, ...], *, var_names: Sequence[str] | None = None,
    name: str = "samples",
) -> Array:
    """Validate `samples` (an array or an ArviZ `InferenceData`) and return them as
    `(N,) + event_shape` (an int `event_shape` d means `(d,)`).

    Shared by the diagnostics that evaluate a flow on draws. Raises `ValueError` naming the
    problem (empty, wrong shape, non-finite draws, missing posterior or variables).
    """
    event_shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
    size = math.prod(event_shape)
    if _is_inference_data(samples):
        points = _posterior_to_array(samples, var_names)
        source = f"the posterior of the InferenceData ({_describe_vars(samples.posterior)})"
        trailing = points.shape[-1:]
        expected = (size,)
    else:
        if isinstance(samples, dict | str | bytes) or samples is None:
            raise TypeError(
                f"{name} must be an array of shape (N, d) or (chains, draws, d), or an ArviZ"
                f" InferenceData; got {type(samples).__name__}."
            )
        points = np.asarray(samples)
        source = f"{name} of shape {points.shape}"
        trailing = points.shape[max(points.ndim - len(event_shape), 0):]
        expected = event_shape
    if points.dtype == object or not (
        np.issubdtype(points.dtype, np.floating) or np.issubdtype(points.dtype, np.integer)
    ):
        raise TypeError(f"{name} must be numeric, got dtype {points.dtype}.")
    if points.ndim < len(expected) or trailing != expected:
        if len(event_shape) == 1:
            got = "a scalar" if points.ndim == 0 else f"last axis {points.shape[-1]}"
            raise ValueError(
                f"Dimension mismatch: the flow has dimension {size} but {source} has {got};"
                f" {name} must have shape (N, {size}) or (chains, draws, {size})."
            )
        raise ValueError(
            f"Shape mismatch: the flow's draws have shape {event_shape} but {source} does not"
            f" end in it; {name} must have shape (N, *{event_shape})."
        )
    points = points.reshape((-1, *event_shape))
    if points.shape[0] == 0:
        raise ValueError(f"{name} is empty: {source} holds no draws.")
    bad = ~np.all(np.isfinite(points.reshape(points.shape[0], -1)), axis=-1)
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(
            f"{name} contains NaN or infinite values in {int(bad.sum())} of {points.shape[0]}"
            f" draws (first at flattened index {first}); drop or fix them first."
        )
    points = jnp.asarray(points)
    if not jnp.issubdtype(points.dtype, jnp.floating):
        points = points.astype(jnp.zeros(()).dtype)
    return points


def _is_inference_data(samples) -> bool:
    try:
        import arviz
    except ImportError:  # pragma: no cover - arviz is a dependency
        return False
    return isinstance(samples, arviz.InferenceData)


def _describe_vars(group) -> str:
    names = list(group.data_vars)
    shapes = ", ".join(
        f"{v} {tuple(group[v].shape[2:])}" if group[v].ndim > 2 else str(v) for v in names
    )
    return f"variables: {shapes}" if names else "no variables"


def _posterior_to_array(idata, var_names) -> np.ndarray:
    if "posterior" not in idata.groups():
        raise ValueError(
            f"The InferenceData has no posterior group (groups: {list(idata.groups())});"
            " cross-entropy diagnostics read the draws from `posterior`."
        )
    posterior = idata.posterior
    available = list(posterior.data_vars)
    if var_names is None:
        var_names = available
    elif isinstance(var_names, str):
        var_names = [var_names]
    var_names = list(var_names)
    missing = [v for v in var_names if v not in available]
    if missing:
        raise ValueError(
            f"The InferenceData posterior has no variable(s) {missing}; it has {available}."
        )
    if not var_names:
        raise ValueError(f"No posterior variables selected (the posterior has {available}).")
    columns = []
    for name in var_names:
        array = posterior[name]
        if array.dims[:2] != ("chain", "draw"):
            raise ValueError(
                f"Posterior variable {name!r} has dims {array.dims};"
                " expected ('chain', 'draw', ...)."
            )
        values = np.asarray(array.values)
        columns.append(values.reshape(values.shape[0] * values.shape[1], -1))
    return np.concatenate(columns, axis=-1)


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------


@eqx.filter_jit
def _log_prob(flow, *arrays: Array) -> Array:
    return flow.log_prob(*arrays)


def _log_prob_in_batches(flow, arrays: tuple[Array, ...], batch_size: int | None) -> Array:
    """flow.log_prob(*arrays) (each with a leading axis of N rows), in chunks of `batch_size`
    (the last chunk padded, so every chunk has the same shape and compiles once)."""
    n = arrays[0].shape[0]
    if batch_size is None or batch_size >= n:
        return _log_prob(flow, *arrays)
    n_chunks = -(-n // batch_size)

    def padded(array):
        fill = jnp.broadcast_to(array[:1], (n_chunks * batch_size - n, *array.shape[1:]))
        return jnp.concatenate([array, fill])

    arrays = tuple(padded(array) for array in arrays)
    chunks = [
        _log_prob(flow, *(array[i * batch_size : (i + 1) * batch_size] for array in arrays))
        for i in range(n_chunks)
    ]
    return jnp.concatenate(chunks)[:n]
