"""Log-likelihood of the SDE model by backward paths (docs/math.md section 4).

Let Y run backward from Y(1) = x with the reverse-time SDE dY = b_B dt + sqrt(2 eps) dW_bar,
b_B = b - eps s. Then, exactly when b and s are the true fields,

    log rho_1(x) = log rho0(Y(0)) - int_0^1 (div b_F + eps |s|^2)(t, Y(t)) dt
                   - int_0^1 sqrt(2 eps) s(t, Y(t)) . dW_bar,        b_F = b + eps s.

The Ito integral has mean zero. Keeping it ("pathwise") makes the estimator zero-variance in
continuous time for exact fields: it is a control variate. Dropping it ("expectation") leaves an
unbiased but noisier estimator. With learned fields both estimate the log-likelihood of the SDE
model (the density of the forward SDE sampler with the same eps), not of the ODE model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checks import check_points
from .._constrained import ConstrainedSIFlow
from .._distribution import SIFlow
from .._dynamics import AbstractEps, Fields, as_eps
from .._interpolants import AbstractOneSidedInterpolant
from ._cross_entropy import unconstrained_flow

__all__ = ["SDELikelihood", "sde_log_likelihood"]


class SDELikelihood(NamedTuple):
    """Monte Carlo estimates of log rho^_1(x) of the SDE model, one per point.

    **Fields:**

    - `estimate`: the mean over paths, shape `batch` (the leading shape of `x`).
    - `se`: its standard error over paths, std(values) / sqrt(n_paths), shape `batch`.
      It is the Monte Carlo error only; the time-discretisation bias is not included.
    - `values`: the per-path estimates, shape `batch + (n_paths,)`.
    """

    estimate: Float[Array, "..."]
    se: Float[Array, "..."]
    values: Float[Array, "... n_paths"]


def sde_log_likelihood(
    key: PRNGKeyArray,
    flow: SIFlow | ConstrainedSIFlow,
    x: Float[ArrayLike, "... d"],
    *,
    eps: float | Callable | AbstractEps,
    n_paths: int = 16,
    n_steps: int = 500,
    form: Literal["pathwise", "expectation"] = "pathwise",
) -> SDELikelihood:
    """Estimate log rho^_1(x) of the SDE model with noise level `eps` by backward SDE paths
    (docs/math.md section 4).

    Each path runs Euler-Maruyama backward from Y(time_max) = x to time_min on `n_steps` equal
    steps of the reverse-time SDE dY = (b - eps s) dt + sqrt(2 eps) dW_bar, and accumulates

        log rho0(Y(0)) - sum_k h (div b_F + eps |s|^2)(t_k, Y_k)
                       - sum_k sqrt(2 eps(t_k)) s(t_k, Y_k) . dW_k          ("pathwise")

    with the last sum dropped for `form="expectation"`. The same Gaussian increment dW_k moves the
    state and enters the Ito sum, which is evaluated at the start of each step (non-anticipating),
    so it has mean zero. div b_F is the exact trace of the Jacobian of b_F = b + eps s
    (`jax.jacfwd`, d forward passes): right for small d.

    **What it estimates.** With the true fields, log rho_1(x) for every eps (and the pathwise form
    has variance O(1/n_steps) per path). With learned fields, the log-density of the *SDE model*:
    the law of the forward SDE sampler dX = (b + eps s) dt + sqrt(2 eps) dW at the same eps, which
    differs from the ODE model's `flow.log_prob` when the fields are imperfect. Euler-Maruyama
    leaves a discretisation bias of order 1/n_steps that `se` does not include (it grows with the
    sharpness of the density; tests/diagnostics/test_sde_likelihood.py bounds it on a known
    mixture): measure it on a known case (`numpyro_si.oracle`) before trusting small
    differences. Even with exact fields the pathwise form is not zero-variance once discretised:
    its per-path spread is O(sqrt(1/n_steps)), far below the expectation form's.

    **Score.** The flow needs a score: a score field, or a one-sided interpolant whose score
    follows from the velocity. That score is singular at the data end, so for a velocity-only
    one-sided flow the first step (from time_max) is deterministic, an Euler step of the
    probability-flow ODE with its exact divergence, exactly as the SDE sampler's last step. This
    is the same estimator for the schedule eps(t) set to 0 on that step, so it stays consistent;
    with an eps(t) that vanishes at t = 1 (`DecayingEps`, `ZeroEndsEps`) it changes nothing.

    **Arguments:**

    - `key`: a JAX PRNG key; points and paths get independent Brownian increments.
    - `flow`: an `SIFlow` with a score (see above). Its standardization is applied to `x` and its
      log-Jacobian added, exactly as in `SIFlow.log_prob`.
    - `x`: points in data space, shape `(d,)` or `batch + (d,)`.
    - `eps`: the noise level, a float (constant), a callable eps(t) or an `AbstractEps`.
    - `n_paths`: backward paths per point (at least 2, for the standard error).
    - `n_steps`: Euler-Maruyama steps on [time_min, time_max].
    - `form`: `"pathwise"` (with the Ito-integral control variate, default) or `"expectation"`.

    **Returns:**

    An `SDELikelihood` with `estimate` and `se` of shape `batch` and `values` of shape
    `batch + (n_paths,)`.
    """
    log_jacobian = jnp.zeros(())
    if isinstance(flow, ConstrainedSIFlow):  # the SDE model's density on the support
        x = jnp.asarray(x)
        flow.to_unconstrained(x.reshape((-1, *flow.event_shape)))  # names points outside it
        x, log_jacobian = flow.inverse_with_log_jacobian(x)
    flow, _ = unconstrained_flow(flow)
    if form not in ("pathwise", "expectation"):
        raise ValueError(f"form must be 'pathwise' or 'expectation', got {form!r}.")
    if not (isinstance(n_paths, int) and n_paths >= 2):
        raise ValueError(
            f"n_paths must be an integer >= 2 (for the standard error), got {n_paths!r}."
        )
    if not (isinstance(n_steps, int) and n_steps >= 2):
        raise ValueError(f"n_steps must be an integer >= 2, got {n_steps!r}.")
    if not flow.fields.has_score:
        raise ValueError(
            "sde_log_likelihood needs the score: this flow has a two-sided interpolant and no"
            " score field. Give `score=` to SIFlow (fit with learn_score=True), or use a one-sided"
            " interpolant, whose score follows from the velocity."
        )
    eps = as_eps(eps)
    x = check_points(x, flow.dim, finite=True, nonempty=True)
    batch_shape = x.shape[:-1]
    flat = x.reshape(-1, flow.dim)
    # A traced flag, so both forms share one compilation.
    pathwise = jnp.asarray(form == "pathwise")
    values = _estimate(key, flow, flat, eps, n_paths, n_steps, pathwise)
    values = values.reshape(batch_shape + (n_paths,)) + jnp.asarray(log_jacobian)[..., None]
    estimate = jnp.mean(values, axis=-1)
    se = jnp.std(values, axis=-1, ddof=1) / jnp.sqrt(n_paths)
    return SDELikelihood(estimate=estimate, se=se, values=values)


@eqx.filter_jit
def _estimate(key, flow, points, eps, n_paths, n_steps, pathwise):
    """Per-path estimates, shape (n_points, n_paths)."""
    standardization = flow.standardization
    if standardization is not None:
        points = standardization.forward(points)
    interpolant = flow.interpolant
    # A velocity-only one-sided score is singular at the data end: first step deterministic.
    deterministic_first = flow.score is None and isinstance(
        interpolant, AbstractOneSidedInterpolant
    )
    one_path = _path_estimator(
        flow.fields, flow.base.log_prob, eps, interpolant.time_min, interpolant.time_max,
        n_steps, pathwise, deterministic_first,
    )
    keys = jax.random.split(key, (points.shape[0], n_paths))
    per_point = jax.vmap(lambda y, ks: jax.vmap(lambda k: one_path(y, k))(ks))
    values = per_point(points, keys)
    if standardization is not None:
        values = values + standardization.log_abs_det_forward()
    return values


def _path_estimator(
    fields: Fields, base_log_prob: Callable, eps: AbstractEps, time_min: float, time_max: float,
    n_steps: int, pathwise: Array, deterministic_first: bool,
) -> Callable:
    """The estimator along one backward Euler-Maruyama path, as `fn(x, key) -> scalar`."""
    h = (time_max - time_min) / n_steps

    def step(carry, k):
        y, accumulated, key = carry
        t = time_max - k * h
        eps_t = eps(t).astype(y.dtype)
        if deterministic_first:
            eps_t = jnp.where(k == 0, jnp.zeros_like(eps_t), eps_t)

        def forward_drift(y_):
            velocity = fields.b(t, y_)
            eps_score = fields.eps_score(t, y_, eps_t, velocity)
            return velocity + eps_score, (velocity, eps_score)

        jacobian, (velocity, eps_score) = jax.jacfwd(forward_drift, has_aux=True)(y)
        div_forward = jnp.trace(jacobian)
        positive = eps_t > 0
        safe_eps = jnp.where(positive, eps_t, 1.0)
        # eps |s|^2 = |eps s|^2 / eps, finite where eps vanishes (s may be singular there).
        eps_score_sq = jnp.where(positive, jnp.sum(eps_score**2) / safe_eps, 0.0)
        noise = jax.random.normal(jax.random.fold_in(key, k), y.shape, dtype=y.dtype)
        brownian = jnp.sqrt(h) * noise
        accumulated = accumulated - h * (div_forward + eps_score_sq)
        # sqrt(2 eps) s . dW = sqrt(2 / eps) (eps s) . dW, at the start of the step (Ito).
        ito = jnp.sqrt(2.0 / safe_eps) * jnp.dot(eps_score, brownian)
        accumulated = accumulated - jnp.where(pathwise & positive, ito, 0.0)
        drift_backward = velocity - eps_score
        y = y - h * drift_backward + jnp.sqrt(2.0 * eps_t) * brownian
        return (y, accumulated, key), None

    def one_path(x, key):
        init = (x, jnp.zeros((), dtype=x.dtype), key)
        (y0, accumulated, _), _ = jax.lax.scan(step, init, jnp.arange(n_steps))
        return base_log_prob(y0) + accumulated

    return one_path
