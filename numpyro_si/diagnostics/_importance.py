"""A flow against an unnormalised target pi (docs/math.md section 5): importance weights of flow
samples, the log normalising constant, the reverse KL, the importance-sampling ESS and the
Pareto-k diagnostic of PSIS; and the forward cross-entropy from draws of the target.

With y ~ q (the flow) and log w = log pi~(y) - log q(y), where pi = pi~ / Z:

    Z = E_q[w],   E_q[log w] = log Z - KL(q || pi)   (the ELBO),
    KL(q || pi) = log Z - E_q[log w]   (reverse KL, mode seeking),
    ESS = (sum w)^2 / sum w^2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import arviz
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._conditional import ConditionalSIFlow
from .._constrained import ConstrainedSIFlow
from .._distribution import SIFlow
from .._solvers import SDESampler

if TYPE_CHECKING:
    from ._cross_entropy import CrossEntropy

__all__ = ["ImportanceDiagnostics", "importance_diagnostics", "forward_cross_entropy"]


class ImportanceDiagnostics(NamedTuple):
    """How well a flow q matches an unnormalised target pi~ = Z pi, from n draws y ~ q.

    **Fields:**

    - `log_z`, `log_z_se`: log of mean(w), the importance-sampling estimate of log Z, and its
      standard error by the delta method, se(mean w) / mean w = sqrt((n / ESS - 1) / (n - 1)).
    - `elbo`, `elbo_se`: mean(log w) = log Z - KL(q || pi) estimated, i.e. the reverse KL up to
      the unknown constant log Z (a lower bound on log Z).
    - `reverse_kl`, `reverse_kl_se`: KL(q || pi) estimated as `log_z - elbo`; its standard error
      is the delta-method one of that joint estimator (per-sample influence
      w_i / mean(w) - log w_i). Slightly biased (log of a mean) and unreliable when `pareto_k` is
      large.
    - `ess`, `ess_fraction`: (sum w)^2 / sum w^2 and `ess / n`.
    - `pareto_k`: the generalised-Pareto shape of the largest weights from ArviZ's PSIS
      (`arviz.psislw`): below 0.5 the importance estimates are reliable, 0.5 to 0.7 usable with
      care, above 0.7 unreliable (the weights' variance is effectively infinite).
    - `log_weights`: the raw log w, shape `(n,)`.
    - `samples`: the flow draws y, shape `(n, d)`.
    - `n`: the number of draws.
    """

    log_z: float
    log_z_se: float
    elbo: float
    elbo_se: float
    reverse_kl: float
    reverse_kl_se: float
    ess: float
    ess_fraction: float
    pareto_k: float
    log_weights: Float[Array, " n"]
    samples: Float[Array, "n d"]
    n: int

    def __str__(self) -> str:
        return (
            f"log Z = {self.log_z:.4g} ± {self.log_z_se:.2g}, KL(q||pi) = {self.reverse_kl:.4g}"
            f" ± {self.reverse_kl_se:.2g}, ESS = {self.ess:.1f} ({100 * self.ess_fraction:.1f}%"
            f" of {self.n}), Pareto k = {self.pareto_k:.3g}"
        )


# ----------------------------------------------------------------------------------------------
# importance weights
# ----------------------------------------------------------------------------------------------


def importance_diagnostics(
    key: PRNGKeyArray,
    flow: SIFlow | ConstrainedSIFlow,
    log_target: Callable,
    n: int = 4096,
    *,
    batched: bool | None = None,
) -> ImportanceDiagnostics:
    """Importance weights of flow samples against an unnormalised log density.

    Draws y ~ q with the flow's probability-flow ODE (an SDE sampler is replaced by the ODE:
    `log_prob` is the ODE model's density, and the weights need the density the draws come
    from), evaluates log q(y) by `flow.log_prob` and log w = log_target(y) - log q(y), and
    summarises them (see `ImportanceDiagnostics`). docs/math.md section 5.

    Each draw costs one ODE solve to sample and one augmented solve for `log_prob`, so keep `n`
    moderate for large d.

    **Arguments:**

    - `key`: a `jax.random` key.
    - `flow`: an `SIFlow` on R^d, or a `ConstrainedSIFlow` (draws and `log_target` on its
      support, the density with its log-Jacobian), in the same space as `log_target` (for a
      NumPyro model, the unconstrained space: see `log_target_from_model`). A conditioned flow
      (`conditional.condition(y)`) is one of these.
    - `log_target`: log pi~, the unnormalised log density: a JAX function of one point (shape
      `event_shape`, e.g. `(d,)`, to a scalar; it is vmapped) or of a batch (`(n,) +
      event_shape` to `(n,)`), or the result of `log_target_from_model`. It may return -inf
      (zero weight) but not NaN or +inf.
    - `n`: the number of flow draws (at least 2).
    - `batched`: whether `log_target` takes a batch; by default it is tried on the batch first
      and on single points (vmapped) if that does not give shape `(n,)`.

    **Returns:** an `ImportanceDiagnostics`.

    **Raises:** `TypeError` if `log_target` is not callable; `ValueError` if it does not accept
    points of the flow's dimension, returns the wrong shape, or returns NaN / +inf; if a
    likelihood solve fails (log q = -inf); or if `n < 2`.
    """
    if isinstance(flow, ConditionalSIFlow):
        raise TypeError(
            "importance_diagnostics needs one density to draw from: condition the flow first,"
            " flow.condition(y)."
        )
    if not isinstance(flow, SIFlow | ConstrainedSIFlow):
        raise TypeError(
            f"flow must be an SIFlow or a ConstrainedSIFlow, got {type(flow).__name__}."
        )
    if not callable(log_target):
        raise TypeError(
            f"log_target must be a callable log density (one point (d,) -> scalar, or a batch"
            f" (n, d) -> (n,)), got {type(log_target).__name__}."
        )
    target_dim = getattr(log_target, "dim", None)
    if isinstance(target_dim, int) and target_dim != flow.dim:
        raise ValueError(
            f"Dimension mismatch: log_target is a density on R^{target_dim} but the flow is"
            f" {flow.dim}-dimensional."
        )
    if not (isinstance(n, int) and n >= 2):
        raise ValueError(f"n must be an integer >= 2, got {n!r}.")

    if isinstance(flow.sampler, SDESampler):
        flow = flow.with_settings(sampler="ode")
    samples, log_q = _sample_and_log_prob(key, flow, n)
    bad_q = ~np.isfinite(np.asarray(log_q))
    if bad_q.any():
        raise ValueError(
            f"flow.log_prob is not finite at {int(bad_q.sum())} of {n} flow draws (an ODE solve"
            " that ran out of steps gives -inf); raise the likelihood's step budget"
            " (settings=SolverSettings(likelihood=ODELikelihood(max_steps=...))) or loosen"
            " rtol/atol."
        )
    log_pi = evaluate_log_target(log_target, samples, batched=batched).astype(log_q.dtype)
    log_weights = log_pi - log_q
    return _summarise(log_weights, samples)


@eqx.filter_jit
def _sample_and_log_prob(key, flow, n):
    samples = flow.sample(key, (n,))
    return samples, flow.log_prob(samples)


def evaluate_log_target(
    log_target: Callable, points: Float[Array, "n d"], *, batched: bool | None = None
) -> Float[Array, " n"]:
    """`log_target` on a batch of points, whether it acts on one point or on a batch.

    Raises `ValueError` naming the expected shapes if it fails on points of this dimension,
    returns the wrong shape, or returns NaN / +inf.
    """
    n, event_shape = points.shape[0], tuple(points.shape[1:])
    one = "(" + ", ".join(map(str, event_shape)) + ("," if len(event_shape) == 1 else "") + ")"
    expected = (
        f"log_target must map one point of shape {one} to a scalar, or a batch of shape"
        f" (n, {', '.join(map(str, event_shape))}) to shape (n,)"
    )
    batch_error = point_error = None
    values = None
    if batched is None or batched:
        try:
            values = jnp.asarray(log_target(points))
        except Exception as error:  # noqa: BLE001 - reported below with the point-wise error
            batch_error = error
        if values is not None and values.shape != (n,):
            batch_error = ValueError(
                f"on a batch of shape {points.shape} it returned shape {values.shape}"
            )
            values = None
    if values is None and not batched:
        try:
            single = jax.eval_shape(log_target, points[0])
            if single.shape != ():
                point_error = ValueError(
                    f"on one point of shape {one} it returned shape {single.shape}"
                )
            else:
                values = jax.vmap(log_target)(points)
        except Exception as error:  # noqa: BLE001
            point_error = error
    if values is None:
        details = "; ".join(
            f"{kind}: {type(err).__name__}: {err}"
            for kind, err in (("batch", batch_error), ("one point", point_error))
            if err is not None
        )
        raise ValueError(
            f"{expected} (the flow's event shape is {event_shape}). It failed: {details}"
        ) from (point_error or batch_error)
    values = jnp.asarray(values)
    if not jnp.issubdtype(values.dtype, jnp.floating):
        values = values.astype(points.dtype)
    array = np.asarray(values)
    bad = np.isnan(array) | (array == np.inf)
    if bad.any():
        raise ValueError(
            f"log_target returned NaN or +inf at {int(bad.sum())} of {n} points (first at index"
            f" {int(np.argmax(bad))}); a log density may be -inf (zero density) but not NaN/+inf."
        )
    if not np.isfinite(array).any():
        raise ValueError(
            f"log_target is -inf at all {n} flow draws: the flow puts no mass where the target"
            " does (check that both live in the same space)."
        )
    return values


def _summarise(log_weights: Array, samples: Array) -> ImportanceDiagnostics:
    lw = np.asarray(log_weights, dtype=np.float64)
    n = lw.shape[0]
    log_sum = _logsumexp(lw)
    log_z = log_sum - math.log(n)
    log_ess = 2 * log_sum - _logsumexp(2 * lw)
    ess = math.exp(log_ess)
    # se(mean w) / mean w, with the ddof=1 variance of w: sqrt((n / ESS - 1) / (n - 1))
    relative_variance = max(n / ess - 1.0, 0.0) / (n - 1)
    log_z_se = math.sqrt(relative_variance)

    finite = np.isfinite(lw)
    if finite.all():
        elbo = float(np.mean(lw))
        elbo_se = float(np.std(lw, ddof=1) / math.sqrt(n))
        # delta method for log mean(w) - mean(log w): influence w_i / mean(w) - log w_i
        influence = np.exp(lw - log_z) - lw
        reverse_kl = log_z - elbo
        reverse_kl_se = float(np.std(influence, ddof=1) / math.sqrt(n))
    else:  # a draw outside the target's support: q is not absolutely continuous w.r.t. pi
        elbo, elbo_se, reverse_kl, reverse_kl_se = -math.inf, math.nan, math.inf, math.nan

    _, pareto_k = arviz.psislw(lw.copy())
    return ImportanceDiagnostics(
        log_z=float(log_z),
        log_z_se=float(log_z_se),
        elbo=elbo,
        elbo_se=elbo_se,
        reverse_kl=float(reverse_kl),
        reverse_kl_se=reverse_kl_se,
        ess=float(ess),
        ess_fraction=float(ess / n),
        pareto_k=float(pareto_k),
        log_weights=jnp.asarray(log_weights),
        samples=samples,
        n=n,
    )


def _logsumexp(values: np.ndarray) -> float:
    top = np.max(values)
    if not np.isfinite(top):
        return float(top)
    return float(top + np.log(np.sum(np.exp(values - top))))


# ----------------------------------------------------------------------------------------------
# forward cross-entropy
# ----------------------------------------------------------------------------------------------


def forward_cross_entropy(
    flow: SIFlow,
    draws: Float[ArrayLike, "n d"] | Any,
    *,
    var_names: Sequence[str] | None = None,
    batch_size: int | None = None,
) -> CrossEntropy:
    """The forward (mass-covering) cross-entropy -E_pi log q(x) from draws x ~ pi of the target
    (e.g. MCMC), with its standard error: H(pi) + KL(pi || q). docs/math.md section 5.

    The complement of `importance_diagnostics` (which measures KL(q || pi), the mode-seeking
    direction): a flow that misses a mode of pi has a large forward cross-entropy even when its
    importance weights look fine. This is `numpyro_si.diagnostics.cross_entropy`; MCMC draws are
    autocorrelated, so the standard error (which assumes independent draws) is optimistic unless
    they are thinned.

    **Arguments:**

    - `flow`: an `SIFlow` in the draws' space (for a NumPyro model, the unconstrained one:
      `log_target_from_model(...).unconstrain(mcmc.get_samples())`).
    - `draws`: an array `(n, d)` / `(chains, draws, d)` or an ArviZ `InferenceData`.
    - `var_names`, `batch_size`: as in `cross_entropy`.

    **Returns:** a `CrossEntropy` (`mean`, `se`, per-draw `values`).
    """
    from ._cross_entropy import cross_entropy

    return cross_entropy(flow, draws, var_names=var_names, batch_size=batch_size)
