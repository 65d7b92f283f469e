"""`build_flow`: an untrained flow for some data (interpolant, networks, base, standardisation,
context, support), ready for `train`."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray
from numpyro.distributions import constraints
from numpyro.distributions.transforms import AffineTransform, IndependentTransform

from ._checks import check_data
from ._conditional import ConditionalSIFlow
from ._constrained import ConstrainedSIFlow, is_unconstrained, to_unconstrained
from ._distribution import SIFlow
from ._flow import Standardization
from ._interpolants import (
    AbstractInterpolant,
    AbstractOneSidedInterpolant,
    MirrorInterpolant,
    OneSidedLinearInterpolant,
)
from ._networks import FieldMLPSpec
from ._solvers import SDESampler, SolverSettings

__all__ = ["build_flow"]


class _Samples(NamedTuple):
    """Training samples in the unconstrained space, checked: `x` (N, d) and `context` (N, k) or
    None."""

    x: Float[Array, "N d"]
    context: Float[Array, "N k"] | None


def prepare_samples(
    data: ArrayLike, context: ArrayLike | None, support: constraints.Constraint | None,
    name: str = "data",
) -> _Samples:
    """`data` mapped to the unconstrained space of `support` and checked; `context` checked, one
    row per sample, in the data's dtype. Errors call them `name` and `{name}`'s context."""
    if not is_unconstrained(support):
        data = to_unconstrained(data, support, name=name)[0]
    x = check_data(data, name)
    if context is None:
        return _Samples(x, None)
    context_name = "context" if name == "data" else f"{name}'s context"
    context = check_data(context, context_name)
    if context.shape[0] != x.shape[0]:
        raise ValueError(
            f"{context_name} has {context.shape[0]} row(s) but {name} has {x.shape[0]}; give one"
            " context row per sample."
        )
    return _Samples(x, context.astype(x.dtype))


class _ModelOptions(NamedTuple):
    """build_flow's options, checked and with defaults filled in."""

    interpolant: AbstractInterpolant
    base: dist.Distribution | None
    support: constraints.Constraint | None
    learn_score: bool
    velocity_network: eqx.Module | None
    score_network: eqx.Module | None
    network: FieldMLPSpec
    standardize: bool
    settings: SolverSettings


def check_model_options(
    *, support=None, interpolant=None, base=None, learn_score=None, velocity_network=None,
    score_network=None, network=None, standardize=True, settings=None,
) -> _ModelOptions:
    """The checks of `build_flow`'s options that need no data, with the defaults."""
    interpolant = OneSidedLinearInterpolant() if interpolant is None else interpolant
    if not isinstance(interpolant, AbstractInterpolant):
        raise TypeError(f"interpolant must be an AbstractInterpolant, got {interpolant!r}.")
    if isinstance(interpolant, MirrorInterpolant):
        raise ValueError(
            "A flow needs a tractable base; a MirrorInterpolant has none. Train its score or"
            " denoiser with nsi.score_loss / nsi.denoiser_loss directly."
        )
    interpolant.check_boundary_conditions()
    one_sided = isinstance(interpolant, AbstractOneSidedInterpolant)
    if base is not None and one_sided:
        raise ValueError(
            f"{type(interpolant).__name__} is one-sided (standard-normal base); omit `base` or use"
            " a two-sided interpolant."
        )
    settings = SolverSettings() if settings is None else settings
    if not isinstance(settings, SolverSettings):
        raise TypeError(f"settings must be a SolverSettings, got {settings!r}.")
    sde = isinstance(settings.sampler, SDESampler)
    learn_score = (sde and not one_sided) if learn_score is None else learn_score
    if learn_score and interpolant.is_deterministic:
        raise ValueError(
            "Learning a score needs a stochastic interpolant (gamma > 0), e.g."
            " LinearInterpolant(BrownianGamma(1.0)); a one-sided interpolant needs no score."
        )
    if sde and not (learn_score or one_sided):
        raise ValueError("SDE sampling of a two-sided interpolant needs learn_score=True.")
    network = FieldMLPSpec() if network is None else network
    if not isinstance(network, FieldMLPSpec):
        raise TypeError(f"network must be a FieldMLPSpec, got {network!r}.")
    support = None if is_unconstrained(support) else support
    return _ModelOptions(interpolant, base, support, bool(learn_score), velocity_network,
                         score_network, network, bool(standardize), settings)


