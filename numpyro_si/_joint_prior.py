"""`JointPrior`: one flow as the joint prior of several named sites, each on its own support
(posterior-as-prior for real models: `mcmc.get_samples()` of an earlier analysis in, a prior
over the same sites in a new model out)."""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import numpyro
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from ._distribution import SIFlow
from ._fit import fit
from ._reparam import sample

__all__ = ["JointPrior", "fit_joint_prior"]


class JointPrior(eqx.Module):
    """An `SIFlow` on the sites' ravelled unconstrained values, used as their joint prior.

    Inside a model, `params = prior("name")` draws the flow's vector (by `nsi.sample`, the latent
    route with a checked fast map unless `route="density"`), maps each site's slice to its
    support (`biject_to(support)`) and records every site as a `numpyro.deterministic`, so
    `mcmc.get_samples()` has them under their names. The prior density of the sites is the
    flow's push-forward through those bijections, exactly.

    Built by `fit_joint_prior`; fields: `flow`, `sites` (names, sorted), `shapes` (each site's
    constrained shape per draw), `supports`.
    """

    flow: SIFlow
    sites: tuple[str, ...] = eqx.field(static=True)
    shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    supports: tuple[Any, ...] = eqx.field(static=True)

    def __call__(self, name: str = "joint_prior", *, route: str = "latent",
                 max_distance: float = 0.05) -> dict[str, Array]:
        """Inside a model: the sites' values (a dict by site name), drawn from the joint prior
        as the latent site `name` (see `nsi.sample` for `route` and `max_distance`)."""
        u = sample(name, self.flow, route=route, max_distance=max_distance)
        values = self.constrain(u)
        return {site: numpyro.deterministic(site, value) for site, value in values.items()}

    def constrain(self, u: Float[ArrayLike, "... d"]) -> dict[str, Array]:
        """Flat unconstrained vectors `(..., d)` to the sites' values `{site: (..., *shape)}`."""
        u = jnp.asarray(u)
        values, start = {}, 0
        for site, shape, support in zip(self.sites, self.shapes, self.supports, strict=True):
            transform = biject_to(support)
            free_shape = transform.inverse_shape(shape)
            size = math.prod(free_shape)
            piece = u[..., start:start + size].reshape(*u.shape[:-1], *free_shape)
            values[site] = transform(piece)
            start += size
        return values

    def unconstrain(self, samples: dict[str, ArrayLike]) -> Float[Array, "n d"]:
        """The sites' draws `{site: (n, *shape)}` to flat unconstrained vectors `(n, d)`."""
        return _unconstrain(samples, self.sites, self.supports)

    def sample(self, key: PRNGKeyArray, n: int) -> dict[str, Array]:
        """`n` draws of every site from the prior (outside a model)."""
        return self.constrain(self.flow.sample(key, (n,)))


def fit_joint_prior(
    key: PRNGKeyArray,
    samples: dict[str, ArrayLike],
    *,
    supports: dict[str, Any] | None = None,
    model=None,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    **fit_options,
) -> tuple[JointPrior, Any]:
    """Fit one flow to draws of several named sites, as their joint prior in a new model.

    **Arguments:**

    - `key`: a `jax.random` key.
    - `samples`: draws per site, each with a leading draw axis of the same length (e.g.
      `mcmc.get_samples()` of an earlier analysis; sites not wanted must be left out).
    - `supports`: each site's support (a `numpyro.distributions.constraints` object), e.g.
      `{"sigma": constraints.positive}`; a site in neither `supports` nor `model` is real.
    - `model`, `model_args`, `model_kwargs`: the earlier model, to read the supports of its
      sites from (`supports` overrides it).
    - `fit_options`: options of `nsi.fit` (e.g. `num_steps`, `weight_decay`).

    **Returns:** `(JointPrior, TrainHistory)`. Use it in the new model as
    `params = prior("name")`.
    """
    if not isinstance(samples, dict) or not samples:
        raise TypeError(
            "samples must be a non-empty dict of draws keyed by site name (e.g."
            f" mcmc.get_samples()), got {type(samples).__name__}."
        )
    sites = tuple(sorted(samples))
    values = {site: jnp.asarray(samples[site]) for site in sites}
    lengths = {site: value.shape[0] if value.ndim else 0 for site, value in values.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise ValueError(f"every site needs the same number of draws (leading axis), got {lengths}.")
    known = _model_supports(model, model_args, model_kwargs or {}, sites) if model else {}
    known |= dict(supports or {})
    unknown = sorted(set(known) - set(sites))
    if unknown:
        raise ValueError(f"supports name site(s) {unknown} that samples do not have {list(sites)}.")
    site_supports = tuple(known.get(site, constraints.real) for site in sites)
    u = _unconstrain(values, sites, site_supports)
    flow, history = fit(key, u, **fit_options)
    shapes = tuple(tuple(values[site].shape[1:]) for site in sites)
    return JointPrior(flow, sites, shapes, site_supports), history


def _unconstrain(samples, sites, supports) -> Array:
    """Each site's draws through biject_to(support).inv, flattened and concatenated."""
    missing = sorted(set(sites) - set(samples))
    if missing:
        raise ValueError(f"samples lack the site(s) {missing}.")
    pieces = []
    for site, support in zip(sites, supports, strict=True):
        value = jnp.asarray(samples[site])
        free = biject_to(support).inv(value)
        n = value.shape[0]
        bad = ~np.asarray(jnp.all(jnp.isfinite(free.reshape(n, -1)), axis=1))
        if bad.any():
            raise ValueError(
                f"site {site!r}: draw(s) {np.flatnonzero(bad)[:5].tolist()} lie outside or on the"
                f" boundary of its support {support} (or are NaN)."
            )
        pieces.append(free.reshape(n, -1))
    return jnp.concatenate(pieces, axis=1)


def _model_supports(model, model_args, model_kwargs, sites) -> dict[str, Any]:
    """The supports of `sites` in one seeded run of `model`."""
    with numpyro.handlers.seed(rng_seed=0):
        trace = numpyro.handlers.trace(model).get_trace(*model_args, **model_kwargs)
    absent = sorted(set(sites) - {name for name, site in trace.items()
                                  if site["type"] == "sample" and not site["is_observed"]})
    if absent:
        raise ValueError(f"model has no latent site(s) {absent}.")
    return {site: trace[site]["fn"].support for site in sites}

