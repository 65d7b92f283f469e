"""`SIFlow`: a stochastic-interpolant flow as a NumPyro distribution."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray
from numpyro.distributions import constraints

from ._dynamics import Fields, as_eps, as_field
from ._interpolants import AbstractInterpolant, AbstractOneSidedInterpolant, MirrorInterpolant
from ._solvers import (
    AbstractDivergence,
    AbstractSampler,
    ExactDivergence,
    HutchinsonDivergence,
    ODESampler,
    SDESampler,
    SolveInfo,
    ode_log_likelihood,
    solve_ode,
    solve_sde,
)

__all__ = ["SIFlow", "Standardization"]

# step counts `with_fixed_step_likelihood` tries, in this order
FIXED_STEP_CANDIDATES = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Standardization(eqx.Module):
    """The affine map y = (x - shift) / scale from data space to the space the fields live in.

    `fit` stores the training data's mean and standard deviation here so users never whiten by
    hand; `SIFlow` applies it (with its log-Jacobian) in `log_prob` and inverts it in `sample`.
    """

    shift: Float[Array, " d"]
    scale: Float[Array, " d"]

    def __check_init__(self):
        if self.shift.shape != self.scale.shape or self.shift.ndim != 1:
            raise ValueError(
                f"shift and scale must both have shape (d,), got {self.shift.shape} and"
                f" {self.scale.shape}."
            )

    @classmethod
    def from_data(cls, data: Float[Array, "n d"], min_scale: float = 1e-8) -> Standardization:
        """Per-coordinate mean and standard deviation of `data`."""
        shift = jnp.mean(data, axis=0)
        scale = jnp.maximum(jnp.std(data, axis=0), min_scale)
        return cls(shift, scale)

    def forward(self, x):
        return (x - self.shift) / self.scale

    def inverse(self, y):
        return self.shift + self.scale * y

    def log_abs_det_forward(self):
        """log |d forward / dx| (a constant)."""
        return -jnp.sum(jnp.log(self.scale))


def _standard_normal(dim: int, dtype=None) -> dist.Distribution:
    dtype = dtype or jnp.zeros(()).dtype
    return dist.Normal(jnp.zeros(dim, dtype=dtype), jnp.ones(dim, dtype=dtype)).to_event(1)


class _FlowModel(eqx.Module):
    """Everything of an `SIFlow` except the base distribution (kept apart: it is a NumPyro pytree)."""

    fields: Fields
    sampler: AbstractSampler
    divergence: AbstractDivergence
    likelihood_solver: ODESampler
    standardization: Standardization | None
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)


class _FlowModelAccessors:
    """Read-only views of the `_FlowModel` kept in `self._model` (SIFlow, ConditionalSIFlow)."""

    @property
    def interpolant(self) -> AbstractInterpolant:
        return self._model.fields.interpolant

    @property
    def velocity(self) -> Callable:
        return self._model.fields.velocity

    @property
    def score(self) -> Callable | None:
        return self._model.fields.score

    @property
    def fields(self) -> Fields:
        return self._model.fields

    @property
    def sampler(self) -> AbstractSampler:
        return self._model.sampler

    @property
    def standardization(self) -> Standardization | None:
        return self._model.standardization

    @property
    def rtol(self) -> float:
        return self._model.rtol

    @property
    def atol(self) -> float:
        return self._model.atol

    @property
    def divergence(self) -> AbstractDivergence:
        return self._model.divergence

    @property
    def likelihood_solver(self) -> ODESampler:
        return self._model.likelihood_solver


class SIFlow(dist.Distribution, _FlowModelAccessors):
    """A stochastic-interpolant flow as a NumPyro distribution on R^d.

    `log_prob` solves the probability-flow ODE backward (MATH.md section 4); `sample` transports
    base draws by the ODE or the SDE family (section 3). It is a pytree: pass it through
    `jax.jit` / `jax.vmap`, or use it as a prior, `numpyro.sample("theta", flow)`.

    **Arguments:**

    - `interpolant`: an `AbstractInterpolant` (not a `MirrorInterpolant`: it has no tractable base).
    - `velocity`: `velocity(t, x)` on ONE unbatched point `x` of shape `(d,)`, returning `(d,)`;
      an Equinox module or a plain function.
    - `score`: optional `score(t, x)`, needed by SDE sampling of two-sided models; a one-sided
      interpolant gets its score from the velocity.
    - `base`: rho0, any NumPyro distribution with event shape `(d,)` (default standard normal;
      a one-sided interpolant requires the default).
    - `dim`: the dimension d, needed only when neither `base` nor the velocity tells it.
    - `sampler`: `"ode"` (default), `"sde"`, or an `ODESampler` / `SDESampler`.
    - `eps`: noise level for `sampler="sde"` (a float, a callable eps(t) or an `AbstractEps`).
    - `rtol`, `atol`: tolerances of the adaptive solves (sampling and likelihood).
    - `divergence`: `"exact"` (default), `"hutchinson"`, or an `AbstractDivergence`.
    - `likelihood_solver`: an `ODESampler` giving the solver used in `log_prob`.
    - `standardization`: an optional `Standardization` from data space to the fields' space.

    A solve that exhausts its step budget makes `log_prob` return -inf at that point (see
    `log_prob_with_info` for the flag) and makes `sample` raise.
    """

    support = constraints.real_vector
    arg_constraints = {}
    reparametrized_params = []

    def __init__(
        self,
        interpolant: AbstractInterpolant,
        velocity: Callable,
        score: Callable | None = None,
        base: dist.Distribution | None = None,
        *,
        dim: int | None = None,
        sampler: str | AbstractSampler = "ode",
        eps: float | Callable | None = None,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        divergence: str | AbstractDivergence = "exact",
        likelihood_solver: ODESampler | None = None,
        standardization: Standardization | None = None,
        validate_args: bool | None = None,
    ):
        if not isinstance(interpolant, AbstractInterpolant):
            raise TypeError(
                f"interpolant must be a numpyro_si interpolant (AbstractInterpolant), got {interpolant!r}."
            )
        if isinstance(interpolant, MirrorInterpolant):
            raise ValueError(
                "A MirrorInterpolant has rho0 = rho1 and no tractable base density; it learns fields"
                " for denoising but cannot define an SIFlow."
            )
        interpolant.check_boundary_conditions()
        velocity = as_field(velocity, "velocity")
        if velocity is None:
            raise TypeError("velocity is required: a callable velocity(t, x).")
        score = as_field(score, "score")
        dim = _infer_dim(dim, base, velocity, standardization)
        if base is None:
            base = _standard_normal(dim)
        else:
            if isinstance(interpolant, AbstractOneSidedInterpolant):
                raise ValueError(
                    f"{type(interpolant).__name__} is one-sided: its base is N(0, I) by definition."
                    " Omit `base`, or use a two-sided interpolant for another base."
                )
            if not isinstance(base, dist.Distribution):
                raise TypeError(f"base must be a NumPyro distribution, got {base!r}.")
            if tuple(base.event_shape) != (dim,) or tuple(base.batch_shape) != ():
                raise ValueError(
                    f"base must have event shape ({dim},) and no batch shape, got event shape"
                    f" {tuple(base.event_shape)} and batch shape {tuple(base.batch_shape)}."
                    " Use .to_event(1) on a factorised distribution."
                )
        if standardization is not None and standardization.shift.shape != (dim,):
            raise ValueError(
                f"standardization has dimension {standardization.shift.shape}, expected ({dim},)."
            )
        fields = Fields(interpolant, velocity, score)
        self._model = _FlowModel(
            fields=fields,
            sampler=_as_sampler(sampler, eps, fields),
            divergence=_as_divergence(divergence),
            likelihood_solver=likelihood_solver or ODESampler(),
            standardization=standardization,
            rtol=float(rtol),
            atol=float(atol),
        )
        self.base = base
        super().__init__(batch_shape=(), event_shape=(dim,), validate_args=validate_args)

    # -- pytree: arrays are leaves, everything else (functions, options) is static -------------

    def tree_flatten(self):
        dynamic, static = eqx.partition(self._model, eqx.is_array)
        return (dynamic, self.base), (static, self.event_shape, self._validate_args)

    @classmethod
    def tree_unflatten(cls, aux_data, params):
        static, event_shape, validate_args = aux_data
        dynamic, base = params
        flow = cls._from_parts(eqx.combine(dynamic, static), base, event_shape)
        flow._validate_args = validate_args
        return flow

    @classmethod
    def _from_parts(cls, model: _FlowModel, base: dist.Distribution, event_shape) -> SIFlow:
        """An SIFlow from an already validated model and base, without the constructor's checks
        (which need concrete values): usable under `jax.jit`, e.g. to bind a traced context."""
        flow = cls.__new__(cls)
        flow._model = model
        flow.base = base
        dist.Distribution.__init__(
            flow, batch_shape=(), event_shape=tuple(event_shape), validate_args=False
        )
        return flow

    # -- accessors ------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.event_shape[0]

    def with_sampler(
        self, sampler: str | AbstractSampler | None = None, *, eps=None, rtol: float | None = None,
        atol: float | None = None, divergence: str | AbstractDivergence | None = None,
        likelihood_solver: ODESampler | None = None, **sampler_options,
    ) -> SIFlow:
        """A copy with other sampler or solver options (no retraining).

        `sampler` is `"ode"`, `"sde"` or a sampler object; `sampler_options` go to `ODESampler` /
        `SDESampler` (e.g. `n_steps=`); `eps` is the SDE noise level.
        """
        model = self._model
        if sampler is None and (eps is not None or sampler_options):
            sampler = "sde" if isinstance(model.sampler, SDESampler) or eps is not None else "ode"
            if isinstance(model.sampler, SDESampler) and eps is None:
                eps = model.sampler.eps
        new_sampler = (
            model.sampler if sampler is None
            else _as_sampler(sampler, eps, model.fields, **sampler_options)
        )
        new = eqx.tree_at(lambda m: m.sampler, model, new_sampler)
        if divergence is not None:
            new = eqx.tree_at(lambda m: m.divergence, new, _as_divergence(divergence))
        if likelihood_solver is not None:
            new = eqx.tree_at(lambda m: m.likelihood_solver, new, likelihood_solver)
        if rtol is not None or atol is not None:
            new = _FlowModel(
                fields=new.fields, sampler=new.sampler, divergence=new.divergence,
                likelihood_solver=new.likelihood_solver, standardization=new.standardization,
                rtol=float(rtol if rtol is not None else new.rtol),
                atol=float(atol if atol is not None else new.atol),
            )
        flow = copy.copy(self)
        flow._model = new
        return flow

    def with_fixed_step_likelihood(
        self, x: Float[ArrayLike, "n d"], *, max_error: float = 1e-2,
        candidates: tuple[int, ...] = FIXED_STEP_CANDIDATES,
    ) -> tuple[SIFlow, dict]:
        """A copy whose `log_prob` takes the fewest fixed solver steps that agree with this flow's
        adaptive solve within `max_error` nats at every point of `x`; returns `(flow, report)`.

        A fixed-step solve costs the same at every point and skips the step-size control, so on
        smooth flows it is several times cheaper than the adaptive default at the same accuracy
        (docs/guide.md, "Cost, and a faster solve"); but it has no error control of its own, so
        it is only as good as the check made here. Pass points like those you will evaluate:
        held-out data, or draws of the flow itself. The candidates are tried in increasing order,
        each with this flow's likelihood solver (Tsit5 by default) and divergence, and only while
        they take fewer steps than the adaptive solve's largest step count on `x` (beyond that
        they would not be cheaper). If none qualifies, this flow is returned unchanged.

        `report`: `n_steps` (None if the adaptive solve was kept), `max_error` (of the chosen
        solve, in nats), `adaptive_steps` (largest over `x`; steps include rejected ones) and
        `errors` (the largest |difference| of every candidate tried).

        `ConstrainedSIFlow.with_fixed_step_likelihood(x)` (points of the support) and
        `ConditionalSIFlow.with_fixed_step_likelihood(theta, context)` (one context per point)
        make the same check.
        """
        max_error, candidates = _check_fixed_step_request(
            self.likelihood_solver, max_error, candidates
        )
        x = self._check_points(x)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"x must have shape (n, {self.dim}) with n >= 1, got {x.shape}.")
        if not bool(jnp.all(jnp.isfinite(x))):
            raise ValueError("x contains NaN or infinite values.")
        return _fewest_fixed_steps(
            self, lambda flow: _jitted_log_prob_with_info(flow, x), max_error, candidates
        )

    # -- input checks -------------------------------------------------------------------------

    def _check_points(self, x, name="x"):
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.zeros(()).dtype)
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{name} must have shape (..., {self.dim}) for this {self.dim}-dimensional flow,"
                f" got {x.shape}."
            )
        return x

    # -- likelihood ---------------------------------------------------------------------------

    def _flow_log_prob_one(self, y, t, index):
        model = self._model
        interpolant = model.fields.interpolant
        key = None
        if isinstance(model.divergence, HutchinsonDivergence):
            key = jax.random.fold_in(model.divergence.key, index)
        return ode_log_likelihood(
            model.fields.velocity, self.base.log_prob, y, t, interpolant.time_min,
            sampler=model.likelihood_solver, divergence=model.divergence, key=key,
            rtol=model.rtol, atol=model.atol,
        )

    def log_prob_with_info(
        self, x: Float[ArrayLike, "... d"], t: float | None = None
    ) -> tuple[Float[Array, "..."], SolveInfo]:
        """`log_prob` and the `SolveInfo` (steps taken, success flag) of each point's solve.

        `t` (default: the data end) gives log rho_t at an intermediate time instead.
        """
        x = self._check_points(x)
        interpolant = self.interpolant
        t = interpolant.time_max if t is None else float(t)
        if not interpolant.time_min <= t <= interpolant.time_max:
            raise ValueError(
                f"t must lie in [{interpolant.time_min}, {interpolant.time_max}], got {t}."
            )
        batch_shape = x.shape[:-1]
        flat = x.reshape(-1, self.dim)
        standardization = self.standardization
        if standardization is not None:
            flat = standardization.forward(flat)
        indices = jnp.arange(flat.shape[0])
        log_prob, info = jax.vmap(lambda y, i: self._flow_log_prob_one(y, t, i))(flat, indices)
        if standardization is not None:
            log_prob = log_prob + standardization.log_abs_det_forward()
        return log_prob.reshape(batch_shape), jax.tree.map(lambda a: a.reshape(batch_shape), info)

    def log_prob(self, value: Float[ArrayLike, "... d"]) -> Float[Array, "..."]:
        """log rho^_1(x) by the probability-flow ODE with the configured divergence; -inf where
        the solver ran out of steps."""
        return self.log_prob_with_info(value)[0]

    def log_prob_at(self, x: Float[ArrayLike, "... d"], t: float) -> Float[Array, "..."]:
        """log rho^_t(x) at an intermediate time t (x in the fields' space at time t, mapped back
        through the standardization like data)."""
        return self.log_prob_with_info(x, t)[0]

    # -- sampling -----------------------------------------------------------------------------

    def _transport(self, key, x0):
        """Move base draws x0 (n, d) to the data end with the configured sampler."""
        model = self._model
        interpolant = model.fields.interpolant
        t0, t1 = interpolant.time_min, interpolant.time_max
        sampler = model.sampler
        if isinstance(sampler, SDESampler):
            keys = jax.random.split(key, x0.shape[0])
            return jax.vmap(
                lambda y, k: solve_sde(model.fields, y, k, t0, t1, sampler=sampler, data_end=t1)
            )(x0, keys)
        ys, info = jax.vmap(
            lambda y: solve_ode(model.fields.velocity, y, t0, t1, sampler=sampler,
                                rtol=model.rtol, atol=model.atol)
        )(x0)
        return eqx.error_if(
            ys, ~info.succeeded[:, None],
            "SIFlow.sample: the ODE solver exhausted its step budget (max_steps); increase"
            " ODESampler(max_steps=...) or loosen rtol/atol.",
        )

    def sample(self, key: PRNGKeyArray, sample_shape: tuple[int, ...] = ()) -> Array:
        """Draws of shape `sample_shape + (d,)` by the configured sampler (ODE by default)."""
        sample_shape = tuple(sample_shape)
        n = math.prod(sample_shape)
        key_base, key_path = jax.random.split(key)
        x0 = self.base.sample(key_base, (n,))
        y = self._transport(key_path, x0)
        if self.standardization is not None:
            y = self.standardization.inverse(y)
        return y.reshape(sample_shape + (self.dim,))

    def transport(
        self, x: Float[ArrayLike, "... d"], t0: float, t1: float
    ) -> Float[Array, "... d"]:
        """The ODE flow map X(t1) given X(t0) = x, in the fields' space (no standardization):
        t0 = 1, t1 = 0 encodes data to the base, t0 = 0, t1 = 1 decodes."""
        x = self._check_points(x)
        model = self._model
        sampler = model.sampler if isinstance(model.sampler, ODESampler) else ODESampler()
        flat = x.reshape(-1, self.dim)
        ys, _ = jax.vmap(
            lambda y: solve_ode(model.fields.velocity, y, t0, t1, sampler=sampler,
                                rtol=model.rtol, atol=model.atol)
        )(flat)
        return ys.reshape(x.shape)

    def push_forward(self, z: Float[ArrayLike, "... d"]) -> Float[Array, "... d"]:
        """The flow map T from the base to data space: the probability-flow ODE from
        `time_min` to `time_max`, then the inverse standardization. Differentiable (diffrax's
        default `RecursiveCheckpointAdjoint`), so a model can sample z from `self.base` and use
        T(z) (the latent route, see `FlowReparam`)."""
        interpolant = self.interpolant
        y = self.transport(z, interpolant.time_min, interpolant.time_max)
        return y if self.standardization is None else self.standardization.inverse(y)

    def pull_back(self, x: Float[ArrayLike, "... d"]) -> Float[Array, "... d"]:
        """The inverse flow map T^-1 from data space to the base (ODE solved backward)."""
        x = self._check_points(x)
        if self.standardization is not None:
            x = self.standardization.forward(x)
        interpolant = self.interpolant
        return self.transport(x, interpolant.time_max, interpolant.time_min)

    def sde_transport(
        self, key: PRNGKeyArray, x: Float[ArrayLike, "... d"], t0: float, t1: float,
        eps=1.0, n_steps: int = 256,
    ) -> Float[Array, "... d"]:
        """SDE paths from X(t0) = x to t1, in the fields' space: the forward SDE (b + eps s) when
        t1 > t0, the backward SDE (b - eps s) when t1 < t0."""
        x = self._check_points(x)
        sampler = SDESampler(eps=as_eps(eps), n_steps=n_steps)
        flat = x.reshape(-1, self.dim)
        keys = jax.random.split(key, flat.shape[0])
        data_end = self.interpolant.time_max
        ys = jax.vmap(
            lambda y, k: solve_sde(self.fields, y, k, t0, t1, sampler=sampler, data_end=data_end)
        )(flat, keys)
        return ys.reshape(x.shape)

    def __repr__(self):
        return (
            f"SIFlow(dim={self.dim}, interpolant={type(self.interpolant).__name__},"
            f" sampler={type(self.sampler).__name__}, rtol={self.rtol}, atol={self.atol})"
        )


@eqx.filter_jit
def _jitted_log_prob_with_info(flow, x):
    return flow.log_prob_with_info(x)


def _check_fixed_step_request(likelihood_solver, max_error, candidates):
    """with_fixed_step_likelihood's option checks; returns (max_error as float, step counts)."""
    if likelihood_solver.n_steps is not None:
        raise ValueError(
            "this flow's likelihood solve already has fixed steps"
            f" (n_steps={likelihood_solver.n_steps}); call with_fixed_step_likelihood on"
            " the flow with the adaptive solve it should be checked against."
        )
    try:
        max_error_ = float(max_error)
    except (TypeError, ValueError):
        max_error_ = math.nan
    if isinstance(max_error, bool) or not max_error_ > 0:
        raise ValueError(f"max_error must be a positive number of nats, got {max_error!r}.")
    if not candidates or any(int(k) != k or k < 1 for k in candidates):
        raise ValueError(f"candidates must be positive step counts, got {candidates!r}.")
    return max_error_, sorted(set(int(k) for k in candidates))


