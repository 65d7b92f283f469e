"""`SIFlow`: a stochastic-interpolant flow as a NumPyro distribution on R^d."""

from __future__ import annotations

import math
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray
from numpyro.distributions import constraints

from ._checks import (
    check_points,
    check_positive_int,
    check_real,
    check_sample_shape,
    reject_unknown,
)
from ._dynamics import Fields, as_eps, as_field
from ._flow import (
    FIXED_STEP_CANDIDATES,
    AbstractFlow,
    Standardization,
    _FlowModel,
)
from ._interpolants import AbstractInterpolant, AbstractOneSidedInterpolant, MirrorInterpolant
from ._solvers import (
    HutchinsonDivergence,
    ODESampler,
    SDESampler,
    SolveInfo,
    SolverSettings,
    map_points,
    ode_log_likelihood,
    ode_sample_log_likelihood,
    solve_ode,
    solve_sde,
)

__all__ = ["SIFlow", "Standardization", "RENAMED_FLOW_OPTIONS", "FAST_MAP_CANDIDATES"]

#: Midpoint step counts `SIFlow.with_fast_map` tries, fewest first.
FAST_MAP_CANDIDATES = (1, 2, 3, 4, 6, 8, 12, 16)

#: Constructor options that moved into `SolverSettings` (old name -> where it is now).
RENAMED_FLOW_OPTIONS = {
    name: f"a field of SolverSettings: pass settings=nsi.SolverSettings({new}=...)"
    for name, new in (("sampler", "sampler"), ("rtol", "rtol"), ("atol", "atol"),
                      ("divergence", "divergence"), ("likelihood_solver", "likelihood"))
} | {"eps": "the noise level of SDESampler: settings=nsi.SolverSettings(sampler=nsi.SDESampler(eps))"}


def _standard_normal(dim: int, dtype=None) -> dist.Distribution:
    dtype = dtype or jnp.zeros(()).dtype
    return dist.Normal(jnp.zeros(dim, dtype=dtype), jnp.ones(dim, dtype=dtype)).to_event(1)


def is_standard_normal(base: dist.Distribution) -> bool:
    """Whether `base` is the default base N(0, I) (an `Independent` standard `Normal`)."""
    if not (isinstance(base, dist.Independent) and isinstance(base.base_dist, dist.Normal)):
        return False
    normal = base.base_dist
    return bool(jnp.all(normal.loc == 0) and jnp.all(normal.scale == 1))


