"""`fit`: learn the fields of a stochastic interpolant from samples and return an `SIFlow`."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray
from numpyro.distributions import constraints
from numpyro.distributions.transforms import AffineTransform, IndependentTransform
from tqdm.auto import tqdm

from ._conditional import ConditionalSIFlow, ConditionedField
from ._constrained import ConstrainedSIFlow, is_unconstrained, to_unconstrained
from ._distribution import SIFlow, Standardization
from ._interpolants import (
    AbstractInterpolant,
    AbstractOneSidedInterpolant,
    MirrorInterpolant,
    OneSidedLinearInterpolant,
)
from ._networks import FieldMLP
from ._objectives import (
    AbstractTimeSampler,
    UniformTime,
    sample_coupling,
    score_loss,
    velocity_loss,
)

__all__ = ["fit", "check_data"]


def check_data(data: ArrayLike, name: str = "data", dim: int | None = None) -> Array:
    """Validate training samples: a finite floating array of shape (N, d) with N >= 1.

    Raises `ValueError` / `TypeError` naming the problem.
    """
    if hasattr(data, "posterior") and not hasattr(data, "shape"):
        raise TypeError(
            f"{name} looks like an ArviZ InferenceData; pass an array of draws of shape (N, d)."
        )
    array = jnp.asarray(data)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a floating-point array, got dtype {array.dtype}. Cast it to float"
            " (and dequantise discrete data first)."
        )
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (N, d), got shape {array.shape}.")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}); need at least one sample.")
    if array.shape[1] == 0:
        raise ValueError(f"{name} has zero dimensions (shape {array.shape}).")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}), got {array.shape}.")
    finite = jnp.isfinite(array)
    if not bool(jnp.all(finite)):
        bad_rows = np.flatnonzero(~np.asarray(jnp.all(finite, axis=1)))
        raise ValueError(
            f"{name} contains NaN or inf in {bad_rows.size} row(s), first at row {bad_rows[0]};"
            " remove or impute them before fitting."
        )
    return array


# Dimensions up to which fit's default network is deep and narrow (see `default_network_size`).
DEEP_NETWORK_MAX_DIM = 16


def default_network_size(dim: int) -> tuple[int, int]:
    """`(width, depth)` of `fit`'s default `FieldMLP` for `dim`-dimensional data.

    Up to `DEEP_NETWORK_MAX_DIM` (16) dimensions: width 64, depth 6; above: width 128, depth 3.
    Evidence (density benchmark's configuration study, same optimiser steps, docs/benchmarks.md
    "configurations of fit"): on 2-d and 10-d data the deep, narrow network lowered the held-out
    NLL (checkerboard 3.743 -> 3.615 nats, sbibm gaussian_linear -0.813 -> -0.835) at ~20 % less
    CPU per step, but on the small 30-d and 64-d sets (456 and 1438 points) it was worse by 5 and
    11 nats (it overfits there). The boundary lies between the measured 10 and 30 dimensions.
    """
    return (64, 6) if dim <= DEEP_NETWORK_MAX_DIM else (128, 3)


def _network_factory(width, depth, residual, n_frequencies, activation, context_dim):
    def make(dim, key, dtype):
        return FieldMLP(
            dim, width=width, depth=depth, residual=residual, n_frequencies=n_frequencies,
            activation=activation, context_dim=context_dim, key=key, dtype=dtype,
        )

    return make


def _check_context_network(network, name, dim, context_dim, dtype):
    """A user network must take (t, x, context) when fit is given a context."""
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


def fit(
    key: PRNGKeyArray,
    data: Float[ArrayLike, "N d"],
    *,
    context: Float[ArrayLike, "N k"] | None = None,
    support: constraints.Constraint | None = None,
    interpolant: AbstractInterpolant | None = None,
    base: dist.Distribution | None = None,
    learn_score: bool | None = None,
    sampler: str = "ode",
    eps: float | Callable | None = None,
    velocity_network: eqx.Module | None = None,
    score_network: eqx.Module | None = None,
    width: int | None = None,
    depth: int | None = None,
    residual: bool = False,
    n_frequencies: int = 4,
    activation: str = "silu",
    time_sampler: AbstractTimeSampler | None = None,
    antithetic: bool = True,
    batch_size: int = 512,
    max_steps: int = 10_000,
    max_epochs: int | None = None,
    learning_rate: float = 5e-3,
    weight_decay: float = 0.0,
    optimizer: optax.GradientTransformation | None = None,
    ema_decay: float | None = None,
    val_prop: float = 0.1,
    val_repeats: int = 8,
    max_patience: int | None = None,
    val_window: int = 5,
    min_steps_between_validations: int = 100,
    standardize: bool = True,
    show_progress: bool = True,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[SIFlow | ConstrainedSIFlow | ConditionalSIFlow, dict[str, Any]]:
    """Learn a stochastic-interpolant flow from samples; returns `(flow, history)`.

    The velocity b is learned by the quadratic objective L_b (antithetic where gamma > 0), and the
    score by L_s when `learn_score` (default: when the sampler needs it and the interpolant is
    two-sided; a one-sided interpolant's score follows from the velocity). MATH.md section 2.

    Training runs whole epochs (one pass over the shuffled training set) as one jitted
    `lax.scan` (several epochs per call when epochs are short); after each call the loss on a
    held-out validation split (fixed noise, so checkpoints are compared on common random numbers)
    decides early stopping, and the best parameters are kept.

    **Arguments:**

    - `key`: a `jax.random` key.
    - `data`: samples, shape `(N, d)`, finite floats (`(N, k, k)` for a matrix `support`).
    - `context`: optional, shape `(N, k)`: one context vector per sample (e.g. simulated data y
      for parameters theta). The fields then take the context, `f(t, x, context)`, and `fit`
      returns a `ConditionalSIFlow` for p(data | context); the context is standardised inside
      the model when `standardize`.
    - `support`: the samples' support, a NumPyro constraint (e.g. `constraints.positive`,
      `constraints.interval(0, 1)`, `constraints.simplex`, `constraints.positive_definite`). The
      flow is fitted to `biject_to(support).inv(data)` and returned as a `ConstrainedSIFlow` on
      `support` (its `log_prob` includes the log-Jacobian); rows outside the support or on its
      boundary raise `ValueError` naming them. Default (or `real`, `real_vector`): no transform.
    - `interpolant`: default `OneSidedLinearInterpolant()` (flow matching / rectified flow with a
      standard-normal base). `OneSidedTrigonometricInterpolant()` is sometimes better but can
      stall: on standardised, nearly isotropic data its optimal velocity has no linear part and
      training may sit on a plateau at the zero field (docs/guide.md).
    - `base`: rho0 in data space (the unconstrained space, with `support`) for a two-sided
      interpolant (any NumPyro distribution with event shape (d,)); default standard normal in the
      standardised space.
    - `learn_score`: learn a score network too (needs gamma > 0).
    - `sampler`, `eps`: the returned flow's sampler (`"ode"` or `"sde"` with noise level `eps`).
    - `velocity_network`, `score_network`: your own Equinox modules `f(t, x)` (`f(t, x, context)`
      with a context) instead of the default `FieldMLP(width, depth, residual, n_frequencies,
      activation, context_dim)`.
    - `width`, `depth`: the default network's size; default `None` picks by the data's dimension
      d: width 64, depth 6 for d <= 16, width 128, depth 3 above (`default_network_size`; the
      density benchmark is the evidence: deeper and narrower fits sharp low-dimensional
      densities better, but overfits small high-dimensional data sets).
    - `time_sampler`: default `UniformTime()` for the velocity; the score uses the same sampler.
    - `antithetic`: antithetic estimators where gamma > 0.
    - `batch_size`, `learning_rate`, `optimizer` (default Adam with warm-up and cosine decay
      over `max_steps`).
    - `weight_decay`: decoupled weight decay of the default optimiser (AdamW; the decay per step
      is `learning_rate` times this, following the schedule). Default 0 (plain Adam).
    - `ema_decay`: keep an exponential moving average of the parameters with this decay (e.g.
      0.999; the decay ramps up as min(ema_decay, (1 + k) / (10 + k)) at step k), validate it and
      return it instead of the raw parameters. Default `None`: no average.
    - `max_steps`: optimiser-step budget; `max_epochs` (default: enough epochs for `max_steps`).
    - `val_prop`: fraction held out for validation (0 disables early stopping); `val_repeats`
      noise draws per validation point; `max_patience`: epochs without improvement before
      stopping (default: a fifth of the epochs, at least 20 validations' worth); `val_window`:
      early stopping and the choice of the returned parameters use the mean of the last
      `val_window` validation losses (default 5). One validation's flow-matching loss moves by
      more than the late improvements of training, and its minimum over a run is a lucky draw:
      kept on single validations (`val_window=1`), one sbibm two_moons fit in three stopped at
      11 200 of 25 984 steps with held-out NLL -3.32 nats, where the window of 5 runs to the end
      (-3.58; docs/guide.md, "Early stopping").
    - `standardize`: learn in the standardised space (data mean and scale stored in the flow).
    - `show_progress`: a tqdm progress bar over epochs (rounds of epochs for small data).
    - `rtol`, `atol`: the returned flow's solver tolerances.
    - `min_steps_between_validations`: with short epochs (small data), this many steps' worth of
      epochs run in one jitted call between validations (a "round").

    **Returns:** `(flow, history)`: `flow` an `SIFlow` (a `ConstrainedSIFlow` with `support`, a
    `ConditionalSIFlow` with `context`);
    `history["train_loss"]` and `history["val_loss"]` (one entry
    per validation, numpy arrays), `history["epoch"]` (epochs completed at each entry),
    `history["best_epoch"]` (epochs completed when the kept parameters were validated),
    `history["val_loss_smoothed"]` (the windowed means early stopping used),
    `history["stopped_early"]`, `history["num_steps"]` (optimiser steps taken),
    `history["steps_per_epoch"]`.
    """
    interpolant = OneSidedLinearInterpolant() if interpolant is None else interpolant
    if not isinstance(interpolant, AbstractInterpolant):
        raise TypeError(f"interpolant must be an AbstractInterpolant, got {interpolant!r}.")
    if isinstance(interpolant, MirrorInterpolant):
        raise ValueError(
            "fit returns an SIFlow, which needs a tractable base; a MirrorInterpolant has none."
            " Train its score or denoiser with nsi.score_loss / nsi.denoiser_loss directly."
        )
    interpolant.check_boundary_conditions()
    if is_unconstrained(support):
        support = None
    else:
        data = to_unconstrained(data, support)[0]
    data = check_data(data)
    n, dim = data.shape
    context_dim = 0
    if context is not None:
        context = check_data(context, "context")
        if context.shape[0] != n:
            raise ValueError(
                f"context has {context.shape[0]} row(s) but data has {n}; give one context row"
                " per sample."
            )
        context = context.astype(data.dtype)
        context_dim = context.shape[1]
    if base is not None and isinstance(interpolant, AbstractOneSidedInterpolant):
        raise ValueError(
            f"{type(interpolant).__name__} is one-sided (standard-normal base); omit `base` or use"
            " a two-sided interpolant."
        )
    if base is not None and tuple(base.event_shape) != (dim,):
        raise ValueError(
            f"base must have event shape ({dim},) to match the data, got {tuple(base.event_shape)}."
        )
    if sampler not in ("ode", "sde"):
        raise ValueError(f"sampler must be 'ode' or 'sde', got {sampler!r}.")
    one_sided = isinstance(interpolant, AbstractOneSidedInterpolant)
    if learn_score is None:
        learn_score = sampler == "sde" and not one_sided
    if learn_score and interpolant.is_deterministic:
        raise ValueError(
            "Learning a score needs a stochastic interpolant (gamma > 0), e.g."
            " LinearInterpolant(BrownianGamma(1.0)); a one-sided interpolant needs no score."
        )
    if sampler == "sde" and not (learn_score or one_sided):
        raise ValueError("SDE sampling of a two-sided interpolant needs learn_score=True.")
    if not 0.0 <= val_prop < 1.0:
        raise ValueError(f"val_prop must be in [0, 1), got {val_prop}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if isinstance(val_window, bool) or not isinstance(val_window, int) or val_window < 1:
        raise ValueError(f"val_window must be a positive integer, got {val_window!r}.")
    if isinstance(weight_decay, bool) or not (
        isinstance(weight_decay, numbers.Real) and 0.0 <= weight_decay < math.inf
    ):
        raise ValueError(f"weight_decay must be a non-negative number, got {weight_decay!r}.")
    if weight_decay > 0 and optimizer is not None:
        raise ValueError(
            "weight_decay applies to fit's default optimiser; with your own `optimizer`, add the"
            " decay there (e.g. optax.adamw) and leave weight_decay at 0."
        )
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay!r}.")

    dtype = data.dtype
    key_split, key_vel, key_score, key_train, key_val = jax.random.split(key, 5)

    # ---- split, standardise ----------------------------------------------------------------
    n_val = int(round(val_prop * n)) if val_prop > 0 else 0
    if val_prop > 0 and (n_val < 1 or n - n_val < 1):
        raise ValueError(
            f"{n} sample(s) cannot be split into training and validation sets with"
            f" val_prop={val_prop}; give more data or val_prop=0."
        )
    perm = jax.random.permutation(key_split, n)
    train, val = data[perm[n_val:]], data[perm[:n_val]]
    standardization = Standardization.from_data(train) if standardize else None
    to_flow_space = standardization.forward if standardize else (lambda x: x)
    # (data, context) pairs in the fields' space; the context is None without one
    train_set, val_set = (to_flow_space(train), None), (to_flow_space(val), None)
    context_standardization = None
    if context is not None:
        train_context, val_context = context[perm[n_val:]], context[perm[:n_val]]
        if standardize:
            context_standardization = Standardization.from_data(train_context)
            train_context = context_standardization.forward(train_context)
            val_context = context_standardization.forward(val_context)
        train_set, val_set = (train_set[0], train_context), (val_set[0], val_context)

    flow_base = None
    if base is not None:
        flow_base = base
        if standardization is not None:
            # IndependentTransform: one affine map of the whole event, so log|det| sums over d.
            flow_base = dist.TransformedDistribution(
                base,
                IndependentTransform(
                    AffineTransform(
                        -standardization.shift / standardization.scale,
                        1.0 / standardization.scale,
                    ),
                    1,
                ),
            )

    def base_sample(k, m):
        if flow_base is None:
            return jax.random.normal(k, (m, dim), dtype=dtype)
        return flow_base.sample(k, (m,))

    # ---- networks ----------------------------------------------------------------------------
    default_width, default_depth = default_network_size(dim)
    width = default_width if width is None else width
    depth = default_depth if depth is None else depth
    make = _network_factory(width, depth, residual, n_frequencies, activation, context_dim)
    velocity_net = velocity_network if velocity_network is not None else make(dim, key_vel, dtype)
    networks = {"velocity": velocity_net}
    if learn_score:
        networks["score"] = (
            score_network if score_network is not None else make(dim, key_score, dtype)
        )
    if context is not None:
        for name, network in (("velocity_network", velocity_network),
                              ("score_network", score_network)):
            if network is not None:
                _check_context_network(network, name, dim, context_dim, dtype)
    time_sampler = UniformTime() if time_sampler is None else time_sampler

    def per_sample_losses(nets, t, x0, x1, z, context_row):
        # with a context, the fields are the networks with this sample's context bound
        fields = nets if context_row is None else {
            name: ConditionedField(net, context_row) for name, net in nets.items()
        }
        total = velocity_loss(fields["velocity"], interpolant, t, x0, x1, z, antithetic=antithetic)
        if "score" in fields:
            total = total + score_loss(fields["score"], interpolant, t, x0, x1, z,
                                       antithetic=antithetic)
        return total

    def batch_loss(nets, k, batch):
        x1, context_batch = batch
        k_time, k_coupling = jax.random.split(k)
        t, weight = time_sampler.sample(k_time, x1.shape[0], dtype=x1.dtype)
        x0, z = sample_coupling(k_coupling, interpolant, x1, base_sample)
        losses = jax.vmap(per_sample_losses, in_axes=(None, 0, 0, 0, 0, 0))(
            nets, t, x0, x1, z, context_batch
        )
        return jnp.mean(weight * losses)

    # ---- optimiser ---------------------------------------------------------------------------
    n_train = train_set[0].shape[0]
    batch_size = min(batch_size, n_train)
    steps_per_epoch = max(n_train // batch_size, 1)
    if max_epochs is None:
        max_epochs = max(math.ceil(max_steps / steps_per_epoch), 1)
    # Small data sets make short epochs: run several per jitted call so that validation (and the
    # trip back to Python) happens at most every `min_steps_between_validations` steps.
    epochs_per_round = max(1, math.ceil(min_steps_between_validations / steps_per_epoch))
    # Spread max_epochs evenly over the rounds (never a round longer than max_epochs), so at most
    # n_rounds - 1 epochs beyond max_epochs are run.
    n_rounds = max(1, max_epochs // epochs_per_round)
    epochs_per_round = math.ceil(max_epochs / n_rounds)
    total_steps = n_rounds * epochs_per_round * steps_per_epoch
    if max_patience is None:
        max_patience = max(20 * epochs_per_round, n_rounds * epochs_per_round // 5)
    patience_rounds = max(1, math.ceil(max_patience / epochs_per_round))
    if optimizer is None:
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, learning_rate, min(500, max(total_steps // 10, 1)), max(total_steps, 2),
            end_value=learning_rate * 1e-2,
        )
        adam = (optax.adamw(schedule, weight_decay=weight_decay) if weight_decay > 0
                else optax.adam(schedule))
        optimizer = optax.chain(optax.clip_by_global_norm(10.0), adam)

    params, static = eqx.partition(networks, eqx.is_inexact_array)
    # what training carries besides the parameters: the optimiser's state and, with ema_decay,
    # the average and a step count
    state = (optimizer.init(params), params if ema_decay is not None else None,
             jnp.zeros((), jnp.int32))

    def step(carry, inputs):
        params, (opt_state, ema, count) = carry
        batch, k_step = inputs
        loss, grads = jax.value_and_grad(
            lambda p: batch_loss(eqx.combine(p, static), k_step, batch)
        )(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if ema is not None:
            decay = jnp.minimum(ema_decay, (1.0 + count) / (10.0 + count)).astype(dtype)
            ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
        return (params, (opt_state, ema, count + 1)), loss

    def epoch(carry, k):
        k_perm, k_steps = jax.random.split(k)
        order = jax.random.permutation(k_perm, n_train)[: steps_per_epoch * batch_size]
        batches = jax.tree.map(
            lambda a: a[order].reshape(steps_per_epoch, batch_size, a.shape[-1]), train_set
        )
        keys = jax.random.split(k_steps, steps_per_epoch)
        carry, losses = jax.lax.scan(step, carry, (batches, keys))
        return carry, jnp.mean(losses)

    @eqx.filter_jit
    def run_round(params, state, k):
        keys = jax.random.split(k, epochs_per_round)
        (params, state), losses = jax.lax.scan(epoch, (params, state), keys)
        return params, state, jnp.mean(losses)

    if n_val > 0:
        val_repeated = jax.tree.map(lambda a: jnp.tile(a, (val_repeats, 1)), val_set)

        @eqx.filter_jit
        def validation_loss(params):
            return batch_loss(eqx.combine(params, static), key_val, val_repeated)

    def evaluated(params, state):
        # the parameters validated and returned: the moving average when there is one
        ema = state[1]
        return params if ema is None else ema

    history_train, history_val, history_epoch, history_smoothed = [], [], [], []
    best_params, best_val, best_epoch, patience = params, jnp.inf, 0, 0
    stopped_early = False
    bar = tqdm(range(n_rounds), desc="fit", disable=not show_progress, leave=False,
               unit="round" if epochs_per_round > 1 else "epoch")
    for round_index in bar:
        key_train, key_round = jax.random.split(key_train)
        params, state, train_loss = run_round(params, state, key_round)
        epochs_done = (round_index + 1) * epochs_per_round
        train_loss = float(train_loss)
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"fit: the training loss became {train_loss} by epoch {epochs_done}; lower the"
                " learning rate or check the data scale."
            )
        history_train.append(train_loss)
        history_epoch.append(epochs_done)
        if n_val > 0:
            current = evaluated(params, state)
            val_loss = float(validation_loss(current))
            history_val.append(val_loss)
            # the mean of the last val_window validations (fewer at the start) decides: the
            # kept parameters are those validated last in the best window
            recent = history_val[-val_window:]
            smoothed = sum(recent) / len(recent)
            history_smoothed.append(smoothed)
            if smoothed < best_val:
                best_val, best_params, best_epoch, patience = smoothed, current, epochs_done, 0
            else:
                patience += 1
            bar.set_postfix(epoch=epochs_done, train=f"{train_loss:.4f}", val=f"{val_loss:.4f}",
                            refresh=False)
            if patience >= patience_rounds:
                stopped_early = True
                break
        else:
            best_params, best_epoch = evaluated(params, state), epochs_done
            bar.set_postfix(epoch=epochs_done, train=f"{train_loss:.4f}", refresh=False)
    bar.close()

    trained = eqx.combine(best_params, static)
    options = dict(base=flow_base, dim=dim, sampler=sampler, eps=eps, rtol=rtol, atol=atol,
                   standardization=standardization)
    if context is not None:
        flow = ConditionalSIFlow(
            interpolant, trained["velocity"], trained.get("score"), context_dim=context_dim,
            context_standardization=context_standardization, support=support, **options,
        )
    else:
        flow = SIFlow(interpolant, trained["velocity"], trained.get("score"), **options)
        if support is not None:
            flow = ConstrainedSIFlow(flow, support)
    history = {
        "train_loss": np.asarray(history_train),
        "val_loss": np.asarray(history_val),
        "val_loss_smoothed": np.asarray(history_smoothed),
        "best_epoch": best_epoch,
        "stopped_early": stopped_early,
        "epoch": np.asarray(history_epoch),
        "num_steps": len(history_train) * epochs_per_round * steps_per_epoch,
        "steps_per_epoch": steps_per_epoch,
    }
    return flow, history
