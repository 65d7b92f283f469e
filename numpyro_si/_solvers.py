"""diffrax solves for the dynamics: ODE transport, SDE transport and the ODE likelihood.

One path each, taking a drift (and for SDEs a noise level) plus a solver object, in the manner of
`diffrax.diffeqsolve`. Fields act on one point; batching is `jax.vmap` at the call site.
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Callable
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ._checks import check_positive_int, check_real, reject_unknown
from ._devices import mesh_size, points_axis, split_leading
from ._dynamics import AbstractEps, DecayingEps, Fields, as_eps


class SolveInfo(NamedTuple):
    """What a solve did: `num_steps` taken (accepted and rejected) and whether it `succeeded`
    (False when the step budget `max_steps` ran out)."""

    num_steps: Int[Array, ""]
    succeeded: Bool[Array, ""]


# ----------------------------------------------------------------------------------------------
# samplers: how to transport base draws to the target
# ----------------------------------------------------------------------------------------------


class AbstractSampler(eqx.Module):
    """How `SIFlow.sample` moves base draws to the target."""


class _ODESolve(eqx.Module):
    """How one ODE is solved: a diffrax solver, adaptive (with the flow's `rtol` / `atol`) or with
    `n_steps` fixed steps, and the step budget `max_steps` of an adaptive solve."""

    solver: diffrax.AbstractSolver = diffrax.Tsit5()
    n_steps: int | None = eqx.field(default=None, static=True)
    max_steps: int = eqx.field(default=4096, static=True)

    def __check_init__(self):
        if not isinstance(self.solver, diffrax.AbstractSolver):
            raise TypeError(f"solver must be a diffrax solver, got {self.solver!r}.")
        if self.n_steps is not None:
            check_positive_int("n_steps", self.n_steps)
        check_positive_int("max_steps", self.max_steps)


class ODESampler(_ODESolve, AbstractSampler):
    """Sample by the probability-flow ODE dX = b dt.

    **Arguments:**

    - `solver`: a diffrax ODE solver (default `diffrax.Tsit5()`, adaptive with the flow's
      `rtol`/`atol`).
    - `n_steps`: if given, `n_steps` fixed steps instead of adaptive stepping.
    - `max_steps`: the solver's step budget of an adaptive solve (diffrax's `max_steps`).
    """


class ODELikelihood(_ODESolve):
    """How `log_prob` solves the probability-flow ODE backward with the divergence (docs/math.md
    section 4).

    **Arguments:**

    - `solver`: a diffrax ODE solver (default `diffrax.Tsit5()`, adaptive with the flow's
      `rtol`/`atol`).
    - `n_steps`: if given, `n_steps` fixed steps instead of adaptive stepping (no error control;
      `SIFlow.with_fixed_step_likelihood` chooses and checks a count).
    - `max_steps`: the solver's step budget of an adaptive solve; a point whose solve exhausts it
      gets `log_prob` -inf and a failed `SolveInfo`.
    """


class SDESampler(AbstractSampler):
    """Sample by the forward SDE dX = (b + eps s) dt + sqrt(2 eps) dW from t = 0 to 1.

    By default the SDE is solved with error control: Heun's method (strong order 1 for this
    additive noise) with an embedded Euler error estimate, adaptive steps under a PID controller
    (`rtol`, `atol`) and a `diffrax.VirtualBrownianTree`, so that rejected steps see the same
    Brownian path. The drift eps * s is stiff near the data end when the modes are narrow and eps
    is large; the controller then takes small steps there, so every admissible eps gives draws
    within the tolerance (it costs more steps: `SIFlow.sample_with_info` reports them). A solve
    that needs more than `max_steps` steps raises an error naming eps, never returns wrong draws.

    The last `FINAL_ODE_SPAN` of time before the data end is solved by the probability-flow ODE
    (the score of a velocity-only one-sided model is singular at t = 1; the SDE and the ODE share
    their marginals, so switching is exact for exact fields).

    With `n_steps`, the SDE is solved instead by `n_steps` fixed steps of `solver` (default
    Euler-Maruyama), the last one a deterministic Euler step of the ODE: no error control, and a
    too large eps * step then returns wrong draws.

    **Arguments:**

    - `eps`: the noise level, a number, a callable eps(t) or an `AbstractEps` (see `as_eps`);
      default `DecayingEps(1.0)`, eps(t) = 1 - t, which vanishes at the data end.
    - `n_steps`: `None` (default) for error-controlled adaptive steps, or a number of fixed steps
      on [0, 1].
    - `solver`: a diffrax SDE solver for additive noise (default `diffrax.Heun()` when adaptive,
      which must then carry an error estimate, `diffrax.Euler()` with fixed steps).
    - `rtol`, `atol`: tolerances of the adaptive solve (on the fields' standardised scale).
    - `max_steps`: the adaptive solve's step budget per draw.
    """

    eps: AbstractEps = DecayingEps(1.0)
    n_steps: int | None = eqx.field(default=None, static=True)
    solver: diffrax.AbstractSolver = diffrax.Heun()
    rtol: float = eqx.field(default=1e-2, static=True)
    atol: float = eqx.field(default=1e-2, static=True)
    max_steps: int = eqx.field(default=16384, static=True)

    def __init__(self, eps: float | Callable | AbstractEps | None = None,
                 n_steps: int | None = None, solver: diffrax.AbstractSolver | None = None, *,
                 rtol: float = 1e-2, atol: float = 1e-2, max_steps: int = 16384):
        self.eps = DecayingEps(1.0) if eps is None else as_eps(eps)
        self.n_steps = None if n_steps is None else check_positive_int(
            "SDESampler n_steps", n_steps, minimum=2)
        if solver is None:
            solver = diffrax.Euler() if self.n_steps is not None else diffrax.Heun()
        self.solver = solver
        self.rtol = check_real("SDESampler rtol", rtol, low=0.0, low_open=True)
        self.atol = check_real("SDESampler atol", atol, low=0.0, low_open=True)
        self.max_steps = check_positive_int("SDESampler max_steps", max_steps, minimum=2)

    def __check_init__(self):
        # (n_steps, rtol, atol and max_steps are checked by __init__, the only way to make one)
        if self.n_steps is None and not isinstance(self.solver, diffrax.AbstractAdaptiveSolver):
            raise ValueError(
                f"SDESampler with adaptive steps (n_steps=None) needs a solver with an error"
                f" estimate (e.g. diffrax.Heun()), got {type(self.solver).__name__}; or give"
                " n_steps for fixed steps."
            )


# ----------------------------------------------------------------------------------------------
# divergence estimators
# ----------------------------------------------------------------------------------------------


class AbstractDivergence(eqx.Module):
    """How div b is computed in the likelihood."""

    @abc.abstractmethod
    def probe(self, key: PRNGKeyArray | None, x: Array):
        """Randomness drawn once per solve (None for an exact method)."""

    @abc.abstractmethod
    def __call__(self, fn: Callable, x: Array, probe) -> tuple[Array, Array]:
        """(fn(x), div fn(x))."""


class ExactDivergence(AbstractDivergence):
    """Trace of the Jacobian from d forward-mode JVPs (`jax.jacfwd`). Exact; cost grows with d."""

    def probe(self, key, x):
        return None

    def __call__(self, fn, x, probe):
        value, jvp_fn = jax.linearize(fn, x)
        basis = jnp.eye(x.shape[-1], dtype=x.dtype)
        jac_columns = jax.vmap(jvp_fn)(basis)  # row i = J e_i
        return value, jnp.trace(jac_columns)


class HutchinsonDivergence(AbstractDivergence):
    """Hutchinson's estimator E_v[v^T J v], one JVP per probe, the probes fixed along a path.

    Unbiased but stochastic: `log_prob` becomes a random estimate (deterministic for a given
    `key`). Never feed it to a Metropolis-Hastings ratio as if it were exact.

    **Arguments:**

    - `key`: the key the probes are drawn from (folded with each point's index).
    - `n_probes`: probes per point.
    - `noise`: "rademacher" or "gaussian".
    """

    key: PRNGKeyArray
    n_probes: int = eqx.field(default=1, static=True)
    noise: str = eqx.field(default="rademacher", static=True)

    def __check_init__(self):
        check_positive_int("HutchinsonDivergence n_probes", self.n_probes)
        if not (isinstance(self.key, jax.Array) and (
                jnp.issubdtype(self.key.dtype, jax.dtypes.prng_key)
                or (self.key.dtype == jnp.uint32 and self.key.shape == (2,)))):
            raise TypeError(
                "HutchinsonDivergence key must be a JAX PRNG key (jax.random.key(seed)), got"
                f" {self.key!r}."[:300]
            )
        if self.noise not in ("rademacher", "gaussian"):
            raise ValueError(f"noise must be 'rademacher' or 'gaussian', got {self.noise!r}.")

    def probe(self, key, x):
        shape = (self.n_probes, x.shape[-1])
        if self.noise == "rademacher":
            return jax.random.rademacher(key, shape, dtype=x.dtype)
        return jax.random.normal(key, shape, dtype=x.dtype)

    def __call__(self, fn, x, probe):
        value, jvp_fn = jax.linearize(fn, x)
        jv = jax.vmap(jvp_fn)(probe)
        return value, jnp.mean(jnp.sum(probe * jv, axis=-1))


# ----------------------------------------------------------------------------------------------
# the settings a flow carries
# ----------------------------------------------------------------------------------------------


class SolverSettings(eqx.Module):
    """How a flow samples and evaluates its density; none of it affects training.

    **Arguments:**

    - `sampler`: how `sample` draws: `"ode"` / `ODESampler()` (default, the probability-flow
      ODE) or `"sde"` / `SDESampler(eps, n_steps)` (the SDE family, docs/math.md section 3).
    - `likelihood`: how `log_prob` solves the ODE backward: `ODELikelihood()` (default: Tsit5,
      adaptive) or a fixed-step one.
    - `divergence`: `"exact"` / `ExactDivergence()` (default, the trace of the Jacobian) or
      `"hutchinson"` / `HutchinsonDivergence(key)` (a random estimate).
    - `rtol`, `atol`: tolerances of every adaptive solve (sampling and likelihood), positive.
    - `eps`: with `sampler="sde"`, its noise level (default `DecayingEps(1.0)`, eps(t) = 1 - t).

    Change them on a flow with `flow.with_settings(...)`.
    """

    sampler: AbstractSampler
    likelihood: ODELikelihood
    divergence: AbstractDivergence
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)

    def __init__(
        self, sampler: str | AbstractSampler = "ode", likelihood: ODELikelihood | None = None,
        divergence: str | AbstractDivergence = "exact", rtol: float = 1e-5, atol: float = 1e-5,
        *, eps: float | Callable | AbstractEps | None = None,
    ):
        self.sampler = _as_sampler(sampler, eps)
        self.likelihood = ODELikelihood() if likelihood is None else likelihood
        self.divergence = _as_divergence(divergence)
        self.rtol = check_real("rtol", rtol, low=0.0, low_open=True)
        self.atol = check_real("atol", atol, low=0.0, low_open=True)

    def __check_init__(self):
        if not isinstance(self.likelihood, ODELikelihood):
            raise TypeError(
                f"likelihood must be a numpyro_si ODELikelihood, got {self.likelihood!r}."
            )

    def replace(self, **changes) -> SolverSettings:
        """A copy with the given settings changed (the constructor's arguments; `None` leaves a
        setting as it is).

        `sampler` may be `"ode"` or `"sde"` (with `eps`, default `DecayingEps(1.0)`); `eps`
        alone changes the noise level of an SDE sampler; `divergence` may be `"exact"` or `"hutchinson"`.
        """
        changes = {name: value for name, value in changes.items() if value is not None}
        unknown = {name: value for name, value in changes.items() if name not in _SETTINGS}
        reject_unknown(unknown, "SolverSettings", RENAMED_SETTINGS, known=_SETTINGS)
        current = dict(sampler=self.sampler, likelihood=self.likelihood,
                       divergence=self.divergence, rtol=self.rtol, atol=self.atol)
        return SolverSettings(**(current | changes))

    def check_fields(self, fields: Fields) -> None:
        """Raise if these settings need something the fields lack (an SDE sampler needs a score);
        warn when a noise level that stays positive at the data end meets a score derived from
        the velocity."""
        if not isinstance(self.sampler, SDESampler):
            return
        if not fields.has_score:
            raise ValueError(
                "SDE sampling needs the score: give `score=` (or fit with a score), or use a"
                " one-sided interpolant, whose score follows from the velocity."
            )
        eps = self.sampler.eps
        if fields.score is None and _positive_at(eps, fields.interpolant.time_max):
            warnings.warn(
                f"SDE sampling with eps = {eps}, which does not vanish at the data end, and a"
                " score derived from the velocity: near the data end the velocity's error is"
                " amplified, which can pile samples onto the modes' centres (docs/benchmarks.md,"
                " 'SDE sampling'). Prefer a schedule that vanishes there (nsi.DecayingEps(eps0),"
                " the default) or learn a score (two-sided interpolant, learn_score=True).",
                UserWarning, stacklevel=4,
            )


def _positive_at(eps: AbstractEps, t: float) -> bool:
    try:
        return float(eps(t)) > 0.0
    except Exception:  # noqa: BLE001 - traced or not evaluable here: no warning
        return False


_SETTINGS = ("sampler", "eps", "likelihood", "divergence", "rtol", "atol")

#: Solver options of earlier versions that now live inside the settings' objects.
RENAMED_SETTINGS = {
    "n_steps": "a field of the sampler or likelihood object: sampler=nsi.ODESampler(n_steps=...)"
               " or nsi.SDESampler(eps, n_steps=...), likelihood=nsi.ODELikelihood(n_steps=...)",
    "max_steps": "a field of the sampler or likelihood object, e.g."
                 " likelihood=nsi.ODELikelihood(max_steps=...)",
    "solver": "a field of the sampler or likelihood object, e.g."
              " sampler=nsi.ODESampler(diffrax.Midpoint(), n_steps=2)",
    "likelihood_solver": "likelihood=nsi.ODELikelihood(...)",
}


def _as_sampler(sampler, eps) -> AbstractSampler:
    if isinstance(sampler, SDESampler) and eps is not None:
        return SDESampler(eps, n_steps=sampler.n_steps, solver=sampler.solver,
                          rtol=sampler.rtol, atol=sampler.atol, max_steps=sampler.max_steps)
    if isinstance(sampler, AbstractSampler):
        if eps is not None:
            raise ValueError(
                "eps is the noise level of SDE sampling; pass sampler='sde' (or an SDESampler)."
            )
        return sampler
    if not isinstance(sampler, str):
        raise TypeError(
            f"sampler must be 'ode', 'sde' or a numpyro_si sampler object, got {sampler!r}."
        )
    if sampler == "ode":
        if eps is not None:
            raise ValueError("eps is an SDE option; use sampler='sde'.")
        return ODESampler()
    if sampler == "sde":
        return SDESampler(eps)
    raise ValueError(f"sampler must be 'ode', 'sde' or a sampler object, got {sampler!r}.")


def _as_divergence(divergence) -> AbstractDivergence:
    if isinstance(divergence, AbstractDivergence):
        return divergence
    if not isinstance(divergence, str):
        raise TypeError(
            "divergence must be 'exact', 'hutchinson' or an AbstractDivergence, got"
            f" {divergence!r}."
        )
    if divergence == "exact":
        return ExactDivergence()
    if divergence == "hutchinson":
        return HutchinsonDivergence(jax.random.key(0))
    raise ValueError(
        f"divergence must be 'exact', 'hutchinson' or an AbstractDivergence, got {divergence!r}."
    )


# ----------------------------------------------------------------------------------------------
# solves
# ----------------------------------------------------------------------------------------------


def _step_controller(n_steps, rtol, atol, t0, t1):
    if n_steps is None:
        return diffrax.PIDController(rtol=rtol, atol=atol), None
    return diffrax.ConstantStepSize(), (t1 - t0) / n_steps


def _info(sol) -> SolveInfo:
    return SolveInfo(
        num_steps=sol.stats["num_steps"],
        succeeded=sol.result == diffrax.RESULTS.successful,
    )


def solve_ode(
    drift: Callable, x: Float[Array, " d"], t0: float, t1: float, *, method: _ODESolve,
    rtol: float, atol: float,
) -> tuple[Float[Array, " d"], SolveInfo]:
    """X(t1) for dX = drift(t, X) dt from X(t0) = x (t1 < t0 runs backward)."""
    controller, dt0 = _step_controller(method.n_steps, rtol, atol, t0, t1)
    term = diffrax.ODETerm(lambda t, y, args: drift(t, y))
    sol = diffrax.diffeqsolve(
        term, method.solver, t0, t1, dt0, x, stepsize_controller=controller,
        max_steps=method.max_steps if method.n_steps is None else method.n_steps,
        throw=False,
    )
    return sol.ys[-1], _info(sol)


#: The stretch of time next to the data end that adaptive SDE sampling solves by the
#: probability-flow ODE.
FINAL_ODE_SPAN = 1.0 / 256


def solve_sde(
    fields: Fields, x: Float[Array, " d"], key: PRNGKeyArray, t0: float, t1: float, *,
    sampler: SDESampler, data_end: float,
) -> tuple[Float[Array, " d"], SolveInfo]:
    """One SDE path from X(t0) = x to t1: forward (b + eps s) if t1 > t0, backward (b - eps s) if
    t1 < t0; returns `(X(t1), SolveInfo)`. Next to `data_end` the path follows the
    probability-flow ODE: over the last `FINAL_ODE_SPAN` by an adaptive solve (adaptive
    sampler), over the last step by a deterministic Euler step (fixed steps).

    Time is run forward internally (u = |t - t0|), so diffrax's Brownian motion always goes
    forward: dX = sign * drift(t0 + sign * u, X) du + sqrt(2 eps) dW_u.
    """
    sign = 1.0 if t1 > t0 else -1.0
    if sampler.n_steps is not None:
        return _solve_sde_fixed(fields, x, key, t0, t1, sign, sampler, data_end)
    span = abs(t1 - t0)
    last = min(FINAL_ODE_SPAN, span / 2)
    starts_at_data = sign < 0 and abs(t0 - data_end) < 1e-12
    ends_at_data = sign > 0 and abs(t1 - data_end) < 1e-12

    def ode(y, ta, tb):
        return solve_ode(fields.b, y, ta, tb, method=ODESampler(max_steps=sampler.max_steps),
                         rtol=sampler.rtol, atol=sampler.atol)

    y, info = x, SolveInfo(jnp.zeros((), jnp.int32), jnp.ones((), bool))
    if starts_at_data:
        y, info = ode(y, t0, t0 - last)
    u_start, u_end = (last if starts_at_data else 0.0), (span - last if ends_at_data else span)
    sol = _stochastic_solve(
        _sde_terms(fields, t0, sign, sampler.eps), sampler.solver, y, key, u_start, u_end,
        dt0=(u_end - u_start) / 64, tol=(u_end - u_start) / 2**16,
        controller=diffrax.PIDController(rtol=sampler.rtol, atol=sampler.atol),
        max_steps=sampler.max_steps, throw=False,
    )
    y, info = sol.ys[-1], _add_info(info, _info(sol))
    if ends_at_data:
        y, final = ode(y, t1 - last, t1)
        info = _add_info(info, final)
    return y, info


def _sde_terms(fields: Fields, t0: float, sign: float, eps: AbstractEps):
    """The drift (an `ODETerm`) and the diffusion (a function for a `ControlTerm`) in u."""
    drift = fields.forward_drift(eps) if sign > 0 else fields.backward_drift(eps)

    def drift_u(u, y, args):
        return sign * drift(t0 + sign * u, y)

    def diffusion_u(u, y, args):
        scale = jnp.sqrt(2.0 * eps(t0 + sign * u)) * jnp.ones_like(y)
        return lineax.DiagonalLinearOperator(scale)

    return diffrax.ODETerm(drift_u), diffusion_u


def _stochastic_solve(terms, solver, y, key, u_start, u_end, *, dt0, tol, controller, max_steps,
                      throw):
    """diffrax's solve of the SDE `terms` (drift term, diffusion function) on [u_start, u_end],
    driven by a `VirtualBrownianTree` of resolution `tol`."""
    brownian = diffrax.VirtualBrownianTree(
        u_start, u_end, tol=tol, shape=jax.ShapeDtypeStruct(y.shape, y.dtype), key=key
    )
    drift_term, diffusion_u = terms
    return diffrax.diffeqsolve(
        diffrax.MultiTerm(drift_term, diffrax.ControlTerm(diffusion_u, brownian)), solver,
        u_start, u_end, dt0, y, stepsize_controller=controller, max_steps=max_steps, throw=throw,
    )


def _add_info(a: SolveInfo, b: SolveInfo) -> SolveInfo:
    return SolveInfo(a.num_steps + b.num_steps, a.succeeded & b.succeeded)


def _solve_sde_fixed(fields, x, key, t0, t1, sign, sampler, data_end):
    """`solve_sde` with `n_steps` fixed steps; the step adjacent to `data_end` is a
    deterministic Euler step of the ODE."""
    n = sampler.n_steps
    h = abs(t1 - t0) / n
    span = abs(t1 - t0)
    terms = _sde_terms(fields, t0, sign, sampler.eps)

    def stochastic(y, u_start, u_end):
        return _stochastic_solve(
            terms, sampler.solver, y, key, u_start, u_end, dt0=h, tol=h / 4,
            controller=diffrax.ConstantStepSize(), max_steps=n, throw=True,
        ).ys[-1]

    def deterministic(y, t):
        return y + sign * h * fields.b(t, y)

    info = SolveInfo(jnp.asarray(n, jnp.int32), jnp.ones((), bool))
    if sign > 0 and abs(t1 - data_end) < 1e-12:
        y = stochastic(x, 0.0, span - h)
        return deterministic(y, t1 - h), info
    if sign < 0 and abs(t0 - data_end) < 1e-12:
        y = deterministic(x, t0)
        return stochastic(y, h, span), info
    return stochastic(x, 0.0, span), info


#: Points per batch in `log_prob`, `sample` and the transports: a larger batch runs as a
#: sequence of batches of this size (`jax.lax.map`), so memory stays bounded as the number of
#: points grows; smaller batches are one `jax.vmap`.
POINTS_PER_BATCH = 4096


def map_points(fn: Callable, *xs: Array):
    """`jax.vmap(fn)(*xs)` over the leading axis, in batches of `POINTS_PER_BATCH` points when
    there are more. A point's result does not depend on the batching beyond float rounding (as
    with any change of batch size, an adaptive solve can then take different steps, so results
    agree to the solver's tolerance, not bit for bit).

    Under a one-axis device mesh (`with jax.set_mesh(nsi.data_mesh()):`), the points are split over the
    mesh's devices (each maps its share in batches as above) and the results are laid out over
    them; a number of points that the devices do not divide is padded with copies of the first
    point, whose results are dropped (the results are then replicated). Fewer points than
    devices (e.g. one chain's point, when chains are split) run as without a mesh."""
    axis = points_axis()
    n, k = xs[0].shape[0], mesh_size()
    if axis is None or n < k:  # fewer points than devices: e.g. one chain's point under vmap
        return _map_local(fn, *xs)
    pad = (-n) % k
    if pad:
        xs = tuple(jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad,) + x.shape[1:])])
                   for x in xs)
    # (n, ...) -> (k, n / k, ...) with the device axis split; each device maps its share
    shares = [split_leading(x.reshape((k, -1) + x.shape[1:]), axis) for x in xs]
    out = jax.vmap(lambda *share: _map_local(fn, *share))(*shares)
    return jax.tree.map(lambda a: a.reshape((n + pad,) + a.shape[2:])[:n], out)