def _fewest_fixed_steps(flow, evaluate, max_error, candidates):
    """The search behind every `with_fixed_step_likelihood`: `flow` has an adaptive likelihood
    solve and `with_sampler(likelihood_solver=...)`; `evaluate(flow)` gives (log_prob, SolveInfo)
    at the caller's points. Returns `(flow or its fastest qualifying copy, report)`."""
    solver = flow.likelihood_solver
    reference, info = evaluate(flow)
    if not bool(jnp.all(info.succeeded)):
        raise ValueError(
            f"the adaptive solve ran out of steps (max_steps={solver.max_steps}) at"
            f" {int(jnp.sum(~info.succeeded))} of {info.succeeded.size} points; raise"
            " ODESampler(max_steps=...) or check those points before comparing against it."
        )
    adaptive_steps = int(jnp.max(info.num_steps))
    errors = {}
    for n_steps in candidates:
        if n_steps >= adaptive_steps:
            break
        fast = flow.with_sampler(likelihood_solver=ODESampler(solver.solver, n_steps=n_steps))
        values, _ = evaluate(fast)
        error = float(jnp.max(jnp.abs(values - reference)))  # NaN / inf fail the test
        errors[n_steps] = error
        if error <= max_error:
            return fast, dict(n_steps=n_steps, max_error=error, adaptive_steps=adaptive_steps,
                              errors=errors)
    return flow, dict(n_steps=None, max_error=0.0, adaptive_steps=adaptive_steps, errors=errors)


