"""`fit`: `build_flow` then `train`, in one call."""

from __future__ import annotations

from collections.abc import Iterator

import equinox as eqx
import jax
import numpyro.distributions as dist
from jaxtyping import ArrayLike, Float, PRNGKeyArray
from numpyro.distributions import constraints

from ._build import assemble_flow, check_model_options, prepare_samples
from ._checks import reject_unknown
from ._conditional import ConditionalSIFlow
from ._constrained import ConstrainedSIFlow
from ._distribution import SIFlow
from ._interpolants import AbstractInterpolant
from ._networks import FieldMLPSpec
from ._solvers import SolverSettings
from ._training import (
    RENAMED_TRAIN_OPTIONS,
    TRAIN_DEFAULTS,
    TrainHistory,
    check_train_options,
    flow_space,
    split_samples,
    train_flow_space,
)

__all__ = ["fit"]

_BUILD_OPTIONS = ("context", "support", "interpolant", "base", "learn_score", "velocity_network",
                  "score_network", "network", "standardize", "settings")

#: Options of earlier versions of `fit` that configure the flow, and where they are now.
RENAMED_BUILD_OPTIONS = {
    name: f"network=nsi.FieldMLPSpec({name}=...)"
    for name in ("width", "depth", "residual", "n_frequencies", "activation")
} | {
    "sampler": "settings=nsi.SolverSettings(sampler=...)",
    "eps": "settings=nsi.SolverSettings(sampler=nsi.SDESampler(eps))",
    "rtol": "settings=nsi.SolverSettings(rtol=...)",
    "atol": "settings=nsi.SolverSettings(atol=...)",
}


def fit(
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
    **train_options,
) -> tuple[SIFlow | ConstrainedSIFlow | ConditionalSIFlow, TrainHistory]:
    """Learn a stochastic-interpolant flow from samples: `build_flow` and `train` in one call;
    returns `(flow, history)`.

    The keyword arguments shown are `build_flow`'s (what the flow is: interpolant, networks,
    base, standardisation, context, support, solver settings); `train_options` are `train`'s
    (`num_steps`, `batch_size`, `learning_rate`, `weight_decay`, `optimizer`, `ema_decay`,
    `objective`, `validation`, `early_stopping`, `show_progress`, ...). The validation share is
    held out before the standardisation is measured, so it is measured on the training part only.

    ```python
    flow, history = nsi.fit(key, data)                           # the defaults
    flow, history = nsi.fit(key, data, num_steps=2_000, network=nsi.FieldMLPSpec(width=32))
    ```

    **Returns:** `(flow, history)`: an `SIFlow` (a `ConstrainedSIFlow` with `support`, a
    `ConditionalSIFlow` with `context`) and a `TrainHistory`.
    """
    unknown = {name: value for name, value in train_options.items() if name not in TRAIN_DEFAULTS}
    reject_unknown(unknown, "fit", RENAMED_BUILD_OPTIONS | RENAMED_TRAIN_OPTIONS,
                   known=(*_BUILD_OPTIONS, *TRAIN_DEFAULTS))
    train_options = check_train_options(train_options, "fit")
    if train_options["opt_state"] is not None:
        raise ValueError("fit builds a new flow; continue a run with nsi.train(..., opt_state=).")
    model = check_model_options(
        support=support, interpolant=interpolant, base=base, learn_score=learn_score,
        velocity_network=velocity_network, score_network=score_network, network=network,
        standardize=standardize, settings=settings,
    )
    if isinstance(data, Iterator):
        raise TypeError(
            "fit builds its flow from the samples (standardisation, network size), so it needs"
            " an array; for a stream of batches, build the flow on a sample of the data, then"
            " train on the stream: flow = nsi.build_flow(key, sample); nsi.train(key, flow,"
            " stream)."
        )
    samples = prepare_samples(data, context, model.support)
    key_split, key_velocity, key_score, key_train, key_val = jax.random.split(key, 5)
    train_part, val_part = split_samples(key_split, samples, train_options["validation"])
    flow = assemble_flow(key_velocity, key_score, train_part, model)
    val_set = None if val_part is None else flow_space(flow, val_part)
    return train_flow_space((key_train, key_val), flow, flow_space(flow, train_part), val_set,
                            train_options, description="fit")
