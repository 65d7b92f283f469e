"""The flow family: what every kind of stochastic-interpolant flow shares.

Three kinds satisfy `AbstractFlow`:

- `SIFlow`: a density on R^d (a NumPyro distribution), the plain flow;
- `ConstrainedSIFlow`: an `SIFlow` pushed through `biject_to(support)` (a NumPyro distribution on
  the support);
- `ConditionalSIFlow`: a family p(x | context) whose `condition(context)` is one of the two above
  (a *conditioned* flow).

Each holds a `_FlowModel` (the interpolant's fields, the `SolverSettings`, the standardisation)
and is a pytree by one mechanism: its array leaves are the pytree's children and everything else
(functions, options, Python numbers) is static, as under `equinox.filter_jit`.
"""

from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jaxtyping import Array, Float

from ._checks import check_real
from ._dynamics import Fields
from ._interpolants import AbstractInterpolant
from ._solvers import (
    AbstractDivergence,
    AbstractSampler,
    ODELikelihood,
    ODESampler,
    SDESampler,
    SolverSettings,
)

__all__ = ["AbstractFlow", "Standardization", "FIXED_STEP_CANDIDATES"]

# step counts `with_fixed_step_likelihood` tries, in this order
FIXED_STEP_CANDIDATES = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Standardization(eqx.Module):
    """The affine map y = (x - shift) / scale from data space to the space the fields live in.

    `build_flow` stores the training data's mean and standard deviation here so users never
    whiten by hand; a flow applies it (with its log-Jacobian) in `log_prob` and inverts it in
    `sample`.
    """

    shift: Float[Array, " d"]
    scale: Float[Array, " d"]

    def __check_init__(self):
        if self.shift.shape != self.scale.shape or self.shift.ndim != 1:
            raise ValueError(
                f"shift and scale must both have shape (d,), got {self.shift.shape} and"
                f" {self.scale.shape}."
            )
        concrete = (jax.Array, np.ndarray)
        if not all(isinstance(a, concrete) and not isinstance(a, jax.core.Tracer)
                   for a in (self.shift, self.scale)):
            return  # abstract (under jit, or a structure being rebuilt): checked when concrete
        if not bool(jnp.all(jnp.isfinite(self.shift))):
            raise ValueError(f"Standardization shift must be finite, got {self.shift}.")
        if not bool(jnp.all(jnp.isfinite(self.scale) & (self.scale > 0))):
            raise ValueError(
                f"Standardization scale must be finite and positive, got {self.scale}."
            )

    @classmethod
    def from_data(cls, data: Float[Array, "n d"], name: str = "data") -> Standardization:
        """Per-coordinate mean and standard deviation of `data`.

        A constant column (no spread the float type can represent around its mean) gets scale
        1, with a warning: dividing by a vanishing scale would turn any later offset from that
        constant (a context a little off, a point of a degenerate density) into millions of
        standard deviations. Data too large for its float type to standardise are refused.
        """
        shift = jnp.mean(data, axis=0)
        scale = jnp.std(data, axis=0)
        if not bool(jnp.all(jnp.isfinite(shift) & jnp.isfinite(scale))):
            # the sum of squares overflowed: the same moments, on data scaled by their magnitude
            magnitude = jnp.max(jnp.abs(data), axis=0)
            magnitude = jnp.where(magnitude > 0, magnitude, 1.0)
            scaled = data / magnitude
            shift = jnp.mean(scaled, axis=0) * magnitude
            scale = jnp.std(scaled, axis=0) * magnitude
        if not bool(jnp.all(jnp.isfinite(shift) & jnp.isfinite(scale))):
            raise ValueError(
                f"{name} are too large to standardise in {data.dtype} (values up to"
                f" {float(jnp.max(jnp.abs(data))):.3g}); rescale them or use float64."
            )
        # no spread the float type can represent around the mean
        constant = (scale == 0) | (scale <= 4 * jnp.finfo(data.dtype).eps * jnp.abs(shift))
        if bool(jnp.any(constant)):
            columns = np.flatnonzero(np.asarray(constant)).tolist()
            warnings.warn(
                f"{name} column(s) {columns} are constant; they keep scale 1 in the"
                " standardisation (the flow cannot learn a spread that is not there).",
                UserWarning, stacklevel=3,
            )
        return cls(shift, jnp.where(constant, jnp.ones_like(scale), scale))

    def forward(self, x):
        return (x - self.shift) / self.scale

    def inverse(self, y):
        return self.shift + self.scale * y

    def log_abs_det_forward(self):
        """log |d forward / dx| (a constant)."""
        return -jnp.sum(jnp.log(self.scale))