def build_flow(
    key: PRNGKeyArray,
    data: Float[ArrayLike, "N d"],
    *,
    context: Float[ArrayLike, "N k"] | None = None,
    support: constraints.Constraint | None = None,
    interpolant: AbstractInterpolant | None = None,
    base: dist.Distribution | None = None,
    learn_score: bool | None = None,
    velocity_network: eqx.Module | None = None,
    score_network: eqx.Module | None = None,
    network: FieldMLPSpec | None = None,
    standardize: bool = True,
    settings: SolverSettings | None = None,
) -> SIFlow | ConstrainedSIFlow | ConditionalSIFlow:
    """An untrained flow for `data`, the kind its options call for; `train` fits it.

    **Arguments:**

    - `key`: a `jax.random` key (initialises the networks).
    - `data`: samples, shape `(N, d)`, finite floats (`(N, k, k)` for a matrix `support`); they
      set the dimension and, with `standardize`, the standardisation (their mean and standard
      deviation).
    - `context`: optional, shape `(N, k)`: one context vector per sample. The fields then take
      the context, `f(t, x, context)`, and the flow is a `ConditionalSIFlow` for
      p(data | context); the context is standardised inside the model when `standardize`.
    - `support`: the samples' support, a NumPyro constraint (e.g. `constraints.positive`,
      `constraints.interval(0, 1)`, `constraints.simplex`, `constraints.positive_definite`); the
      flow is then a `ConstrainedSIFlow` on `support` (its fields live on
      `biject_to(support).inv(data)`). Rows outside the support or on its boundary raise
      `ValueError` naming them. Default (or `real`, `real_vector`): no transform.
    - `interpolant`: default `OneSidedLinearInterpolant()` (flow matching / rectified flow with a
      standard-normal base). `OneSidedTrigonometricInterpolant()` is sometimes better but can
      stall on nearly isotropic standardised data (docs/guide.md).
    - `base`: rho0 in data space (the unconstrained space, with `support`) for a two-sided
      interpolant (any NumPyro distribution with event shape `(d,)`); default standard normal in
      the standardised space.
    - `learn_score`: give the flow a score network too (needs gamma > 0); default: when
      `settings` samples by the SDE and the interpolant is two-sided (a one-sided interpolant's
      score follows from the velocity).
    - `velocity_network`, `score_network`: your own Equinox modules `f(t, x)` (`f(t, x, context)`
      with a context) instead of the default ones.
    - `network`: a `FieldMLPSpec` for the default networks (default: `FieldMLPSpec()`, whose width
      and depth follow the dimension).
    - `standardize`: let the fields live in the standardised space (the data's mean and scale
      are stored in the flow).
    - `settings`: the flow's `SolverSettings` (sampler, likelihood solve, tolerances); they do
      not affect training.

    **Returns:** an `SIFlow`, a `ConstrainedSIFlow` (with `support`) or a `ConditionalSIFlow`
    (with `context`).
    """
    options = check_model_options(
        support=support, interpolant=interpolant, base=base, learn_score=learn_score,
        velocity_network=velocity_network, score_network=score_network, network=network,
        standardize=standardize, settings=settings,
    )
    samples = prepare_samples(data, context, options.support)
    key_velocity, key_score = jax.random.split(key)
    return assemble_flow(key_velocity, key_score, samples, options)


def assemble_flow(key_velocity, key_score, samples: _Samples, options: _ModelOptions):
    """The flow of `build_flow` from checked samples and options (the standardisation is that of
    `samples`)."""
    x, context = samples
    dim, dtype = x.shape[1], x.dtype
    if options.base is not None and tuple(options.base.event_shape) != (dim,):
        raise ValueError(
            f"base must have event shape ({dim},) to match the data, got"
            f" {tuple(options.base.event_shape)}."
        )
    standardization = Standardization.from_data(x) if options.standardize else None
    if not options.standardize:
        _warn_unless_unit_scale(x)
    context_dim = 0 if context is None else context.shape[1]
    velocity = options.velocity_network
    if velocity is None:
        velocity = options.network.build(dim, context_dim=context_dim, key=key_velocity,
                                         dtype=dtype)
    score = None
    if options.learn_score:
        score = options.score_network
        if score is None:
            score = options.network.build(dim, context_dim=context_dim, key=key_score,
                                          dtype=dtype)
    common = dict(base=_base_in_flow_space(options.base, standardization), dim=dim,
                  settings=options.settings, standardization=standardization)
    if context is not None:
        for name, network in (("velocity_network", options.velocity_network),
                              ("score_network", options.score_network)):
            if network is not None:
                _check_context_network(network, name, dim, context_dim, dtype)
        context_standardization = (
            Standardization.from_data(context, "context") if options.standardize else None
        )
        return ConditionalSIFlow(
            options.interpolant, velocity, score, context_dim=context_dim,
            context_standardization=context_standardization, support=options.support, **common,
        )
    flow = SIFlow(options.interpolant, velocity, score, **common)
    return flow if options.support is None else ConstrainedSIFlow(flow, options.support)


def _warn_unless_unit_scale(x) -> None:
    """The default networks and the standard-normal base expect fields of order one."""
    spread = float(jnp.max(jnp.std(x, axis=0)))
    offset = float(jnp.max(jnp.abs(jnp.mean(x, axis=0))))
    if spread > 100.0 or offset > 100.0 or 0.0 < spread < 1e-2:
        warnings.warn(
            f"standardize=False on data with standard deviation up to {spread:.3g} and mean up to"
            f" {offset:.3g}: the networks and the base expect values of order one, so training"
            " will be slow or fail; standardise (the default) or rescale the data.",
            UserWarning, stacklevel=4,
        )


def _base_in_flow_space(base, standardization):
    """The base rho0 (given in data space) as a density in the fields' (standardised) space."""
    if base is None or standardization is None:
        return base
    # IndependentTransform: one affine map of the whole event, so log|det| sums over d.
    return dist.TransformedDistribution(
        base,
        IndependentTransform(
            AffineTransform(
                -standardization.shift / standardization.scale, 1.0 / standardization.scale
            ),
            1,
        ),
    )


def _check_context_network(network, name, dim, context_dim, dtype):
    """A user network must take (t, x, context) when the flow has a context."""
    try:
        out = jax.eval_shape(
            network, jnp.zeros((), dtype), jnp.zeros(dim, dtype), jnp.zeros(context_dim, dtype)
        )
    except Exception as error:  # noqa: BLE001 - any failure means the wrong signature or shapes
        raise TypeError(
            f"With a context, {name} must be callable as {name}(t, x, context) with x of shape"
            f" ({dim},) and context of shape ({context_dim},): {error}"
        ) from None
    if getattr(out, "shape", None) != (dim,):
        raise ValueError(f"{name}(t, x, context) must return shape ({dim},), got {out}.")