class SIFlow(AbstractFlow, dist.Distribution):
    """A stochastic-interpolant flow as a NumPyro distribution on R^d.

    `log_prob` solves the probability-flow ODE backward (docs/math.md section 4); `sample`
    transports base draws by the ODE or the SDE family (section 3). It is a pytree: pass it through
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
    - `settings`: a `SolverSettings` (sampler, likelihood solve, divergence, tolerances; default
      the ODE sampler, an adaptive Tsit5 likelihood with the exact divergence, rtol = atol = 1e-5).
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
        settings: SolverSettings | None = None,
        standardization: Standardization | None = None,
        validate_args: bool | None = None,
        **renamed,
    ):
        reject_unknown(renamed, "SIFlow", RENAMED_FLOW_OPTIONS)
        fields, base, dim = _checked_parts(interpolant, velocity, score, base, dim,
                                           standardization)
        settings = SolverSettings() if settings is None else settings
        if not isinstance(settings, SolverSettings):
            raise TypeError(f"settings must be a SolverSettings, got {settings!r}.")
        settings.check_fields(fields)
        self._flow_model = _FlowModel(fields, settings, standardization)
        self.base = base
        super().__init__(batch_shape=(), event_shape=(dim,), validate_args=validate_args)

    # -- the flow family ------------------------------------------------------------------------

    def _parts(self):
        return (self._flow_model, self.base, self.event_shape[0], self._validate_args)

    @classmethod
    def _from_parts(cls, model, base, dim, validate_args=None) -> SIFlow:
        flow = cls.__new__(cls)
        flow._flow_model = model
        flow.base = base
        dist.Distribution.__init__(flow, batch_shape=(), event_shape=(dim,),
                                   validate_args=validate_args)
        return flow

    @property
    def _model(self) -> _FlowModel:
        return self._flow_model

    def _with_model(self, model: _FlowModel) -> SIFlow:
        return self._from_parts(model, self.base, self.dim, self._validate_args)

    @property
    def dim(self) -> int:
        return self.event_shape[0]

    def with_fixed_step_likelihood(
        self, x: Float[ArrayLike, "n d"], *, max_error: float = 1e-2,
        candidates: tuple[int, ...] = FIXED_STEP_CANDIDATES,
    ) -> tuple[SIFlow, dict]:
        """A copy whose `log_prob` takes the fewest fixed solver steps that agree with this flow's
        adaptive solve within `max_error` nats at every point of `x`; returns `(flow, report)`.

        A fixed-step solve costs the same at every point and skips the step-size control, so on
        smooth flows it is several times cheaper than the adaptive default at the same accuracy
        (docs/benchmarks.md, the density benchmark's solver table); but it has no error control
        of its own, so it is only as good as the check made here. Pass points like those you will
        evaluate: held-out data, or draws of the flow itself. The candidates are tried in
        increasing order, each with this flow's likelihood solver (Tsit5 by default) and
        divergence, and only while they take fewer steps than the adaptive solve's largest step
        count on `x` (beyond that they would not be cheaper). If none qualifies, this flow is
        returned unchanged.

        `report`: `n_steps` (None if the adaptive solve was kept), `max_error` (of the chosen
        solve, in nats), `adaptive_steps` (largest over `x`; steps include rejected ones) and
        `errors` (the largest |difference| of every candidate tried).

        `ConstrainedSIFlow.with_fixed_step_likelihood(x)` (points of the support) and
        `ConditionalSIFlow.with_fixed_step_likelihood(theta, context)` (one context per point)
        make the same check.
        """
        if self.likelihood.n_steps is None:
            x = check_points(x, self.dim, finite=True, min_rows=1)
        return self._fewest_fixed_steps(
            lambda flow: _jitted_log_prob_with_info(flow, x), max_error, candidates
        )

    def with_fast_map(
        self, key: PRNGKeyArray | None = None, *, n: int = 1000, max_distance: float = 0.05,
        candidates: tuple[int, ...] = FAST_MAP_CANDIDATES,
    ) -> tuple[SIFlow, dict]:
        """A copy whose flow map (`sample`, `push_forward`, the latent route of a prior) takes
        the fewest fixed midpoint steps whose push-forward of `n` base draws stays within
        `max_distance` of this flow's adaptive map; returns `(flow, report)`.

        The distance is the root-mean-square displacement sqrt(mean |T_k(z) - T(z)|^2) over the
        draws, in the flow's standardised coordinates (the data's standard deviations): an upper
        bound (by the coupling through z) on the 2-Wasserstein distance between the fast map's
        push-forward and the adaptive one's, up to Monte Carlo error. `max_distance=0.05` allows
        a twentieth of a standard deviation. The copy is an exact model of its own (its map is a
        bijection, and `FlowReparam` uses that map: no density approximation is involved). If
        no candidate qualifies, this flow is returned unchanged. `report`: `n_steps` (None if
        kept), `distance` (of the chosen map) and `distances` (every candidate tried).
        """
        sampler = self.settings.sampler
        if not isinstance(sampler, ODESampler) or sampler.n_steps is not None:
            raise ValueError(
                "with_fast_map compares fixed-step maps with the adaptive ODE map: call it on a"
                f" flow whose sampler is the adaptive ODE sampler (this one's is {sampler!r})."
            )
        max_distance = check_real("max_distance", max_distance, low=0.0, low_open=True)
        n = check_positive_int("n", n)
        key = jax.random.key(0) if key is None else key
        interpolant = self.interpolant
        transport = eqx.filter_jit(
            lambda flow, z: flow.transport(z, interpolant.time_min, interpolant.time_max)
        )
        z = self.base.sample(key, (n,))
        reference = transport(self, z)
        distances = {}
        for n_steps in sorted(set(int(k) for k in candidates)):
            fast = self.with_settings(sampler=ODESampler(diffrax.Midpoint(), n_steps=n_steps))
            squared = jnp.sum((transport(fast, z) - reference) ** 2, axis=-1)
            distance = float(jnp.sqrt(jnp.mean(squared)))  # NaN fails the test
            distances[n_steps] = distance
            if distance <= max_distance:
                return fast, dict(n_steps=n_steps, distance=distance, distances=distances)
        return self, dict(n_steps=None, distance=0.0, distances=distances)

    def _check_points(self, x, name="x"):
        return check_points(x, self.dim, name)

    # -- likelihood ---------------------------------------------------------------------------

    def _flow_log_prob_one(self, y, t, index):
        fields, settings = self.fields, self.settings
        key = None
        if isinstance(settings.divergence, HutchinsonDivergence):
            key = jax.random.fold_in(settings.divergence.key, index)
        return ode_log_likelihood(
            fields.velocity, self.base.log_prob, y, t, fields.interpolant.time_min,
            method=settings.likelihood, divergence=settings.divergence, key=key,
            rtol=settings.rtol, atol=settings.atol,
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
        log_prob, info = map_points(lambda y, i: self._flow_log_prob_one(y, t, i), flat, indices)
        if standardization is not None:
            log_prob = log_prob + standardization.log_abs_det_forward()
        # NaN in, NaN out (NumPyro's convention), not the -inf of a failed solve; a point at
        # infinity has density zero
        log_prob = jnp.where(jnp.any(jnp.isinf(flat), axis=-1), -jnp.inf, log_prob)
        log_prob = jnp.where(jnp.any(jnp.isnan(flat), axis=-1), jnp.nan, log_prob)
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

    def _transport(self, key, x0) -> tuple[Array, SolveInfo]:
        """Move base draws x0 (n, d) to the data end with the configured sampler; raises (at run
        time) rather than return draws of a failed or non-finite solve."""
        fields, settings = self.fields, self.settings
        t0, t1 = fields.interpolant.time_min, fields.interpolant.time_max
        sampler = settings.sampler
        if isinstance(sampler, SDESampler):
            keys = jax.random.split(key, x0.shape[0])
            ys, info = map_points(
                lambda y, k: solve_sde(fields, y, k, t0, t1, sampler=sampler, data_end=t1),
                x0, keys,
            )
            return _checked_sde_draws(ys, info, sampler), info
        ys, info = map_points(
            lambda y: solve_ode(fields.velocity, y, t0, t1, method=sampler,
                                rtol=settings.rtol, atol=settings.atol),
            x0,
        )
        ys = eqx.error_if(
            ys, ~info.succeeded[:, None],
            "SIFlow.sample: the ODE solver exhausted its step budget (max_steps); increase"
            " ODESampler(max_steps=...) or loosen rtol/atol.",
        )
        return ys, info

    def sample(self, key: PRNGKeyArray, sample_shape: tuple[int, ...] = ()) -> Array:
        """Draws of shape `sample_shape + (d,)` by the configured sampler (ODE by default)."""
        return self.sample_with_info(key, sample_shape)[0]

    def sample_with_info(
        self, key: PRNGKeyArray, sample_shape: tuple[int, ...] = ()
    ) -> tuple[Array, SolveInfo]:
        """`sample` and the `SolveInfo` of each draw's solve, shape `sample_shape`: how many
        solver steps it took (with an adaptive SDE sampler, what the noise level cost)."""
        sample_shape = check_sample_shape(sample_shape)
        n = math.prod(sample_shape)
        key_base, key_path = jax.random.split(key)
        x0 = self.base.sample(key_base, (n,))
        y, info = self._transport(key_path, x0)
        if self.standardization is not None:
            y = self.standardization.inverse(y)
        info = jax.tree.map(lambda a: a.reshape(sample_shape), info)
        return y.reshape(sample_shape + (self.dim,)), info

    def sample_with_log_prob(
        self, key: PRNGKeyArray, sample_shape: tuple[int, ...] = ()
    ) -> tuple[Array, Array, SolveInfo]:
        """Draws, shape `sample_shape + (d,)`, and their log densities from ONE forward solve
        each: the probability-flow ODE from base draws with the divergence integrated along it
        (the likelihood's solver, divergence and tolerances), instead of a sampling solve and a
        backward `log_prob` solve. The log densities agree with `log_prob`'s at the draws to the
        solver's tolerance (both are the same ODE density, solved in opposite directions);
        -inf where a solve ran out of steps. The same `key` gives the same base draws as
        `sample`. Returns `(draws, log_prob, SolveInfo)`."""
        sample_shape = check_sample_shape(sample_shape)
        n = math.prod(sample_shape)
        key_base, _ = jax.random.split(key)
        x0 = self.base.sample(key_base, (n,))
        fields, settings = self.fields, self.settings
        interpolant = fields.interpolant

        def one(z, index):
            probe_key = None
            if isinstance(settings.divergence, HutchinsonDivergence):
                probe_key = jax.random.fold_in(settings.divergence.key, index)
            return ode_sample_log_likelihood(
                fields.velocity, self.base.log_prob, z, interpolant.time_min,
                interpolant.time_max, method=settings.likelihood, divergence=settings.divergence,
                key=probe_key, rtol=settings.rtol, atol=settings.atol,
            )

        y, log_prob, info = map_points(one, x0, jnp.arange(n))
        if self.standardization is not None:
            y = self.standardization.inverse(y)
            log_prob = log_prob + self.standardization.log_abs_det_forward()
        info = jax.tree.map(lambda a: a.reshape(sample_shape), info)
        return y.reshape(sample_shape + (self.dim,)), log_prob.reshape(sample_shape), info

    def _check_times(self, t0, t1) -> tuple[float, float]:
        """Both ends of a transport inside [time_min, time_max] (where the fields are defined)."""
        interpolant = self.interpolant
        low, high = interpolant.time_min, interpolant.time_max
        for name, t in (("t0", t0), ("t1", t1)):
            if isinstance(t, jax.core.Tracer):
                continue
            if getattr(t, "shape", None) == ():  # a concrete 0-d array
                t = float(t)
            check_real(name, t, low=low, high=high)
        return t0, t1

    def transport(
        self, x: Float[ArrayLike, "... d"], t0: float, t1: float
    ) -> Float[Array, "... d"]:
        """The ODE flow map X(t1) given X(t0) = x, in the fields' space (no standardization):
        t0 = 1, t1 = 0 encodes data to the base, t0 = 0, t1 = 1 decodes."""
        x = self._check_points(x)
        t0, t1 = self._check_times(t0, t1)
        settings = self.settings
        sampler = settings.sampler if isinstance(settings.sampler, ODESampler) else ODESampler()
        flat = x.reshape(-1, self.dim)
        ys, _ = map_points(
            lambda y: solve_ode(self.fields.velocity, y, t0, t1, method=sampler,
                                rtol=settings.rtol, atol=settings.atol),
            flat,
        )
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
        eps=1.0, n_steps: int | None = None,
    ) -> Float[Array, "... d"]:
        """SDE paths from X(t0) = x to t1, in the fields' space: the forward SDE (b + eps s) when
        t1 > t0, the backward SDE (b - eps s) when t1 < t0. Solved as `SDESampler(eps,
        n_steps)` solves it (adaptive steps with error control by default)."""
        x = self._check_points(x)
        t0, t1 = self._check_times(t0, t1)
        sampler = SDESampler(eps=as_eps(eps), n_steps=n_steps)
        flat = x.reshape(-1, self.dim)
        keys = jax.random.split(key, flat.shape[0])
        data_end = self.interpolant.time_max
        ys, info = map_points(
            lambda y, k: solve_sde(self.fields, y, k, t0, t1, sampler=sampler, data_end=data_end),
            flat, keys,
        )
        return _checked_sde_draws(ys, info, sampler).reshape(x.shape)

    def __repr__(self):
        return (
            f"SIFlow(dim={self.dim}, interpolant={type(self.interpolant).__name__},"
            f" sampler={type(self.sampler).__name__}, rtol={self.rtol}, atol={self.atol})"
        )


def _checked_sde_draws(ys: Array, info: SolveInfo, sampler: SDESampler) -> Array:
    """`ys`, or a run-time error naming eps when a solve ran out of steps or blew up."""
    if sampler.n_steps is None:
        ys = eqx.error_if(
            ys, ~info.succeeded[:, None],
            f"SDE sampling at eps = {sampler.eps} needed more than max_steps ="
            f" {sampler.max_steps} steps for a draw: the drift eps * score is stiff near the data"
            " end. Raise SDESampler(max_steps=...), loosen its rtol/atol, lower eps, or use a"
            " schedule that vanishes at the data end (nsi.DecayingEps).",
        )
    return eqx.error_if(
        ys, ~jnp.isfinite(ys),
        f"SDE sampling at eps = {sampler.eps} gave non-finite draws"
        + (f" with {sampler.n_steps} fixed steps (no error control): drop n_steps for adaptive"
           " steps, raise it, or lower eps." if sampler.n_steps is not None else "."),
    )


@eqx.filter_jit
def _jitted_log_prob_with_info(flow, x):
    return flow.log_prob_with_info(x)


def _infer_dim(dim, base, velocity, standardization):
    candidates = {}
    if dim is not None:
        candidates["dim"] = check_positive_int("dim", dim)
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


def _checked_parts(interpolant, velocity, score, base, dim, standardization):
    """The constructor's checks: `(Fields, base, dim)` or an error naming the problem."""
    if not isinstance(interpolant, AbstractInterpolant):
        raise TypeError(
            "interpolant must be a numpyro_si interpolant (AbstractInterpolant), got"
            f" {interpolant!r}."
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
    return Fields(interpolant, velocity, score), base, dim
