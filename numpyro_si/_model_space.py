"""A NumPyro model's latent sites as one flat vector of the unconstrained space: the space in
which NUTS moves, `SIFlowBoost` proposes and flows for a model are fitted.

Sites come in sorted order (`jax.flatten_util.ravel_pytree` of the unconstrained dict), each
flattened in C order; constrained sites (a scale, a simplex) are mapped to R^k by the transforms
`numpyro.infer.util` uses, the log-Jacobian included in the log density.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float
from numpyro.infer.util import constrain_fn, get_transforms, initialize_model

__all__ = ["ModelLogDensity", "log_target_from_model", "unconstrained_draws"]


def unconstrained_draws(
    model: Callable, samples: dict, model_args: tuple = (), model_kwargs: dict | None = None
) -> Float[Array, "n d"]:
    """Posterior draws mapped to the ravelled unconstrained space that `SIFlowBoost` works in.

    **Arguments:**

    - `model`: the NumPyro model.
    - `samples`: constrained draws keyed by latent site name, each with a leading draw axis
      (e.g. `mcmc.get_samples()` of a pilot run; non-latent sites are ignored).
    - `model_args`, `model_kwargs`: the model's arguments.

    **Returns:** an `(n, d)` array to fit the flow on (`numpyro_si.fit`).
    """
    model_kwargs = {} if model_kwargs is None else model_kwargs
    if not isinstance(samples, dict):
        raise TypeError(
            f"samples must be a dict of draws keyed by site name (e.g. mcmc.get_samples()), got"
            f" {type(samples).__name__}."
        )

    missing = sorted(set(_latent_sites(model, model_args, model_kwargs)) - set(samples))
    if missing:  # checked first: the model cannot run with a latent site unset
        raise ValueError(
            f"samples lack the latent site(s) {missing}; they have {sorted(samples)}."
        )

    def one(params):
        transforms = get_transforms(model, model_args, model_kwargs, params)
        # only latent sites, in the order `ravel_pytree` gives the unconstrained dict `z`
        unconstrained = {name: transforms[name].inv(params[name]) for name in transforms}
        return ravel_pytree(unconstrained)[0]

    return jax.vmap(one)({name: jnp.asarray(value) for name, value in samples.items()})


def _latent_sites(model, model_args, model_kwargs) -> list[str]:
    """The names of the model's latent (unobserved) sample sites, from one seeded run."""
    try:
        with numpyro.handlers.seed(rng_seed=0):
            trace = numpyro.handlers.trace(model).get_trace(*model_args, **model_kwargs)
    except Exception as error:  # noqa: BLE001 - reported with what the model was given
        raise ValueError(
            f"running the model with model_args={model_args!r} and model_kwargs="
            f"{model_kwargs!r} failed ({type(error).__name__}: {error}); pass the arguments"
            " the model needs."
        ) from error
    return [name for name, site in trace.items()
            if site["type"] == "sample" and not site["is_observed"]]


