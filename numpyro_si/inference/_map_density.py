"""The exact density of a flow's fixed-step sampling map: global moves whose Metropolis-Hastings
ratio carries no solver-tolerance error (`proposal_density="map"`).

With a fixed-step ODE sampler (`ODESampler(solver, n_steps=K)`, e.g. the map `SIFlow.with_fast_map`
chooses) a draw is x = T_K(z), z ~ base, where T_K is K steps of an explicit Runge-Kutta scheme:
a smooth map of its own, not the ODE's flow map. Its density is, exactly,

    log q_K(x) = log p_base(z) - log |det dT_K/dz (z)|,   z = T_K^-1(x),

so a proposal made with T_K and scored with this formula is an exact independence proposal,
whatever the discretisation error of T_K against the ODE (that error only changes how well q_K
fits the target, i.e. the acceptance rate). Each step's Jacobian is computed in full (d
reverse-mode passes) and its log-determinant by an LU factorisation, so the density is exact up
to rounding. At a draw z is known; at any other point (a state that local moves reached) T_K is
inverted one step at a time, by damped Newton iterations from the step taken backward, to a
residual of rounding size per step, and the whole map's residual |T_K(z) - x| is checked.

T_K must be invertible for the formula to hold: K explicit steps of a smooth field are one-to-one
when each step moves points by less than their distance over the field's Lipschitz constant. A
map that folds shows a non-positive Jacobian determinant somewhere; a point where a step's
determinant is not positive or the inversion does not reach the residual gets log q = -inf and the move is
rejected ("failed"), which keeps detailed balance (see `independence`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._constrained import ConstrainedSIFlow
from .._distribution import SIFlow
from .._solvers import ODESampler, solve_ode

#: Newton iterations allowed per step when inverting the map at a point that is not a draw.
NEWTON_STEPS = 40
#: Fractions of the Newton step tried at each iteration (the best is taken).
DAMPING = 2.0 ** -jnp.arange(8)


def check_map_flow(flow) -> None:
    """Raise unless the flow's sampler is a fixed-step ODE map (what `"map"` scores)."""
    sampler = flow.settings.sampler
    if not isinstance(sampler, ODESampler) or sampler.n_steps is None:
        raise ValueError(
            "proposal_density='map' scores the flow's fixed-step sampling map exactly, but this"
            f" flow samples with {sampler!r}. Give it a fixed-step ODE sampler, e.g."
            " flow.with_fast_map(key)[0] or flow.with_settings(sampler=nsi.ODESampler("
            "diffrax.Midpoint(), n_steps=8))."
        )


def _inner(flow) -> SIFlow:
    return flow.flow if isinstance(flow, ConstrainedSIFlow) else flow


def _step_fn(flow: SIFlow):
    """Step k of T_K in the standardised space, `step(k, x)`, and its reverse (one step of the
    same scheme backward in time, the starting guess of its inversion)."""
    interpolant, settings = flow.interpolant, flow.settings
    sampler = settings.sampler
    one_step = ODESampler(sampler.solver, n_steps=1)
    times = jnp.linspace(interpolant.time_min, interpolant.time_max, sampler.n_steps + 1)

    def solve(x, ta, tb):
        return solve_ode(flow.fields.velocity, x, ta, tb, method=one_step, rtol=settings.rtol,
                         atol=settings.atol)[0]

    def step(k, x):
        return solve(x, times[k], times[k + 1])

    def reverse(k, x):
        return solve(x, times[k + 1], times[k])

    return step, reverse


def _jacobian(fn, x) -> tuple[Array, Array]:
    """fn(x) and its Jacobian (d reverse-mode passes: diffrax solves are reverse-differentiable)."""
    y, vjp = jax.vjp(fn, x)
    # row i of the Jacobian is the VJP with the i-th unit vector
    return y, jax.vmap(lambda row: vjp(row)[0])(jnp.eye(x.shape[-1], dtype=x.dtype))


def _forward(flow: SIFlow, z: Array) -> tuple[Array, Array, Array]:
    """T_K(z), whether every step's Jacobian determinant is positive, and log |det dT_K/dz|
    (the sum over the steps)."""
    step, _ = _step_fn(flow)

    def body(x, k):
        y, jacobian = _jacobian(lambda u: step(k, u), x)
        sign, log_abs_det = jnp.linalg.slogdet(jacobian)
        return y, (sign, log_abs_det)

    y, (signs, log_dets) = jax.lax.scan(body, z, jnp.arange(flow.settings.sampler.n_steps))
    return y, jnp.all(signs > 0), jnp.sum(log_dets)