def _infer_dim(dim, base, velocity, standardization):
    candidates = {}
    if dim is not None:
        if not (isinstance(dim, int) and dim >= 1):
            raise ValueError(f"dim must be a positive integer, got {dim!r}.")
        candidates["dim"] = dim
    if base is not None and isinstance(base, dist.Distribution) and len(base.event_shape) == 1:
        candidates["base"] = base.event_shape[0]
    velocity_dim = getattr(velocity, "dim", None)
    if isinstance(velocity_dim, int):
        candidates["velocity"] = velocity_dim
    if standardization is not None:
        candidates["standardization"] = standardization.shift.shape[0]
    if not candidates:
        if base is not None:
            return None  # base's event shape is wrong; reported by the base check
        raise ValueError(
            "Cannot tell the dimension d: pass dim=d, or a base distribution with event shape (d,)."
        )
    values = set(candidates.values())
    if len(values) > 1:
        raise ValueError(f"Inconsistent dimensions: {candidates}.")
    return values.pop()


def _as_sampler(sampler, eps, fields: Fields, **options) -> AbstractSampler:
    if isinstance(sampler, AbstractSampler):
        if eps is not None or options:
            raise ValueError("Give options inside the sampler object, or pass sampler as a string.")
        chosen = sampler
    elif sampler == "ode":
        if eps is not None:
            raise ValueError("eps is an SDE option; use sampler='sde'.")
        chosen = ODESampler(**options)
    elif sampler == "sde":
        chosen = SDESampler(eps=as_eps(1.0 if eps is None else eps), **options)
    else:
        raise ValueError(f"sampler must be 'ode', 'sde' or a sampler object, got {sampler!r}.")
    if isinstance(chosen, SDESampler) and not fields.has_score:
        raise ValueError(
            "SDE sampling needs the score: give `score=` (or fit with a score), or use a one-sided"
            " interpolant, whose score follows from the velocity."
        )
    return chosen


def _as_divergence(divergence) -> AbstractDivergence:
    if isinstance(divergence, AbstractDivergence):
        return divergence
    if divergence == "exact":
        return ExactDivergence()
    if divergence == "hutchinson":
        return HutchinsonDivergence(jax.random.key(0))
    raise ValueError(
        f"divergence must be 'exact', 'hutchinson' or an AbstractDivergence, got {divergence!r}."
    )