class ModelLogDensity:
    """The unnormalised log density of a NumPyro model's latent sites in the unconstrained space,
    flattened to R^d: log pi~(u) = -potential(u) (log joint plus the log-Jacobian of the
    constraining transforms). Built by `log_target_from_model`.

    Call it on one flat point `u` of shape `(d,)`. `site_names` and `unravel` give the layout
    (sites in sorted order, each flattened in C order); `unconstrain` maps constrained draws
    (e.g. `mcmc.get_samples()`) to flat unconstrained points, `constrain` maps back.
    `log_likelihood(u)` and `log_prior(u)` split it: the observed sites (and `numpyro.factor`
    terms) and the rest, log-Jacobian included, so that `log_prior(u) + log_likelihood(u)` is
    `self(u)`.
    """

    def __init__(self, model, model_args, model_kwargs, potential_fn, unravel, site_names, dim):
        self.model = model
        self.model_args = model_args
        self.model_kwargs = model_kwargs
        self.potential_fn = potential_fn
        self.unravel = unravel
        self.site_names = site_names
        self.dim = dim

    def __call__(self, u: Float[Array, " d"]) -> Float[Array, ""]:
        u = jnp.asarray(u)
        if u.shape != (self.dim,):
            raise ValueError(
                f"The model's unconstrained space has dimension {self.dim}: expected one point of"
                f" shape ({self.dim},), got {u.shape}."
            )
        # blocked: the model's sites stay out of any model this is called from (e.g. a factor)
        with numpyro.handlers.block():
            return -self.potential_fn(self.unravel(u))

    def log_likelihood(self, u: Float[Array, " d"]) -> Float[Array, ""]:
        """log p(observations | latents) at one flat point: the log densities of the model's
        observed sample sites, `numpyro.factor` terms included, each scaled as in the joint."""
        u = jnp.asarray(u)
        with numpyro.handlers.block():
            params = constrain_fn(self.model, self.model_args, self.model_kwargs, self.unravel(u))
            model = numpyro.handlers.substitute(numpyro.handlers.seed(self.model, 0), data=params)
            trace = numpyro.handlers.trace(model).get_trace(*self.model_args, **self.model_kwargs)
        total = jnp.zeros((), u.dtype)
        for site in trace.values():
            if site["type"] == "sample" and site["is_observed"]:
                log_prob = site["fn"].log_prob(site["value"])
                if site.get("scale") is not None:
                    log_prob = site["scale"] * log_prob
                total = total + jnp.sum(log_prob)
        return total

    def log_prior(self, u: Float[Array, " d"]) -> Float[Array, ""]:
        """The log density of the latents without the observations (the prior in the
        unconstrained space, log-Jacobian included): `self(u) - log_likelihood(u)`."""
        return self(u) - self.log_likelihood(u)

    def sample_prior(self, key, n: int) -> Float[Array, "n d"]:
        """`n` flat unconstrained draws from the model's prior (`numpyro.infer.Predictive`)."""
        from numpyro.infer import Predictive

        draws = Predictive(self.model, num_samples=n, return_sites=list(self.site_names))(
            key, *self.model_args, **self.model_kwargs
        )
        return self.unconstrain({name: draws[name] for name in self.site_names})

    def unconstrain(self, samples: dict[str, ArrayLike]) -> Float[Array, "n d"]:
        """Constrained draws `{site: (n, *site_shape)}` to flat unconstrained points `(n, d)`
        (`unconstrained_draws`)."""
        return unconstrained_draws(self.model, samples, self.model_args, self.model_kwargs)

    def constrain(self, u: Float[ArrayLike, "n d"]) -> dict[str, Array]:
        """Flat unconstrained points `(n, d)` to constrained values `{site: (n, *site_shape)}`."""
        u = jnp.asarray(u)
        if u.ndim != 2 or u.shape[1] != self.dim:
            raise ValueError(f"u must have shape (n, {self.dim}), got {u.shape}.")

        def one(point):
            return constrain_fn(
                self.model, self.model_args, self.model_kwargs, self.unravel(point)
            )

        return jax.vmap(one)(u)

    def __repr__(self) -> str:
        return f"ModelLogDensity(dim={self.dim}, sites={list(self.site_names)})"


def log_target_from_model(
    model: Callable, *model_args: Any, **model_kwargs: Any
) -> ModelLogDensity:
    """The unnormalised log density of a NumPyro model's latent sites, for
    `importance_diagnostics`.

    Uses `numpyro.infer.util.initialize_model` (the same potential NUTS uses): log pi~ = -potential
    on the UNCONSTRAINED space, where constrained sites (a scale, a simplex) are mapped to R^k and
    the log-Jacobian is included. A flow compared with it must therefore live in that
    unconstrained space (fit it to `log_density.unconstrain(mcmc.get_samples())`), and its samples
    are mapped back with `log_density.constrain`. The normalising constant Z is the model's
    marginal likelihood p(observations).

    **Arguments:**

    - `model`: a NumPyro model with continuous latent sites.
    - `model_args`, `model_kwargs`: its arguments (e.g. the observed data).

    **Returns:** a `ModelLogDensity` acting on one flat point of shape `(d,)`, with `dim`,
    `site_names`, `unravel`, `unconstrain` and `constrain`.
    """
    if not callable(model):
        raise TypeError(f"model must be a NumPyro model (a callable), got {type(model).__name__}.")
    # The key only picks the initial point, of which only the structure is used.
    info = initialize_model(
        jax.random.PRNGKey(0), model, model_args=model_args, model_kwargs=model_kwargs
    )
    flat, unravel = ravel_pytree(info.param_info.z)
    if flat.size == 0:
        raise ValueError("The model has no continuous latent sites.")
    return ModelLogDensity(
        model, model_args, model_kwargs, info.potential_fn, unravel,
        tuple(sorted(info.param_info.z)), int(flat.size),
    )
