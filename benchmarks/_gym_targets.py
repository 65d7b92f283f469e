"""Targets from the Inference Gym (google/inference-gym, Apache-2.0; JAX substrate of TensorFlow
Probability) with their published ground truths, as flat log densities on the unconstrained
space for `benchmarks/mcmc.py --suite real`.

Each target's variables are mapped to one unconstrained vector z by its
`default_event_space_bijector` (with the log-Jacobian added to the log density), and scored
through its `identity` sample transformation against `ground_truth_mean` and
`ground_truth_standard_deviation` (computed by the Gym's authors from long NUTS runs).
Needs the bench extra (`inference-gym`, `tfp-nightly`: TensorFlow Probability's JAX substrate for
this JAX); no data is downloaded (the models used here ship their data or simulate it; the Gym's
models on real data sets through TensorFlow Datasets, e.g. German credit and radon, are left
out for that reason).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

#: target id -> (Inference Gym class, what it is)
GYM_TARGETS = {
    "eight_schools": ("EightSchools", "the eight-schools hierarchical model, centred (a funnel)"),
    "brownian_motion": ("BrownianMotionUnknownScalesMissingMiddleObservations",
                        "a Brownian motion observed with noise, its middle 10 of 30 points"
                        " missing, both noise scales unknown"),
    "stochastic_volatility": ("StochasticVolatilitySP500Small",
                              "stochastic volatility of 100 days of S&P 500 returns"),
}


def gym_parts(target_id: str) -> dict:
    """dim, logdensity(z), first(z) (the identity transformation's values, flattened), their
    ground-truth means and standard deviations, second(z) = first(z)^2 and its truth."""
    import tree
    from inference_gym import using_jax as gym

    class_name, note = GYM_TARGETS[target_id]
    target = getattr(gym.targets, class_name)()
    shapes = [tuple(s) for s in tree.flatten(target.event_shape)]
    bijectors = tree.flatten(target.default_event_space_bijector)
    inverse_shapes = [tuple(b.inverse_event_shape(s)) for b, s in zip(bijectors, shapes, strict=True)]
    sizes = [math.prod(s) for s in inverse_shapes]
    dim = sum(sizes)
    offsets = np.cumsum([0, *sizes])

    def structured(z):
        values, log_det = [], 0.0
        pieces = zip(bijectors, inverse_shapes, offsets[:-1], offsets[1:], strict=True)
        for b, shape, start, stop in pieces:
            piece = z[start:stop].reshape(shape)
            values.append(b.forward(piece))
            log_det = log_det + b.forward_log_det_jacobian(piece, event_ndims=len(shape))
        return tree.unflatten_as(target.event_shape, values), log_det

    def logdensity(z):
        x, log_det = structured(z)
        return target.unnormalized_log_prob(x) + log_det

    transformation = target.sample_transformations["identity"]

    def flat(values):
        return jnp.concatenate([jnp.ravel(jnp.asarray(v)) for v in tree.flatten(values)])

    def first_one(z):
        return flat(transformation(structured(z)[0]))

    def first(samples):
        samples = jnp.asarray(samples)
        return jax.vmap(first_one)(samples.reshape(-1, dim)).reshape(samples.shape[:-1] + (-1,))

    mean = np.asarray(flat(transformation.ground_truth_mean), dtype=np.float64)
    sd = np.asarray(flat(transformation.ground_truth_standard_deviation), dtype=np.float64)
    return {
        "dim": dim, "logdensity": logdensity, "first": first, "first_truth": mean,
        "first_sd": sd, "second": lambda samples: first(samples) ** 2,
        "second_truth": sd**2 + mean**2,
        "note": f"Inference Gym `{class_name}`: {note}; d = {dim}.",
    }
