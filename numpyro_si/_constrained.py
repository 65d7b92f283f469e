"""Flows on constrained supports: an `SIFlow` in the unconstrained space pushed through
`biject_to(support)` (positive, bounded, simplex, ordered, positive-definite parameters)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jaxtyping import Array, ArrayLike, Float
from numpyro.distributions import constraints
from numpyro.distributions.transforms import ComposeTransform, Transform, biject_to
from numpyro.distributions.util import sum_rightmost

from ._checks import as_float_array, describe_rows
from ._distribution import FAST_MAP_CANDIDATES, SIFlow
from ._flow import FIXED_STEP_CANDIDATES, AbstractFlow, _FlowModel
from ._solvers import SolveInfo

__all__ = ["ConstrainedSIFlow", "to_unconstrained", "is_unconstrained", "check_support_fits"]


def is_unconstrained(support: constraints.Constraint | None) -> bool:
    """Whether `support` needs no transform (None, `real` or `real_vector`)."""
    return support is None or support is constraints.real or support is constraints.real_vector


def _check_bounds(support) -> None:
    """Finite-or-infinite, non-NaN bounds with lower < upper (an interval that is not empty)."""
    lower = getattr(support, "lower_bound", None)
    upper = getattr(support, "upper_bound", None)
    for name, bound in (("lower_bound", lower), ("upper_bound", upper)):
        if bound is not None and not isinstance(bound, jax.core.Tracer):
            if bool(np.any(np.isnan(np.asarray(bound, dtype=float)))):
                raise ValueError(f"support {support} has a NaN {name}: {bound}.")
    if (lower is not None and upper is not None and not isinstance(lower, jax.core.Tracer)
            and not isinstance(upper, jax.core.Tracer)):
        if not bool(np.all(np.asarray(lower, dtype=float) < np.asarray(upper, dtype=float))):
            raise ValueError(
                f"support {support} is empty: its interval needs lower_bound < upper_bound, got"
                f" {lower} and {upper}."
            )


def _transform_for(support) -> Transform:
    if not isinstance(support, constraints.Constraint):
        raise TypeError(
            f"support must be a numpyro.distributions.constraints.Constraint (e.g."
            f" constraints.positive), got {support!r}."
        )
    if support.is_discrete:
        raise ValueError(f"support {support} is discrete; a flow needs a continuous support.")
    if support.event_dim > 2:
        raise ValueError(f"support {support} has event_dim {support.event_dim}; at most 2.")
    _check_bounds(support)
    try:
        transform = biject_to(support)
    except NotImplementedError:
        raise ValueError(
            f"support {support} has no bijection from unconstrained space (biject_to); give one of"
            " NumPyro's continuous constraints, e.g. positive, interval(a, b), simplex."
        ) from None
    if transform.domain.event_dim > 1:
        raise ValueError(
            f"biject_to({support}) acts on an unconstrained space of event_dim"
            f" {transform.domain.event_dim}; a flow needs vectors."
        )
    return transform


def to_unconstrained(
    samples: ArrayLike, support: constraints.Constraint, name: str = "data"
) -> tuple[Float[Array, "N m"], Transform, tuple[int, ...]]:
    """Check that `samples` lie in `support` and map them to the unconstrained space.

    **Arguments:**

    - `samples`: draws of shape `(N,) + event_shape`: `(N, d)` for an elementwise support
      (positive, interval, ...) or a vector one (simplex, ordered_vector), `(N, k, k)` for a
      matrix support (positive_definite).
    - `support`: a continuous NumPyro constraint with a `biject_to` bijection.
    - `name`: how errors call the samples.

    **Returns:** `(unconstrained, transform, event_shape)`: the unconstrained draws `(N, m)`,
    `biject_to(support)` and the constrained event shape.

    Raises `ValueError` naming the rows outside the support, or on its boundary (where the
    unconstrained value would be infinite), and for supports a flow cannot serve.
    """
    transform = _transform_for(support)
    array = jnp.asarray(samples)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {array.dtype}.")
    event_rank = max(support.event_dim, 1)
    if array.ndim != 1 + event_rank or array.shape[0] == 0 or 0 in array.shape[1:]:
        expected = "(N, d)" if event_rank == 1 else "(N, k, k)"
        raise ValueError(
            f"{name} for support {support} must be a non-empty array of shape {expected}, got"
            f" {array.shape}."
        )
    event_shape = tuple(array.shape[1:])
    try:
        unconstrained_shape = transform.inverse_shape(event_shape)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"support {support} does not fit samples with event shape {event_shape}: {error}"
        ) from None
    if len(unconstrained_shape) != 1 or unconstrained_shape[0] < 1:
        raise ValueError(
            f"support {support} maps event shape {event_shape} to an unconstrained shape"
            f" {tuple(unconstrained_shape)}; a flow needs at least one unconstrained coordinate."
        )
    finite = np.asarray(jnp.all(jnp.isfinite(array.reshape(array.shape[0], -1)), axis=1))
    if not finite.all():
        raise ValueError(
            f"{name} contains NaN or inf in {describe_rows(~finite)}; remove or impute them."
        )
    inside = np.asarray(support.check(array))
    inside = inside.reshape(array.shape[0], -1).all(axis=1)
    if not inside.all():
        raise ValueError(
            f"{name} has {describe_rows(~inside)} outside the support {support}; fix or drop them,"
            " or choose another support."
        )
    unconstrained = transform.inv(array)
    mapped = np.asarray(jnp.all(jnp.isfinite(unconstrained), axis=1))
    if not mapped.all():
        raise ValueError(
            f"{name} has {describe_rows(~mapped)} on the boundary of the support {support}, where the"
            " unconstrained value is infinite; move them inside (e.g. clip by a small margin)."
        )
    return unconstrained, transform, event_shape


class ConstrainedSIFlow(AbstractFlow, dist.TransformedDistribution):
    """An `SIFlow` on the unconstrained space pushed through `biject_to(support)`: a NumPyro
    distribution on `support`, whose `log_prob` includes the log-Jacobian of the bijection.

    `fit(key, samples, support=...)` returns one; build one by hand from any flow on the
    unconstrained space. It is a pytree (pass it through `jax.jit`), a prior for NUTS / SVI (density
    route) and for `FlowReparam` (latent route: z ~ base, value = T(flow map(z))).

    **Arguments:**

    - `flow`: an `SIFlow` on R^m, the unconstrained space of `support`.
    - `support`: a continuous NumPyro constraint (e.g. `constraints.positive`,
      `constraints.interval(0, 1)`, `constraints.simplex`, `constraints.positive_definite`).

    `support` is the given constraint, made `independent` over the event when it is elementwise
    (positive, interval, ...), as for `dist.LogNormal(...).to_event(1)`. `dim` is m, the
    dimension of the unconstrained space the fields live in; `event_shape` is the support's.
    """

    def __init__(
        self, flow: SIFlow, support: constraints.Constraint, *, validate_args: bool | None = None
    ):
        if not isinstance(flow, SIFlow):
            raise TypeError(f"flow must be an SIFlow, got {type(flow).__name__}.")
        transform = check_support_fits(support, flow.dim)
        super().__init__(flow, transform, validate_args=validate_args)
        self.constraint = support

    # -- the flow family ------------------------------------------------------------------------

    def _parts(self):
        return (self.base_dist, self.transforms, self.constraint, self.batch_shape,
                self.event_shape, self._validate_args)

    @classmethod
    def _from_parts(cls, flow, transforms, support, batch_shape, event_shape, validate_args):
        new = cls.__new__(cls)
        new.base_dist, new.transforms, new.constraint = flow, transforms, support
        dist.Distribution.__init__(new, batch_shape, event_shape, validate_args=validate_args)
        return new

    @property
    def _model(self) -> _FlowModel:
        return self.base_dist._model

    def _with_model(self, model: _FlowModel) -> ConstrainedSIFlow:
        parts = self._parts()
        return self._from_parts(self.base_dist._with_model(model), *parts[1:])

    @property
    def dim(self) -> int:
        """m, the dimension of the unconstrained space the fields live in."""
        return self.base_dist.dim

    @property
    def flow(self) -> SIFlow:
        """The flow on the unconstrained space."""
        return self.base_dist

    @property
    def base(self) -> dist.Distribution:
        """The flow's base distribution rho0 (the latent route samples it)."""
        return self.base_dist.base

    @property
    def transform(self) -> Transform:
        """`biject_to(support)`, from the unconstrained space to the support."""
        transforms = self.transforms
        return transforms[0] if len(transforms) == 1 else ComposeTransform(transforms)

    @property
    def support(self) -> constraints.Constraint:
        extra = len(self.event_shape) - self.constraint.event_dim
        return self.constraint if extra == 0 else constraints.independent(self.constraint, extra)

    # -- density ---------------------------------------------------------------------------------

    def inverse_with_log_jacobian(self, value: ArrayLike) -> tuple[Array, Array]:
        """`(y, log_jacobian)`: the unconstrained images y of points of the support and
        log |det d y / d value|, what the density on the support adds to the flow's at y."""
        value = jnp.asarray(value)
        event_dim = len(self.event_shape)
        log_jacobian, y = 0.0, value
        for transform in reversed(self.transforms):  # as TransformedDistribution.log_prob
            x = transform.inv(y)
            batch_ndim = event_dim - transform.codomain.event_dim
            log_jacobian = log_jacobian - sum_rightmost(
                transform.log_abs_det_jacobian(x, y), batch_ndim
            )
            event_dim = transform.domain.event_dim + batch_ndim
            y = x
        return y, log_jacobian

    def log_prob_with_info(self, value: ArrayLike) -> tuple[Array, SolveInfo]:
        """`log_prob` and the `SolveInfo` of each point's likelihood solve (on its unconstrained
        image)."""
        value = as_float_array(value, "value")
        event_ndim = len(self.event_shape)
        if value.ndim < event_ndim or value.shape[value.ndim - event_ndim:] != self.event_shape:
            raise ValueError(
                f"value must have shape (...,) + {self.event_shape} (points of the support), got"
                f" {value.shape}."
            )
        if value.size == 0:  # an empty batch (NumPyro's sum_rightmost divides by the size)
            batch = value.shape[: value.ndim - event_ndim]
            return jnp.zeros(batch, value.dtype), self.base_dist.log_prob_with_info(
                jnp.zeros(batch + (self.dim,), value.dtype))[1]
        y, log_jacobian = self.inverse_with_log_jacobian(value)
        flow_log_prob, info = self.base_dist.log_prob_with_info(y)
        log_prob = log_jacobian + flow_log_prob
        # -inf outside the support and on its boundary (the same at both ends), NaN for NaN
        event_axes = tuple(range(value.ndim - event_ndim, value.ndim))
        inside = self.support.check(value) & jnp.all(jnp.isfinite(y), axis=-1)
        inside = inside & self._off_the_boundary(value)
        log_prob = jnp.where(inside, log_prob, -jnp.inf)
        return jnp.where(jnp.any(jnp.isnan(value), axis=event_axes), jnp.nan, log_prob), info

    def _off_the_boundary(self, value: Array) -> Array:
        """False at points on the support's boundary that NumPyro's closed checks accept and its
        inverse bijections clamp to finite points: a bound of an interval, a face (a zero
        coordinate) of the simplex."""
        strict = jnp.ones(value.shape, bool)
        lower = getattr(self.constraint, "lower_bound", None)
        upper = getattr(self.constraint, "upper_bound", None)
        if lower is not None:
            strict = strict & (value > lower)
        if upper is not None:
            strict = strict & (value < upper)
        if isinstance(self.constraint, type(constraints.simplex)):
            strict = strict & (value > 0)
        batch = value.shape[: value.ndim - len(self.event_shape)]
        return jnp.all(strict.reshape(batch + (-1,)), axis=-1)

    def log_prob(self, value: ArrayLike) -> Array:
        """log density on the support: the flow's at the unconstrained image plus the
        log-Jacobian of the inverse bijection; -inf where the solver ran out of steps."""
        return self.log_prob_with_info(value)[0]

    def sample_with_info(self, key, sample_shape: tuple[int, ...] = ()) -> tuple[Array, SolveInfo]:
        """`sample` and the `SolveInfo` of each draw's solve (on the unconstrained space), shape
        `sample_shape`."""
        y, info = self.flow.sample_with_info(key, sample_shape)
        return self.transform(y), info

    def sample_with_log_prob(self, key, sample_shape: tuple[int, ...] = ()):
        """`SIFlow.sample_with_log_prob` on the support: draws, their log densities (the
        flow's, plus the bijection's log-Jacobian) and the `SolveInfo`, from one forward solve
        each."""
        y, flow_log_prob, info = self.flow.sample_with_log_prob(key, sample_shape)
        value = self.transform(y)
        _, log_jacobian = self.inverse_with_log_jacobian(value)
        return value, log_jacobian + flow_log_prob, info

    def to_unconstrained(self, x: ArrayLike, name: str = "x") -> Array:
        """Points of the support, `(n,) + event_shape`, checked to lie inside it, mapped to the
        unconstrained space `(n, dim)` (see `to_unconstrained`)."""
        return to_unconstrained(x, self.constraint, name=name)[0]

    def push_forward(self, z: Float[ArrayLike, "... m"]) -> Array:
        """Base draws to the support: the flow map, then the bijection."""
        return self.transform(self.flow.push_forward(z))

    def pull_back(self, x: ArrayLike) -> Float[Array, "... m"]:
        """Points of the support to the base: the inverse bijection, then the inverse flow map."""
        return self.flow.pull_back(self.transform.inv(jnp.asarray(x)))

    def with_fixed_step_likelihood(
        self, x: ArrayLike, *, max_error: float = 1e-2,
        candidates: tuple[int, ...] = FIXED_STEP_CANDIDATES,
    ) -> tuple[ConstrainedSIFlow, dict]:
        """`SIFlow.with_fixed_step_likelihood` for a flow on a support: `x` are points of the
        support, shape `(n,) + event_shape`; the check runs on their unconstrained images (the
        log-Jacobian is the same for both solves, so the errors are those of this `log_prob`).
        Returns `(flow, report)`, the flow a `ConstrainedSIFlow` on the same support."""
        unconstrained = self.to_unconstrained(x)
        flow, report = self.flow.with_fixed_step_likelihood(
            unconstrained, max_error=max_error, candidates=candidates
        )
        return (self if flow is self.flow else self._with_model(flow._model)), report

    def with_fast_map(self, key=None, *, n: int = 1000, max_distance: float = 0.05,
                      candidates: tuple[int, ...] = FAST_MAP_CANDIDATES):
        """`SIFlow.with_fast_map` of the flow on the unconstrained space (distances measured
        there); returns `(flow, report)`, the flow a `ConstrainedSIFlow` on the same support."""
        flow, report = self.flow.with_fast_map(key, n=n, max_distance=max_distance,
                                               candidates=candidates)
        return (self if flow is self.flow else self._with_model(flow._model)), report

    def __repr__(self):
        return f"ConstrainedSIFlow({self.flow!r}, support={self.constraint})"


def check_support_fits(support: constraints.Constraint, dim: int) -> Transform:
    """`biject_to(support)`, after checking that a flow on R^dim can serve `support`."""
    transform = _transform_for(support)
    if transform.domain.event_dim == 1:
        try:
            transform.forward_shape((dim,))
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"A {dim}-dimensional flow does not fit support {support}: {error}"
            ) from None
    return transform
