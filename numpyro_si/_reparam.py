"""`FlowReparam`: the latent route for an `SIFlow` prior (NUTS runs in the base space)."""

from __future__ import annotations

import numpyro
from numpyro.infer.reparam import Reparam

from ._constrained import ConstrainedSIFlow
from ._distribution import SIFlow

__all__ = ["FlowReparam"]


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