def _tolerance(y: Array) -> Array:
    """The residual |S(x) - y| at which Newton's method stops on one step S: rounding size."""
    return 1e3 * jnp.finfo(y.dtype).eps * (1.0 + jnp.max(jnp.abs(y)))


def _map_tolerance(y: Array) -> Array:
    """The whole map's residual |T_K(z) - y| accepted: the steps' rounding-size residuals grow
    through the later steps' Jacobians, so the check is looser (square root of the machine
    epsilon, relative), yet far below the residual of an inversion that stopped short."""
    return jnp.sqrt(jnp.finfo(y.dtype).eps) * (1.0 + jnp.max(jnp.abs(y)))


def _inverse(flow: SIFlow, y: Array) -> Array:
    """T_K^-1(y), one step at a time from the data end: Newton's method on step k from its
    reverse step (each step is close to the identity, where Newton converges fast)."""
    step, reverse = _step_fn(flow)

    def invert(x_next, k):
        tolerance = _tolerance(x_next)

        def unconverged(carry):
            _, i, r = carry
            return (i < NEWTON_STEPS) & (r > tolerance) & jnp.isfinite(r)

        def newton(carry):
            # damped: of the Newton step's fractions 1, 1/2, ..., 1/128, the one with the
            # smallest residual (a full step can overshoot where the field bends sharply)
            x, i, _ = carry
            image, jacobian = _jacobian(lambda u: step(k, u), x)
            candidates = x - DAMPING[:, None] * jnp.linalg.solve(jacobian, image - x_next)
            residuals = jax.vmap(lambda u: jnp.linalg.norm(step(k, u) - x_next))(candidates)
            best = jnp.argmin(jnp.where(jnp.isnan(residuals), jnp.inf, residuals))
            return candidates[best], i + 1, residuals[best]

        guess = reverse(k, x_next)
        start = (guess, 0, jnp.linalg.norm(step(k, guess) - x_next))
        x, _, _ = jax.lax.while_loop(unconverged, newton, start)
        return x, None

    steps = jnp.arange(flow.settings.sampler.n_steps)[::-1]
    z, _ = jax.lax.scan(invert, y, steps)
    return z


def _to_data(flow, y: Array, log_q: Array) -> tuple[Array, Array]:
    """From the standardised space to the flow's points (and a support's, for a constrained
    flow), with the log-Jacobians of both maps."""
    inner = _inner(flow)
    if inner.standardization is not None:
        y = inner.standardization.inverse(y)
        log_q = log_q + inner.standardization.log_abs_det_forward()
    if isinstance(flow, ConstrainedSIFlow):
        value = flow.transform(y)
        _, log_jacobian = flow.inverse_with_log_jacobian(value)
        return value, log_q + log_jacobian
    return y, log_q


def map_sample_with_log_prob(
    key: PRNGKeyArray, flow
) -> tuple[Array, Float[Array, ""], Bool[Array, ""], int]:
    """One draw x = T_K(z) of the flow and its exact log q_K(x); returns `(x, log q, failed,
    steps)` (failed where a step's Jacobian determinant is not positive)."""
    inner = _inner(flow)
    z = inner.base.sample(key)
    y, positive, log_abs_det = _forward(inner, z)
    log_q = inner.base.log_prob(z) - log_abs_det
    failed = ~positive | ~jnp.isfinite(log_q)
    x, log_q = _to_data(flow, y, log_q)
    return x, jnp.where(failed, -jnp.inf, log_q), failed, inner.settings.sampler.n_steps


def map_log_density(flow, x: Array) -> tuple[Float[Array, ""], Bool[Array, ""]]:
    """log q_K(x) at any point x (shape `flow.event_shape`) and whether it failed: T_K inverted
    one step at a time (`_inverse`), then scored at the base point found."""
    inner = _inner(flow)
    if isinstance(flow, ConstrainedSIFlow):
        y, log_jacobian = flow.inverse_with_log_jacobian(x)
    else:
        y, log_jacobian = x, jnp.zeros((), x.dtype)
    y = y.reshape(inner.dim)
    log_std = jnp.zeros((), y.dtype)
    if inner.standardization is not None:
        y = inner.standardization.forward(y)
        log_std = inner.standardization.log_abs_det_forward()
    z = _inverse(inner, y)
    image, positive, log_abs_det = _forward(inner, z)
    log_q = inner.base.log_prob(z) - log_abs_det + log_std + log_jacobian
    # the whole map's residual: each step's inversion converged and the composition holds
    residual = jnp.max(jnp.abs(image - y))
    failed = ~(residual <= _map_tolerance(y)) | ~positive | ~jnp.isfinite(log_q)
    return jnp.where(failed, -jnp.inf, log_q), failed