def _map_local(fn: Callable, *xs: Array):
    if xs[0].shape[0] <= POINTS_PER_BATCH:
        return jax.vmap(fn)(*xs)
    return jax.lax.map(lambda args: fn(*args), xs, batch_size=POINTS_PER_BATCH)


def ode_log_likelihood(
    velocity: Callable, base_log_prob: Callable, x: Float[Array, " d"], t: float, t_base: float,
    *, method: _ODESolve, divergence: AbstractDivergence, key: PRNGKeyArray | None,
    rtol: float, atol: float,
) -> tuple[Float[Array, ""], SolveInfo]:
    """log rho_t(x) = log rho0(X(t_base)) - integral_{t_base}^{t} div b dt, solving backward from
    X(t) = x (docs/math.md section 4). Returns -inf where the solver ran out of steps."""
    y_base, integral, info = _divergence_solve(velocity, x, t, t_base, method=method,
                                               divergence=divergence, key=key, rtol=rtol,
                                               atol=atol)
    # integral = int_t^{t_base} div b ds = -int_{t_base}^t div b ds
    log_prob = base_log_prob(y_base) + integral
    return jnp.where(info.succeeded, log_prob, -jnp.inf), info


def ode_sample_log_likelihood(
    velocity: Callable, base_log_prob: Callable, z: Float[Array, " d"], t_base: float, t: float,
    *, method: _ODESolve, divergence: AbstractDivergence, key: PRNGKeyArray | None,
    rtol: float, atol: float,
) -> tuple[Float[Array, " d"], Float[Array, ""], SolveInfo]:
    """A draw and its log density from one forward solve: X(t) from X(t_base) = z, and
    log rho_t(X(t)) = log rho0(z) - integral_{t_base}^{t} div b dt integrated along the same
    solve (docs/math.md section 4). The log density is -inf where the solver ran out of steps."""
    y, integral, info = _divergence_solve(velocity, z, t_base, t, method=method,
                                          divergence=divergence, key=key, rtol=rtol, atol=atol)
    log_prob = base_log_prob(z) - integral
    return y, jnp.where(info.succeeded, log_prob, -jnp.inf), info


def _divergence_solve(velocity, x, t0, t1, *, method, divergence, key, rtol, atol):
    """The ODE and the integral of div b from t0 to t1, one solve: `(X(t1), integral, info)`."""
    probe = divergence.probe(key, x)

    def augmented(s, state, args):
        y, _ = state
        value, div = divergence(lambda y_: velocity(s, y_), y, probe)
        return value, div

    y0 = (x, jnp.zeros((), dtype=x.dtype))
    controller, dt0 = _step_controller(method.n_steps, rtol, atol, t0, t1)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(augmented), method.solver, t0, t1, dt0, y0,
        stepsize_controller=controller,
        max_steps=method.max_steps if method.n_steps is None else method.n_steps,
        throw=False,
    )
    return sol.ys[0][-1], sol.ys[1][-1], _info(sol)
