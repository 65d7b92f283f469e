"""Conditional flows p(theta | y): fields f(t, x, y) that take a context vector, learned from
simulated pairs (theta, y) (amortised inference); `condition(y_obs)` gives an `SIFlow`."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from ._checks import as_float_array, check_points, check_sample_shape, reject_unknown
from ._constrained import ConstrainedSIFlow, check_support_fits, to_unconstrained
from ._distribution import RENAMED_FLOW_OPTIONS, SIFlow, _checked_parts
from ._dynamics import Fields
from ._flow import FIXED_STEP_CANDIDATES, AbstractFlow, Standardization, _FlowModel
from ._interpolants import AbstractInterpolant
from ._solvers import SolverSettings

__all__ = ["ConditionedField", "ConditionalSIFlow"]


class ConditionedField(eqx.Module):
    """A context-taking field `network(t, x, context)` with its context bound: a field (t, x).

    **Arguments:**

    - `network`: an Equinox module called as `network(t, x, context)` (e.g.
      `FieldMLP(d, context_dim=k)`).
    - `context`: the bound context, shape `(k,)`, in data units.
    - `context_standardization`: maps `context` to the network's input space (None: identity).

    **Returns:** `__call__(t, x)` gives the network's output, shape `(d,)`.
    """

    network: Callable
    context: Float[Array, " k"]
    context_standardization: Standardization | None = None

    @property
    def dim(self) -> int | None:
        return getattr(self.network, "dim", None)

    def __call__(self, t: Float[ArrayLike, ""], x: Float[Array, " d"]) -> Float[Array, " d"]:
        context = self.context
        if self.context_standardization is not None:
            context = self.context_standardization.forward(context)
        return self.network(t, x, context)


class ConditionalSIFlow(AbstractFlow):
    """A conditional flow p(theta | context): an `SIFlow` whose fields take a context vector.

    `fit(key, theta, context=y)` returns one. `condition(y_obs)` binds a context and gives a proper
    `SIFlow` (a pytree, saveable, usable as a prior or a proposal); `log_prob(theta, context)` and
    `sample(key, context, shape)` are batched conveniences. The context is standardised inside the
    model (`context_standardization`), as the data are (`standardization`).

    **Arguments:**

    - `interpolant`, `velocity`, `score`: as for `SIFlow`, but the fields are called as
      `velocity(t, x, context)` (e.g. `FieldMLP(d, context_dim=k)`).
    - `context_dim`: k, the context's dimension.
    - `base`, `dim`, `settings`, `standardization`: as for `SIFlow` (every conditioned flow
      shares them).
    - `context_standardization`: the map from data-unit contexts to the networks' input space.
    - `support`: a NumPyro constraint: conditioned flows are then `ConstrainedSIFlow`s on it.

    `velocity` and `score` (properties) are the context-taking networks; `interpolant`,
    `settings`, `standardization`, ... are shared with every conditioned flow.
    """

    def __init__(
        self,
        interpolant: AbstractInterpolant,
        velocity: Callable,
        score: Callable | None = None,
        *,
        context_dim: int,
        base: dist.Distribution | None = None,
        dim: int | None = None,
        settings: SolverSettings | None = None,
        standardization: Standardization | None = None,
        context_standardization: Standardization | None = None,
        support: constraints.Constraint | None = None,
        **renamed,
    ):
        reject_unknown(renamed, "ConditionalSIFlow", RENAMED_FLOW_OPTIONS)
        context_dim = _check_context_dim(context_dim)
        if context_standardization is not None and context_standardization.shift.shape != (
            context_dim,
        ):
            raise ValueError(
                f"context_standardization has dimension {context_standardization.shift.shape},"
                f" expected ({context_dim},)."
            )
        for name, network in (("velocity", velocity), ("score", score)):
            if network is not None and not callable(network):
                raise TypeError(f"{name} must be callable as {name}(t, x, context), got {network!r}.")
        if velocity is None:
            raise TypeError("velocity is required: a callable velocity(t, x, context).")
        # the plain flow's checks, on the networks with a context bound (none calls them)
        probe = jnp.zeros(context_dim)
        fields, base, dim = _checked_parts(
            interpolant, ConditionedField(velocity, probe),
            None if score is None else ConditionedField(score, probe), base, dim, standardization,
        )
        fields = Fields(fields.interpolant, velocity, score)
        settings = SolverSettings() if settings is None else settings
        if not isinstance(settings, SolverSettings):
            raise TypeError(f"settings must be a SolverSettings, got {settings!r}.")
        settings.check_fields(fields)
        if support is not None:
            check_support_fits(support, dim)
        self._conditional_model = _FlowModel(fields, settings, standardization)
        self.base = base
        self.context_standardization = context_standardization
        self.support = support
        self._dim = dim
        self.context_dim = context_dim

    # -- the flow family ------------------------------------------------------------------------

    def _parts(self):
        return (self._conditional_model, self.base, self.context_standardization, self.support,
                self._dim, self.context_dim)

    @classmethod
    def _from_parts(cls, model, base, context_standardization, support, dim, context_dim):
        new = cls.__new__(cls)
        new._conditional_model, new.base = model, base
        new.context_standardization, new.support = context_standardization, support
        new._dim, new.context_dim = dim, context_dim
        return new

    @property
    def _model(self) -> _FlowModel:
        return self._conditional_model

    def _with_model(self, model: _FlowModel) -> ConditionalSIFlow:
        return self._from_parts(model, *self._parts()[1:])

    @property
    def dim(self) -> int:
        """d, the dimension of theta's (unconstrained) space."""
        return self._dim

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The event shape of theta (of the conditioned flows)."""
        if self.support is None:
            return (self.dim,)
        return tuple(biject_to(self.support).forward_shape((self.dim,)))

    # -- conditioning ---------------------------------------------------------------------------

    def _check_context(self, context, batched: bool) -> Array:
        if context is None:
            raise TypeError(
                f"context must be an array of shape (..., {self.context_dim}), got None."
            )
        context = as_float_array(context, "context")
        if (context.ndim == 0 or context.shape[-1] != self.context_dim
                or (not batched and context.ndim != 1)):
            expected = f"(..., {self.context_dim})" if batched else f"({self.context_dim},)"
            raise ValueError(
                f"context must have shape {expected} for this conditional flow, got"
                f" {context.shape}."
            )
        finite = jnp.all(jnp.isfinite(context), axis=-1)
        if not isinstance(finite, jax.core.Tracer):  # under jit the check cannot raise
            finite = np.asarray(finite).reshape(-1)
            if not finite.all():
                raise ValueError(
                    f"context contains NaN or inf in {int((~finite).sum())} row(s), first at"
                    f" row {int(np.flatnonzero(~finite)[0])}."
                )
        return context

    def _condition(self, context) -> SIFlow | ConstrainedSIFlow:
        fields = self.fields

        def bind(network):
            return None if network is None else ConditionedField(
                network, context, self.context_standardization
            )

        # The options were validated once in __init__; only the context changes, so the flow is
        # assembled directly (this also works under jax.jit, with a traced context).
        model = eqx.tree_at(
            lambda m: m.fields, self._model,
            Fields(fields.interpolant, bind(fields.velocity), bind(fields.score)),
        )
        flow = SIFlow._from_parts(model, self.base, self.dim)
        return flow if self.support is None else ConstrainedSIFlow(flow, self.support)

    def condition(self, context: Float[ArrayLike, " k"]) -> SIFlow | ConstrainedSIFlow:
        """The flow p(theta | context) for one context of shape `(k,)`, in data units.

        **Returns:** an `SIFlow` whose velocity is a `ConditionedField` (a `ConstrainedSIFlow` on
        `support` when the conditional flow has one): a pytree, saveable with `nsi.save`.
        """
        return self._condition(self._check_context(context, batched=False))

    def with_fixed_step_likelihood(
        self, x: ArrayLike, context: Float[ArrayLike, "n k"], *, max_error: float = 1e-2,
        candidates: tuple[int, ...] = FIXED_STEP_CANDIDATES,
    ) -> tuple[ConditionalSIFlow, dict]:
        """`SIFlow.with_fixed_step_likelihood` for the conditional flow: the fewest fixed solver
        steps whose `log_prob(x_i, context_i)` agrees with the adaptive solve within `max_error`
        nats at every pair. `x`: shape `(n,) + event_shape` (points of `support` if it has one),
        `context`: `(n, k)`, one context per point (e.g. held-out (theta, y) pairs). Returns
        `(flow, report)`, every conditioned flow of the returned one using the chosen solve."""
        if self.likelihood.n_steps is None:
            context = self._check_context(context, batched=True)
            if self.support is None:
                x = check_points(x, self.dim, finite=True, min_rows=1)
            else:
                x = to_unconstrained(x, self.support, name="x")[0]
            if context.shape != (x.shape[0], self.context_dim):
                raise ValueError(
                    f"context must have shape ({x.shape[0]}, {self.context_dim}), one row per"
                    f" point of x, got {context.shape}."
                )
        return self._fewest_fixed_steps(
            lambda flow: _conditional_log_prob_with_info(flow, x, context), max_error, candidates
        )

    # -- batched conveniences ------------------------------------------------------------------

    def log_prob(
        self, value: Float[ArrayLike, "... d"], context: Float[ArrayLike, "... k"]
    ) -> Float[Array, "..."]:
        """log p(theta | context) for broadcastable batches of theta `(..., d)` and contexts
        `(..., k)`; returns the broadcast batch shape."""
        context = self._check_context(context, batched=True)
        event_shape = self.event_shape
        if value is None:
            raise TypeError("value must be an array of points, got None.")
        value = as_float_array(value, "value")
        n_event = len(event_shape)
        if value.shape[value.ndim - n_event:] != event_shape or value.ndim < n_event:
            raise ValueError(
                f"value must have shape (..., {', '.join(map(str, event_shape))}), got"
                f" {value.shape}."
            )
        try:
            batch = jnp.broadcast_shapes(value.shape[: value.ndim - n_event], context.shape[:-1])
        except ValueError:
            raise ValueError(
                f"value and context batches do not broadcast: value {value.shape} (batch"
                f" {value.shape[: value.ndim - n_event]}), context {context.shape} (batch"
                f" {context.shape[:-1]})."
            ) from None
        values = jnp.broadcast_to(value, batch + event_shape).reshape((-1, *event_shape))
        contexts = jnp.broadcast_to(context, batch + (self.context_dim,))
        contexts = contexts.reshape(-1, self.context_dim)
        log_probs = jax.vmap(lambda v, c: self._condition(c).log_prob(v))(values, contexts)
        return log_probs.reshape(batch)

    def sample(
        self, key: PRNGKeyArray, context: Float[ArrayLike, "... k"],
        sample_shape: tuple[int, ...] = (),
    ) -> Array:
        """Draws of theta given each context: shape `sample_shape + context_batch + event_shape`
        (NumPyro's order), e.g. `(n, d)` for one context `(k,)` and `sample_shape=(n,)`."""
        context = self._check_context(context, batched=True)
        sample_shape = check_sample_shape(sample_shape)
        batch = context.shape[:-1]
        contexts = context.reshape(-1, self.context_dim)
        keys = jax.random.split(key, contexts.shape[0])
        draws = jax.vmap(lambda k, c: self._condition(c).sample(k, sample_shape))(keys, contexts)
        draws = draws.reshape(batch + sample_shape + self.event_shape)
        n_batch, n_sample = len(batch), len(sample_shape)
        return jnp.moveaxis(
            draws, tuple(range(n_batch)), tuple(range(n_sample, n_sample + n_batch))
        )

    def __repr__(self):
        support = "" if self.support is None else f", support={self.support}"
        return (
            f"ConditionalSIFlow(dim={self.dim}, context_dim={self.context_dim},"
            f" interpolant={type(self.interpolant).__name__}{support})"
        )


@eqx.filter_jit
def _conditional_log_prob_with_info(flow, x, context):
    """log p(x_i | context_i) and each solve's info, x in the unconstrained space."""

    def one(value, row):
        conditioned = flow._condition(row)
        if isinstance(conditioned, ConstrainedSIFlow):
            conditioned = conditioned.flow
        return conditioned.log_prob_with_info(value)

    return jax.vmap(one)(x, context)


def _check_context_dim(context_dim) -> int:
    if isinstance(context_dim, bool) or not isinstance(context_dim, int) or context_dim < 1:
        raise ValueError(f"context_dim must be a positive integer, got {context_dim!r}.")
    return context_dim