class _FlowModel(eqx.Module):
    """What every flow kind holds: the fields, the solver settings and the standardisation."""

    fields: Fields
    settings: SolverSettings
    standardization: Standardization | None


def _is_none(node) -> bool:
    return node is None


class AbstractFlow:
    """The interface every flow kind satisfies (`SIFlow`, `ConstrainedSIFlow`,
    `ConditionalSIFlow`), so that diagnostics, inference, `save` / `load` and `FlowReparam` can
    take any kind they can serve and name the problem for the rest.

    - `dim`: the dimension of the space the fields live in (the unconstrained space);
    - `interpolant`, `velocity`, `score`, `fields`, `standardization`: the learned model;
    - `settings`: the `SolverSettings` (sampler, likelihood solve, divergence, tolerances),
      changed by `with_settings`;
    - `with_fixed_step_likelihood`: a copy whose likelihood takes the fewest fixed solver steps
      that agree with the adaptive solve on given points.

    (Not an `abc.ABC`: a NumPyro distribution has its own metaclass. The methods marked
    abstract are what a kind must define.)
    """

    # -- the one pytree mechanism ---------------------------------------------------------------

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)  # a NumPyro Distribution registers itself here
        if not issubclass(cls, dist.Distribution):
            jax.tree_util.register_pytree_node(cls, cls.tree_flatten, cls.tree_unflatten)

    @abc.abstractmethod
    def _parts(self) -> tuple:
        """Everything the flow is made of, in the order `_from_parts` takes."""

    @classmethod
    @abc.abstractmethod
    def _from_parts(cls, *parts):
        """The flow from `_parts()`, without the constructor's checks (which need concrete
        values): usable under `jax.jit`, with traced arrays."""

    def tree_flatten(self):
        # None counts as a leaf, so that a tree_map which puts None (or any object) in an array's
        # place, as eqx.partition does, keeps the number of leaves; which leaves are the arrays
        # is decided when the flow is made and kept through every unflatten (`_array_slots`).
        leaves, treedef = jax.tree_util.tree_flatten(self._parts(), is_leaf=_is_none)
        slots = self.__dict__.get("_array_slots")
        if slots is None or len(slots) != len(leaves):
            slots = tuple(eqx.is_array(leaf) for leaf in leaves)
        arrays = tuple(leaf for leaf, slot in zip(leaves, slots, strict=True) if slot)
        static = tuple(None if slot else leaf for leaf, slot in zip(leaves, slots, strict=True))
        return arrays, (treedef, slots, static)

    @classmethod
    def tree_unflatten(cls, aux, arrays):
        treedef, slots, static = aux
        children = iter(arrays)
        leaves = [next(children) if slot else leaf for slot, leaf in zip(slots, static, strict=True)]
        flow = cls._from_parts(*jax.tree_util.tree_unflatten(treedef, leaves))
        flow._array_slots = slots
        return flow

    # -- the model ------------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def _model(self) -> _FlowModel:
        """The fields, settings and standardisation."""

    @abc.abstractmethod
    def _with_model(self, model: _FlowModel) -> AbstractFlow:
        """The same kind of flow with another `_FlowModel`."""

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """The dimension d of the space the fields live in."""

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
    def standardization(self) -> Standardization | None:
        return self._model.standardization

    @property
    def settings(self) -> SolverSettings:
        """How the flow samples and evaluates its density (see `SolverSettings`)."""
        return self._model.settings

    @property
    def sampler(self) -> AbstractSampler:
        return self.settings.sampler

    @property
    def divergence(self) -> AbstractDivergence:
        return self.settings.divergence

    @property
    def likelihood(self) -> ODELikelihood:
        return self.settings.likelihood

    @property
    def rtol(self) -> float:
        return self.settings.rtol

    @property
    def atol(self) -> float:
        return self.settings.atol

    def with_settings(self, settings: SolverSettings | None = None, **changes):
        """A copy with other solver settings (no retraining): a whole `SolverSettings`, or the
        changes `SolverSettings.replace` takes (`sampler` ("ode", "sde" or a sampler object),
        `eps`, `likelihood`, `divergence` ("exact", "hutchinson" or an object), `rtol`, `atol`).

        `flow.with_settings(sampler="sde", eps=0.5)` samples by the SDE; `flow.with_settings(
        rtol=1e-7, atol=1e-7)` tightens every solve (as a Metropolis-Hastings proposal needs).
        """
        if settings is not None and changes:
            raise ValueError("give either a SolverSettings or the settings to change, not both.")
        if settings is None:
            settings = self.settings.replace(**changes)
        elif not isinstance(settings, SolverSettings):
            raise TypeError(f"settings must be a SolverSettings, got {settings!r}.")
        settings.check_fields(self.fields)
        return self._with_model(eqx.tree_at(lambda m: m.settings, self._model, settings))

    def with_sampler(self, sampler=None, **changes):
        """Deprecated alias of `with_settings`, renamed because it changes every solver setting,
        not only the sampler (docs/migration.md)."""
        warnings.warn(
            "with_sampler is renamed with_settings (docs/migration.md); e.g."
            " flow.with_settings(sampler='sde', eps=0.5).",
            FutureWarning, stacklevel=2,
        )
        if "likelihood_solver" in changes:
            solve = changes.pop("likelihood_solver")
            changes["likelihood"] = ODELikelihood(solve.solver, solve.n_steps, solve.max_steps)
        options = {k: changes.pop(k) for k in ("n_steps", "max_steps", "solver") if k in changes}
        sde_now = isinstance(self.sampler, SDESampler)
        if sampler is None and (options or "eps" in changes):
            sampler = "sde" if sde_now or "eps" in changes else "ode"
        if options and sampler == "sde":
            eps = changes.pop("eps", self.sampler.eps if sde_now else 1.0)
            sampler = SDESampler(eps, **options)
        elif options:
            sampler = ODESampler(**options)
        return self.with_settings(sampler=sampler, **changes)

    def _fewest_fixed_steps(self, evaluate: Callable, max_error, candidates):
        """The search behind every `with_fixed_step_likelihood`: `evaluate(flow)` gives
        `(log_prob, SolveInfo)` at the caller's points. Returns `(this flow or its fastest
        qualifying copy, report)`."""
        max_error, candidates = _check_fixed_step_request(self.likelihood, max_error, candidates)
        likelihood = self.likelihood
        reference, info = evaluate(self)
        if not bool(jnp.all(info.succeeded)):
            raise ValueError(
                f"the adaptive solve ran out of steps (max_steps={likelihood.max_steps}) at"
                f" {int(jnp.sum(~info.succeeded))} of {info.succeeded.size} points; raise"
                " ODELikelihood(max_steps=...) or check those points before comparing against it."
            )
        adaptive_steps = int(jnp.max(info.num_steps))
        errors = {}
        for n_steps in candidates:
            if n_steps >= adaptive_steps:
                break
            fast = self.with_settings(likelihood=ODELikelihood(likelihood.solver, n_steps=n_steps))
            values, _ = evaluate(fast)
            error = float(jnp.max(jnp.abs(values - reference)))  # NaN / inf fail the test
            errors[n_steps] = error
            if error <= max_error:
                return fast, dict(n_steps=n_steps, max_error=error, adaptive_steps=adaptive_steps,
                                  errors=errors)
        return self, dict(n_steps=None, max_error=0.0, adaptive_steps=adaptive_steps,
                          errors=errors)


def _check_fixed_step_request(likelihood, max_error, candidates):
    """with_fixed_step_likelihood's option checks; returns (max_error as float, step counts)."""
    if likelihood.n_steps is not None:
        raise ValueError(
            "this flow's likelihood solve already has fixed steps"
            f" (n_steps={likelihood.n_steps}); call with_fixed_step_likelihood on"
            " the flow with the adaptive solve it should be checked against."
        )
    try:
        max_error = check_real("max_error", max_error, low=0.0, low_open=True)
    except ValueError:
        raise ValueError(f"max_error must be a positive number of nats, got {max_error!r}.") from None
    if not candidates or any(int(k) != k or k < 1 for k in candidates):
        raise ValueError(f"candidates must be positive step counts, got {candidates!r}.")
    return max_error, sorted(set(int(k) for k in candidates))


def event_size(event_shape) -> int:
    return math.prod(event_shape)
