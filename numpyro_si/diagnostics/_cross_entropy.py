"""Cross-entropy of a flow on held-out samples (MATH.md section 5).

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

from .._distribution import SIFlow

__all__ = ["CrossEntropy", "cross_entropy"]


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
    flow: SIFlow,
    samples: Float[ArrayLike, "... d"] | Any,
    *,
    var_names: Sequence[str] | None = None,
    batch_size: int | None = None,
) -> CrossEntropy:
    """The cross-entropy of `flow` on held-out `samples`: H = -mean log q(x) with its standard
    error (MATH.md section 5).

    On draws from a density rho1 this estimates H(rho1) + KL(rho1 || q): lower is better, and the
    gap to another flow's value on the same samples is a difference of KL divergences. `log_prob`
    is the flow's configured ODE likelihood (exact divergence by default; with
    `divergence="hutchinson"` every value is a stochastic estimate and the standard error includes
    that noise).

    **Arguments:**

    - `flow`: an `SIFlow` of dimension d.
    - `samples`: an array of shape `(N, d)` or `(chains, draws, d)` (leading axes are flattened),
      or an ArviZ `InferenceData` whose `posterior` group is read: scalar variables give one
      coordinate each and vector or matrix variables are flattened (C order), concatenated in
      the order of `var_names` into `(chains * draws, d)`.
    - `var_names`: for `InferenceData`, the posterior variables to use, in order (default: all
      data variables of the posterior group, in its order). Ignored for arrays.
    - `batch_size`: if given, `log_prob` is evaluated on chunks of this many points (bounds the
      memory of the vmapped solves); the result does not depend on it.

    **Returns:**

    A `CrossEntropy` with `mean`, `se`, `values` (per-sample NLL, shape `(N,)`), `n` and
    `n_failed`. Points whose `log_prob` is -inf (the ODE solve exhausted its step budget) are not
    dropped: `mean` becomes `inf`, `n_failed` counts them and a `RuntimeWarning` says so.

    **Raises:**

    `ValueError` for empty samples, a last axis that is not the flow's dimension, NaN or infinite
    draws, or an `InferenceData` without a posterior group or without the named variables;
    `TypeError` for anything that is neither an array nor an `InferenceData`.
    """
    if not isinstance(flow, SIFlow):
        raise TypeError(f"flow must be an SIFlow, got {type(flow).__name__}.")
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    points = as_sample_array(samples, flow.dim, var_names=var_names)
    log_prob = _log_prob_in_batches(flow, points, batch_size)
    values = -log_prob
    n = values.shape[0]
    finite = np.isfinite(np.asarray(values))
    n_failed = int(n - finite.sum())
    if n_failed:
        warnings.warn(
            f"cross_entropy: log_prob is not finite at {n_failed} of {n} points (an ODE solve that"
            " exhausted its step budget gives -inf); they are kept, so the mean is not finite."
            " Raise max_steps (ODESampler(max_steps=...) as likelihood_solver) or loosen rtol/atol;"
            " `values` shows which points failed.",
            RuntimeWarning,
            stacklevel=2,
        )
    mean = float(jnp.mean(values))
    se = float(jnp.std(values, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    if n_failed:
        se = float("nan") if math.isnan(mean) else float("inf")
    return CrossEntropy(mean=mean, se=se, values=values, n=n, n_failed=n_failed)


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def as_sample_array(
    samples: Any, dim: int, *, var_names: Sequence[str] | None = None, name: str = "samples"
) -> Float[Array, "n d"]:
    """Validate `samples` (an array or an ArviZ `InferenceData`) and return them as `(N, dim)`.

    Shared by the diagnostics that evaluate a flow on draws. Raises `ValueError` naming the
    problem (empty, wrong dimension, non-finite draws, missing posterior or variables).
    """
    if _is_inference_data(samples):
        points = _posterior_to_array(samples, var_names)
        source = f"the posterior of the InferenceData ({_describe_vars(samples.posterior)})"
    else:
        if isinstance(samples, dict | str | bytes) or samples is None:
            raise TypeError(
                f"{name} must be an array of shape (N, d) or (chains, draws, d), or an ArviZ"
                f" InferenceData; got {type(samples).__name__}."
            )
        points = np.asarray(samples)
        source = f"{name} of shape {points.shape}"
    if points.dtype == object or not (
        np.issubdtype(points.dtype, np.floating) or np.issubdtype(points.dtype, np.integer)
    ):
        raise TypeError(f"{name} must be numeric, got dtype {points.dtype}.")
    if points.ndim == 0 or points.shape[-1] != dim:
        got = "a scalar" if points.ndim == 0 else f"last axis {points.shape[-1]}"
        raise ValueError(
            f"Dimension mismatch: the flow has dimension {dim} but {source} has {got}; {name}"
            f" must have shape (N, {dim}) or (chains, draws, {dim})."
        )
    points = points.reshape(-1, dim)
    if points.shape[0] == 0:
        raise ValueError(f"{name} is empty: {source} holds no draws.")
    bad = ~np.all(np.isfinite(points), axis=-1)
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
def _log_prob(flow: SIFlow, points: Array) -> Array:
    return flow.log_prob(points)


def _log_prob_in_batches(flow: SIFlow, points: Array, batch_size: int | None) -> Array:
    """flow.log_prob on (N, d) points, in chunks of `batch_size` (the last chunk padded, so every
    chunk has the same shape and compiles once)."""
    n = points.shape[0]
    if batch_size is None or batch_size >= n:
        return _log_prob(flow, points)
    n_chunks = -(-n // batch_size)
    padded = jnp.concatenate(
        [points, jnp.broadcast_to(points[:1], (n_chunks * batch_size - n, points.shape[1]))]
    )
    chunks = [
        _log_prob(flow, padded[i * batch_size : (i + 1) * batch_size]) for i in range(n_chunks)
    ]
    return jnp.concatenate(chunks)[:n]
