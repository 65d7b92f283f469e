"""Flows as priors: `sample` (one line, the latent route with a checked fast map) and
`FlowReparam` (the latent route as a NumPyro reparameteriser)."""

from __future__ import annotations

import weakref

import jax
import numpyro
from numpyro.infer.reparam import Reparam

from ._constrained import ConstrainedSIFlow
from ._distribution import SIFlow

__all__ = ["FlowReparam", "sample", "ROUTES"]

#: The ways `sample` puts a flow prior into a model.
ROUTES = ("latent", "density")


class FlowReparam(Reparam):
    """Reparameterise a latent site `numpyro.sample(name, flow)` with an `SIFlow` prior as
    z ~ flow.base (a new site `{name}_base`) and `name` = flow.push_forward(z).

    The flow map is a bijection from the base to data space, so this is the same model; the
    sampler then works on z, where the prior is the simple base density, and no divergence (no
    likelihood ODE) is needed at all: each density evaluation costs one forward ODE solve and its
    gradient. Use it as `numpyro.handlers.reparam(model, config={"theta": nsi.FlowReparam()})`,
    in the manner of `numpyro.infer.reparam.TransformReparam`. Works under plates (batch shapes)
    and with `.to_event`; latent sites only. A `ConstrainedSIFlow` site gets
    `name` = biject_to(support)(flow.push_forward(z)).
    """

    def __call__(self, name, fn, obs):
        if obs is not None:
            raise ValueError(f"FlowReparam works on latent sites only; site {name!r} is observed.")
        flow, expand_shape, event_dim = self._unwrap(fn)
        if not isinstance(flow, SIFlow | ConstrainedSIFlow):
            raise TypeError(
                f"FlowReparam needs an SIFlow or ConstrainedSIFlow at site {name!r}, got"
                f" {type(flow).__name__}."
            )
        z = numpyro.sample(f"{name}_base", self._wrap(flow.base, expand_shape, event_dim))
        return None, flow.push_forward(z)


def sample(name: str, flow: SIFlow | ConstrainedSIFlow, *, route: str = "latent",
           max_distance: float = 0.05):
    """A learned prior in one line: `theta = nsi.sample("theta", flow)` inside a NumPyro model.

    - `route="latent"` (default): the site is reparameterised by `FlowReparam` (a latent
      `{name}_base` from the flow's base, `name` its image under the flow map), and the map is
      fast: unless the flow's sampler already has fixed steps, the fewest midpoint steps whose
      push-forward is within `max_distance` data standard deviations (root-mean-square
      displacement, a bound on the 2-Wasserstein distance) of the adaptive map's
      (`SIFlow.with_fast_map`, checked once per flow and remembered). The prior is that map's
      push-forward, an exact model of its own; NUTS sees the base's simple geometry and needs no
      likelihood ODE.
    - `route="density"`: `numpyro.sample(name, flow)`, the site an ordinary latent whose prior
      density is the flow's ODE likelihood (the slowest route; for code that needs `name` as the
      latent itself).

    Returns the site's value, as `numpyro.sample` does.
    """
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}.")
    if not isinstance(flow, SIFlow | ConstrainedSIFlow):
        raise TypeError(
            f"nsi.sample needs an SIFlow or ConstrainedSIFlow, got {type(flow).__name__}; use"
            " numpyro.sample for other distributions."
        )
    if route == "density":
        return numpyro.sample(name, flow)
    with numpyro.handlers.reparam(config={name: FlowReparam()}):
        return numpyro.sample(name, fast_map(flow, max_distance))


# flow id -> (a weak reference to the flow, max_distance, its fast copy, report)
_FAST_MAPS: dict[int, tuple] = {}


def fast_map(flow: SIFlow | ConstrainedSIFlow, max_distance: float = 0.05):
    """The copy of `flow` that `sample` uses on the latent route: the flow itself if its sampler
    has fixed steps, else `flow.with_fast_map(max_distance=max_distance)[0]`, computed once per
    flow (a model is traced many times) and evaluated eagerly even inside a traced model."""
    inner = flow.flow if isinstance(flow, ConstrainedSIFlow) else flow
    if getattr(inner.settings.sampler, "n_steps", None) is not None:
        return flow
    cached = _FAST_MAPS.get(id(flow))
    if cached is not None and cached[0]() is flow and cached[1] == max_distance:
        return cached[2]
    with jax.ensure_compile_time_eval():
        fast, report = flow.with_fast_map(max_distance=max_distance)
    identity = id(flow)
    _FAST_MAPS[identity] = (weakref.ref(flow, lambda _: _FAST_MAPS.pop(identity, None)),
                            max_distance, fast, report)
    return fast
