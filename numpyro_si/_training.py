"""`train`: fit the fields of a flow to samples by the quadratic objectives, in jitted rounds.

The pieces stand alone and are tested alone: `plan_steps` (how many steps, epochs and rounds),
`default_optimizer`, `ema_update` (the moving average of the parameters), `EarlyStopping` (when
to stop and which parameters to keep), and the loop that uses them.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree
from tqdm.auto import tqdm

from ._build import _Samples, prepare_samples
from ._checkpoint import Checkpoint, as_checkpoint, fingerprint, read_checkpoint, write_checkpoint
from ._checks import check_data, check_positive_int, check_real, reject_unknown
from ._conditional import ConditionalSIFlow, ConditionedField
from ._constrained import ConstrainedSIFlow
from ._devices import points_axis, split_leading
from ._distribution import SIFlow, is_standard_normal
from ._dynamics import Fields
from ._flow import AbstractFlow
from ._objectives import (
    AbstractTimeSampler,
    UniformTime,
    sample_coupling,
    score_loss,
    velocity_loss,
)
from ._version import __version__

__all__ = [
    "train",
    "batches",
    "plan_steps",
    "StepPlan",
    "default_optimizer",
    "ema_update",
    "EarlyStopping",
    "StoppingState",
    "Validation",
    "Objective",
    "TrainHistory",
]


# ----------------------------------------------------------------------------------------------
# settings objects
# ----------------------------------------------------------------------------------------------


class Objective(eqx.Module):
    """How the training loss is estimated: L_b for the velocity plus L_s for a score network
    (docs/math.md section 2).

    - `time_sampler`: draws the training times (default `UniformTime()`).
    - `antithetic`: the antithetic estimators where gamma > 0 (default True).
    """

    time_sampler: AbstractTimeSampler = UniformTime()
    antithetic: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        if not isinstance(self.time_sampler, AbstractTimeSampler):
            raise TypeError(f"time_sampler must be an AbstractTimeSampler, got {self.time_sampler!r}.")


class Validation(eqx.Module):
    """The validation split and how often it is evaluated.

    - `fraction`: share of the samples held out when `train` gets no `val_data` (0 disables
      validation and early stopping); default 0.1.
    - `repeats`: noise draws (t, x0, z) per validation point, fixed for the whole run so that
      validations are compared on common random numbers; default 8.
    - `every`: at least this many optimiser steps between validations (whole epochs run
      between them; small data sets run several epochs per validation); default 100.
    """

    fraction: float = 0.1
    repeats: int = 8
    every: int = 100

    def __check_init__(self):
        check_real("Validation.fraction", self.fraction, low=0.0, high=1.0, high_open=True)
        check_positive_int("Validation.repeats", self.repeats)
        check_positive_int("Validation.every", self.every)

    def held_out(self, n: int) -> int:
        """How many of `n` samples `train` holds out for validation (none when `fraction` is
        0); `n - held_out(n)` are trained on."""
        return int(round(self.fraction * n)) if self.fraction > 0 else 0


class EarlyStopping(eqx.Module):
    """When training stops and which parameters it keeps.

    Validations are averaged over a moving `window` (one validation's loss moves by more than the
    late improvements of training, and its minimum over a run is a lucky draw); training stops
    when that average has not improved for `patience` epochs, and the parameters validated last
    in the best window are returned.

    - `patience`: epochs without improvement before stopping; `None` (default): a fifth of the
      planned epochs, at least 20 validations' worth.
    - `window`: validations in the moving average (default 5; 1 decides on single validations).
    """

    patience: int | None = None
    window: int = 5

    def __check_init__(self):
        if self.patience is not None:
            check_positive_int("EarlyStopping.patience", self.patience)
        check_positive_int("EarlyStopping.window", self.window)

    def patience_in_validations(self, plan: StepPlan) -> int:
        """The patience counted in validations (rounds of `plan.epochs_per_round` epochs)."""
        epochs = plan.epochs_per_round
        patience = self.patience
        if patience is None:
            patience = max(20 * epochs, plan.n_rounds * epochs // 5)
        return max(1, math.ceil(patience / epochs))

    def init(self) -> StoppingState:
        return StoppingState((), (), math.inf, 0, False, False)

    def update(self, state: StoppingState, val_loss: float, patience: int) -> StoppingState:
        """The state after one more validation loss; `patience` in validations."""
        losses = state.val_losses + (float(val_loss),)
        recent = losses[-self.window:]
        smoothed = sum(recent) / len(recent)
        means = state.smoothed + (smoothed,)
        if smoothed < state.best:
            return StoppingState(losses, means, smoothed, 0, True, False)
        waited = state.waited + 1
        return StoppingState(losses, means, state.best, waited, False, waited >= patience)


class StoppingState(NamedTuple):
    """`EarlyStopping`'s state: the validation losses so far and their windowed means, the best
    mean, the validations since it, whether the last one set a new best, and whether to stop."""

    val_losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    best: float
    waited: int
    improved: bool
    stop: bool


class StepPlan(NamedTuple):
    """How a training run is laid out (`plan_steps`).

    - `batch_size`: the batch size used (at most the number of training points).
    - `steps_per_epoch`: optimiser steps per pass over the shuffled training set.
    - `epochs_per_round`: epochs run in one jitted call, between two validations.
    - `n_rounds`: rounds planned.
    - `num_steps`: optimiser steps that will run unless early stopping ends training (a true
      cap: the last round stops there, mid-epoch if need be).
    """

    batch_size: int
    steps_per_epoch: int
    epochs_per_round: int
    n_rounds: int
    num_steps: int

    @property
    def n_epochs(self) -> int:
        """Epochs begun when `num_steps` are taken (the last one may be partial)."""
        return math.ceil(self.num_steps / self.steps_per_epoch)

    @property
    def padded(self) -> bool:
        """Whether the last round runs past `num_steps` and its extra steps are skipped."""
        return self.n_rounds * self.epochs_per_round * self.steps_per_epoch > self.num_steps


def plan_steps(
    n_train: int, *, batch_size: int = 512, num_steps: int = 10_000,
    max_epochs: int | None = None, validate_every: int = 100,
) -> StepPlan:
    """The layout of a training run on `n_train` points: at most `num_steps` optimiser steps and
    at most `max_epochs` epochs, in rounds of whole epochs of at least `validate_every` steps
    (spread evenly, so validations are equally spaced)."""
    n_train = check_positive_int("n_train", n_train)
    batch_size = min(check_positive_int("batch_size", batch_size), n_train)
    num_steps = check_positive_int("num_steps", num_steps)
    validate_every = check_positive_int("validate_every", validate_every)
    steps_per_epoch = max(n_train // batch_size, 1)
    if max_epochs is not None:
        num_steps = min(num_steps, check_positive_int("max_epochs", max_epochs) * steps_per_epoch)
    n_epochs = math.ceil(num_steps / steps_per_epoch)
    epochs_per_round = max(1, math.ceil(validate_every / steps_per_epoch))
    n_rounds = max(1, n_epochs // epochs_per_round)
    epochs_per_round = math.ceil(n_epochs / n_rounds)
    n_rounds = math.ceil(n_epochs / epochs_per_round)
    return StepPlan(batch_size, steps_per_epoch, epochs_per_round, n_rounds, num_steps)


def default_optimizer(
    learning_rate: float, num_steps: int, weight_decay: float = 0.0
) -> optax.GradientTransformation:
    """`train`'s optimiser: gradients clipped to global norm 10, then Adam (AdamW with decoupled
    `weight_decay`, the decay per step following the schedule) with a linear warm-up over
    min(500, num_steps / 10) steps and a cosine decay to 1 % of `learning_rate` at `num_steps`.

    To train in several calls (e.g. warm-started refits), build it once for their total steps
    and pass it with each call's `opt_state`.
    """
    learning_rate = check_real("learning_rate", learning_rate, low=0.0, high=1.0, low_open=True)
    weight_decay = check_real("weight_decay", weight_decay, low=0.0)
    num_steps = check_positive_int("num_steps", num_steps)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, min(500, max(num_steps // 10, 1)), max(num_steps, 2),
        end_value=learning_rate * 1e-2,
    )
    adam = (optax.adamw(schedule, weight_decay=weight_decay) if weight_decay > 0
            else optax.adam(schedule))
    return optax.chain(optax.clip_by_global_norm(10.0), adam)


def ema_update(ema: PyTree, params: PyTree, decay: float, count: Array, dtype) -> PyTree:
    """One step of the moving average of the parameters: the rate is min(decay, (1 + k) /
    (10 + k)) at step k, so early steps (far from the end) weigh little."""
    rate = jnp.minimum(decay, (1.0 + count) / (10.0 + count)).astype(dtype)
    return jax.tree.map(lambda e, p: rate * e + (1 - rate) * p, ema, params)


class TrainHistory(NamedTuple):
    """What `train` (and `fit`) did.

    - `train_loss`, `val_loss`: one entry per validation (NumPy arrays; `val_loss` is empty
      without validation); `val_loss_smoothed`: the windowed means early stopping compared.
    - `epoch`: epochs completed at each entry; `best_epoch`: epochs completed when the returned
      parameters were validated.
    - `stopped_early`: whether early stopping ended training.
    - `num_steps`: optimiser steps taken; `steps_per_epoch`.
    - `opt_state`: the optimiser state after the last step: pass it back as
      `train(..., optimizer=same_optimizer, opt_state=history.opt_state)` to continue.
    - `interrupted`: whether the user stopped training (Ctrl-C); the flow returned is then the
      best one validated so far.
    """

    train_loss: np.ndarray
    val_loss: np.ndarray
    val_loss_smoothed: np.ndarray
    epoch: np.ndarray
    best_epoch: int
    stopped_early: bool
    num_steps: int
    steps_per_epoch: int
    opt_state: Any = None
    interrupted: bool = False

    def __getitem__(self, key):
        if isinstance(key, str):  # the dict of earlier versions
            warnings.warn(
                f"history[{key!r}] is history.{key} now (the history is a TrainHistory;"
                " docs/migration.md).", FutureWarning, stacklevel=2,
            )
            return getattr(self, key)
        return tuple.__getitem__(self, key)


# ----------------------------------------------------------------------------------------------
# the loss
# ----------------------------------------------------------------------------------------------


def _batch_loss_fn(interpolant, base_sample, objective: Objective) -> Callable:
    """`batch_loss(networks, key, (x1, context))`: the mean weighted per-sample objective."""

    def per_sample(networks, t, x0, x1, z, context_row):
        # with a context, the fields are the networks with this sample's context bound
        fields = networks if context_row is None else {
            name: ConditionedField(net, context_row) for name, net in networks.items()
        }
        total = velocity_loss(fields["velocity"], interpolant, t, x0, x1, z,
                              antithetic=objective.antithetic)
        if "score" in fields:
            total = total + score_loss(fields["score"], interpolant, t, x0, x1, z,
                                       antithetic=objective.antithetic)
        return total

    def batch_loss(networks, key, batch):
        axis = points_axis()
        if axis is not None:  # data parallel: the batch split over the mesh, networks replicated
            batch = jax.tree.map(lambda a: split_leading(a, axis), batch)
        x1, context = batch
        key_time, key_coupling = jax.random.split(key)
        t, weight = objective.time_sampler.sample(key_time, x1.shape[0], dtype=x1.dtype)
        x0, z = sample_coupling(key_coupling, interpolant, x1, base_sample)
        losses = jax.vmap(per_sample, in_axes=(None, 0, 0, 0, 0, 0))(
            networks, t, x0, x1, z, context
        )
        return jnp.mean(weight * losses)

    return batch_loss


# ----------------------------------------------------------------------------------------------
# one jitted round
# ----------------------------------------------------------------------------------------------


def _step_fns(batch_loss, static, optimizer, num_steps, ema_decay, dtype):
    """`(step, capped_step)`: one optimiser step on a batch, for `lax.scan` over `(batch, key)`
    with carry `(params, (optimiser state, moving average or None, steps taken))`; the capped
    one skips steps past `num_steps` and also returns whether it ran."""

    def step(carry, inputs):
        params, (opt_state, ema, count) = carry
        batch, key = inputs
        loss, grads = jax.value_and_grad(
            lambda p: batch_loss(eqx.combine(p, static), key, batch)
        )(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if ema is not None:
            ema = ema_update(ema, params, ema_decay, count, dtype)
        return (params, (opt_state, ema, count + 1)), loss

    def capped_step(carry, inputs):
        active = carry[1][2] < num_steps
        carry, loss = jax.lax.cond(
            active, step, lambda c, _: (c, jnp.zeros((), dtype)), carry, inputs
        )
        return carry, (loss, active)

    return step, capped_step


def _round_fn(batch_loss, static, optimizer, plan: StepPlan, train_set, ema_decay, dtype):
    """`run_round(params, state, key) -> (params, state, mean training loss)`: one round of
    `plan.epochs_per_round` epochs as one jitted `lax.scan`; `state` is (optimiser state,
    moving average or None, steps taken). Steps past `plan.num_steps` are skipped."""
    n_train = train_set[0].shape[0]
    steps_per_epoch, batch_size = plan.steps_per_epoch, plan.batch_size
    step, capped_step = _step_fns(batch_loss, static, optimizer, plan.num_steps, ema_decay, dtype)

    def epoch(carry, key):
        key_perm, key_steps = jax.random.split(key)
        order = jax.random.permutation(key_perm, n_train)[: steps_per_epoch * batch_size]
        batches = jax.tree.map(
            lambda a: a[order].reshape(steps_per_epoch, batch_size, a.shape[-1]), train_set
        )
        keys = jax.random.split(key_steps, steps_per_epoch)
        if not plan.padded:
            carry, losses = jax.lax.scan(step, carry, (batches, keys))
            return carry, jnp.mean(losses)
        carry, (losses, active) = jax.lax.scan(capped_step, carry, (batches, keys))
        return carry, (jnp.sum(losses), jnp.sum(active))

    @eqx.filter_jit
    def run_round(params, state, key):
        keys = jax.random.split(key, plan.epochs_per_round)
        (params, state), losses = jax.lax.scan(epoch, (params, state), keys)
        if not plan.padded:
            return params, state, jnp.mean(losses)
        total, count = losses
        return params, state, jnp.sum(total) / jnp.maximum(jnp.sum(count), 1)

    return run_round


def _stream_round_fn(batch_loss, static, optimizer, plan: StepPlan, next_block, ema_decay,
                     dtype):
    """`run_round` for a stream of batches: each round pulls `plan.steps_per_epoch` batches
    (fewer in the last round of a stream that ends) from `next_block()` (a `(steps, batch, d)`
    pair of arrays in the fields' space) and takes one optimiser step on each (one jitted
    `lax.scan`); steps past `plan.num_steps` are skipped."""
    _, capped_step = _step_fns(batch_loss, static, optimizer, plan.num_steps, ema_decay, dtype)

    @eqx.filter_jit
    def run_block(params, state, key, block):
        keys = jax.random.split(key, block[0].shape[0])  # fewer in a stream's last round
        (params, state), (losses, active) = jax.lax.scan(
            capped_step, (params, state), (block, keys)
        )
        return params, state, jnp.sum(losses) / jnp.maximum(jnp.sum(active), 1)

    def run_round(params, state, key):
        return run_block(params, state, key, next_block())

    return run_round


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------


class _Run(NamedTuple):
    """Everything the loop needs, fixed before it starts."""

    plan: StepPlan
    run_round: Callable
    validation_loss: Callable | None
    stopping: EarlyStopping
    patience: int
    checkpoint: Checkpoint | None
    fingerprint: str | None


class _LoopState(NamedTuple):
    """The state of a run between two rounds: all a checkpoint holds."""

    rounds_done: int
    key: PRNGKeyArray
    params: PyTree
    carry: tuple  # (optimiser state, moving average or None, steps taken)
    stopping: StoppingState
    best_params: PyTree
    best_epoch: int
    stopped_early: bool
    train_losses: tuple[float, ...]
    epochs: tuple[int, ...]


def _one_round(run: _Run, state: _LoopState, description: str) -> tuple[_LoopState, dict]:
    """One jitted round, its validation and the early-stopping decision."""
    plan = run.plan
    key, key_round = jax.random.split(state.key)
    params, carry, train_loss = run.run_round(state.params, state.carry, key_round)
    epochs_done = min((state.rounds_done + 1) * plan.epochs_per_round, plan.n_epochs)
    train_loss = float(train_loss)
    if not math.isfinite(train_loss):
        raise FloatingPointError(
            f"{description}: the training loss became {train_loss} by epoch {epochs_done}; lower"
            " the learning rate or check the data scale."
        )
    # the parameters validated and returned: the moving average when there is one
    current = params if carry[1] is None else carry[1]
    postfix = dict(epoch=epochs_done, train=f"{train_loss:.4f}")
    stopping, best_params, best_epoch = state.stopping, current, epochs_done
    if run.validation_loss is not None:
        val_loss = float(run.validation_loss(current))
        stopping = run.stopping.update(stopping, val_loss, run.patience)
        if not stopping.improved:
            best_params, best_epoch = state.best_params, state.best_epoch
        postfix["val"] = f"{val_loss:.4f}"
    return state._replace(
        rounds_done=state.rounds_done + 1, key=key, params=params, carry=carry,
        stopping=stopping, best_params=best_params, best_epoch=best_epoch,
        stopped_early=stopping.stop, train_losses=state.train_losses + (train_loss,),
        epochs=state.epochs + (epochs_done,),
    ), postfix


def _loop(run: _Run, key, params, carry, *, show_progress: bool, description: str):
    """Rounds until the plan is done, early stopping ends it or the user interrupts it (Ctrl-C:
    the run so far is kept); with a checkpoint, resumes from it and writes it as it goes.
    Returns the parameters kept, the final carry and the `TrainHistory` (without the optimiser
    state)."""
    plan = run.plan
    state = _LoopState(0, key, params, carry, run.stopping.init(), params, 0, False, (), ())
    if run.checkpoint is not None:
        state = read_checkpoint(run.checkpoint, run.fingerprint, state, StoppingState) or state
    interrupted, last_write = False, time.monotonic()
    bar = tqdm(total=plan.n_rounds, initial=state.rounds_done, desc=description,
               disable=not show_progress, leave=False,
               unit="round" if plan.epochs_per_round > 1 else "epoch")
    try:
        while state.rounds_done < plan.n_rounds and not state.stopped_early:
            state, postfix = _one_round(run, state, description)
            bar.update()
            bar.set_postfix(**postfix, refresh=False)
            if run.checkpoint is not None and (
                time.monotonic() - last_write >= run.checkpoint.every_seconds
            ):
                write_checkpoint(run.checkpoint, run.fingerprint, state)
                last_write = time.monotonic()
    except _StreamExhausted:
        pass  # the stream of batches ended: the rounds so far are the run
    except KeyboardInterrupt:
        interrupted = True
        warnings.warn(
            f"{description} interrupted after {len(state.train_losses)} round(s): returning the"
            " best flow so far" + ("" if run.checkpoint is None else
                                    f" (the run is saved in {run.checkpoint.path})") + ".",
            RuntimeWarning, stacklevel=3,
        )
    finally:
        bar.close()
    if run.checkpoint is not None:
        write_checkpoint(run.checkpoint, run.fingerprint, state)
    history = TrainHistory(
        train_loss=np.asarray(state.train_losses),
        val_loss=np.asarray(state.stopping.val_losses),
        val_loss_smoothed=np.asarray(state.stopping.smoothed),
        epoch=np.asarray(state.epochs),
        best_epoch=state.best_epoch,
        stopped_early=state.stopped_early,
        num_steps=int(state.carry[2]),  # the steps taken
        steps_per_epoch=plan.steps_per_epoch,
        interrupted=interrupted,
    )
    return state.best_params, state.carry, history


def _networks(flow: AbstractFlow) -> dict:
    networks = {"velocity": flow.velocity}
    if flow.score is not None:
        networks["score"] = flow.score
    return networks


def _with_networks(flow: AbstractFlow, networks: dict):
    fields = Fields(flow.interpolant, networks["velocity"], networks.get("score"))
    return flow._with_model(eqx.tree_at(lambda m: m.fields, flow._model, fields))


def _base_sampler(flow: AbstractFlow) -> Callable | None:
    """Draws of rho0 for the coupling: None (a standard normal in the data's dtype) for the
    default base."""
    base = flow.flow.base if isinstance(flow, ConstrainedSIFlow) else flow.base
    return None if is_standard_normal(base) else (lambda key, n: base.sample(key, (n,)))


def train_flow_space(
    keys: tuple[PRNGKeyArray, PRNGKeyArray], flow: AbstractFlow, train_set, val_set, options: dict,
    *, description: str = "train",
):
    """`train` on sets already in the fields' space: `train_set`, `val_set` are `(x, context)`
    pairs (context None without one; `val_set` None without validation). `keys`: the training
    and the validation key."""
    key_train, key_val = keys
    validation, stopping = options["validation"], options["early_stopping"]
    stream = train_set if isinstance(train_set, _Stream) else None
    objective = options["objective"]
    if stream is not None:  # a round is `validation.every` steps, one batch each
        dtype, every = stream.dtype, validation.every
        plan = StepPlan(stream.batch_size, every, 1, math.ceil(options["num_steps"] / every),
                        options["num_steps"])
    else:
        dtype = train_set[0].dtype
        plan = plan_steps(train_set[0].shape[0], batch_size=options["batch_size"],
                          num_steps=options["num_steps"], max_epochs=options["max_epochs"],
                          validate_every=validation.every)
    optimizer = options["optimizer"] or default_optimizer(
        options["learning_rate"], plan.num_steps, options["weight_decay"]
    )
    params, static = eqx.partition(_networks(flow), eqx.is_inexact_array)
    opt_state = options["opt_state"]
    state = (optimizer.init(params) if opt_state is None else opt_state,
             params if options["ema_decay"] is not None else None, jnp.zeros((), jnp.int32))
    batch_loss = _batch_loss_fn(flow.interpolant, _base_sampler(flow), objective)
    validation_loss = None
    if val_set is not None:
        val_repeated = jax.tree.map(lambda a: jnp.tile(a, (validation.repeats, 1)), val_set)
        validation_loss = eqx.filter_jit(
            lambda params: batch_loss(eqx.combine(params, static), key_val, val_repeated)
        )
    checkpoint = as_checkpoint(options["checkpoint"])
    digest = None if checkpoint is None else _run_fingerprint(
        keys, train_set, val_set, params, state, options
    )
    if stream is not None:
        run_round = _stream_round_fn(batch_loss, static, optimizer, plan,
                                     lambda: stream.block(plan.steps_per_epoch),
                                     options["ema_decay"], dtype)
    else:
        run_round = _round_fn(batch_loss, static, optimizer, plan, train_set,
                              options["ema_decay"], dtype)
    run = _Run(plan, run_round, validation_loss, stopping,
               stopping.patience_in_validations(plan), checkpoint, digest)
    best, state, history = _loop(run, key_train, params, state,
                                 show_progress=options["show_progress"], description=description)
    trained = _with_networks(flow, eqx.combine(best, static))
    return trained, history._replace(opt_state=state[0])


def _run_fingerprint(keys, train_set, val_set, params, state, options) -> str:
    """What a checkpoint must match to be resumed: keys, data, initial networks and optimiser
    state, and the options that shape the run (a user optimiser by its initial state only)."""
    shaping = {name: value for name, value in options.items()
               if name not in ("checkpoint", "show_progress", "opt_state", "optimizer")}
    return fingerprint(__version__, keys, train_set, val_set, params, state,
                       repr(jax.tree.structure(params)), repr(sorted(shaping.items())),
                       options["optimizer"] is None)


# ----------------------------------------------------------------------------------------------
# streams of batches
# ----------------------------------------------------------------------------------------------


class _StreamExhausted(Exception):
    """The stream of batches ended: training stops after the last whole round."""


class _Stream:
    """A user's iterator of batches, read a round at a time and mapped to the fields' space.

    Yields `(B, d)` arrays (pairs `(x, context)` for a conditional flow), every batch the same
    shape; the first is read at once, for the batch size and dtype."""

    def __init__(self, iterator, flow: AbstractFlow, conditional: bool):
        self.iterator, self.flow, self.conditional = iterator, flow, conditional
        try:
            self.pending = [self._read(0)]
        except _StreamExhausted:
            raise ValueError("the stream of batches is empty: it yielded no batch.") from None
        x = self.pending[0][0]
        self.batch_size, self.dtype = x.shape[0], check_data(x[:1], "a batch of data").dtype
        self.batches_read, self.exhausted = 1, False

    def _read(self, index):
        try:
            item = next(self.iterator)
        except StopIteration:
            raise _StreamExhausted from None
        if self.conditional:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise TypeError(
                    "a stream for a ConditionalSIFlow yields (samples, context) pairs; batch"
                    f" {index} is a {type(item).__name__}."
                )
            x, context = np.asarray(item[0]), np.asarray(item[1])
        else:
            x, context = np.asarray(item), None
        if x.ndim != 2:
            raise ValueError(f"batch {index} of data must have shape (B, d), got {x.shape}.")
        if index and (x.shape != self.shape or (
                context is not None and context.shape[0] != x.shape[0])):
            raise ValueError(
                f"batch {index} of data has shape {x.shape}; every batch of a stream must have"
                f" the first one's shape {self.shape} (and one context row per sample)."
            )
        self.shape = x.shape
        return x, context

    def block(self, steps: int):
        """The next `steps` batches, `(steps, B, d)` in the fields' space (and their context)."""
        if self.exhausted:
            raise _StreamExhausted
        rows = self.pending
        self.pending = []
        while len(rows) < steps:
            try:
                rows.append(self._read(self.batches_read))
            except _StreamExhausted:
                if not rows:
                    raise
                self.exhausted = True  # the last round: the batches that were left
                break
            self.batches_read += 1
        steps = len(rows)
        x = np.concatenate([r[0] for r in rows])
        context = None if rows[0][1] is None else np.concatenate([r[1] for r in rows])
        first = self.batches_read - steps
        name = f"batches {first}-{self.batches_read - 1} of data"
        samples = prepare_samples(x, context, _support(self.flow), name=name)
        x, context = flow_space(self.flow, samples, name=name)
        return jax.tree.map(lambda a: a.reshape((steps, self.batch_size, a.shape[-1])),
                            (x, context))


def batches(
    key: PRNGKeyArray, data: ArrayLike, batch_size: int, *, context: ArrayLike | None = None,
    epochs: int | None = None,
):
    """Random batches of rows of `data` (an array, or a NumPy memmap of data bigger than
    memory), for `train(key, flow, nsi.batches(key, data, 512))`: each epoch is a new random
    permutation of the rows, read one batch at a time (the rows of a batch in increasing order,
    so a memmap reads them in file order); the last partial batch of an epoch is dropped.
    `epochs`: how many passes (default: no end; `train` stops at `num_steps`). With `context`,
    yields `(samples, context)` pairs. Memory: one permutation of the row indices (4 bytes a
    row) and one batch."""
    n = np.shape(data)[0]
    batch_size = check_positive_int("batch_size", batch_size)
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the {n} row(s) of data.")
    if context is not None and np.shape(context)[0] != n:
        raise ValueError(
            f"context has {np.shape(context)[0]} row(s) but data has {n}; give one context row"
            " per sample."
        )
    if epochs is not None:
        check_positive_int("epochs", epochs)
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    rng = np.random.default_rng(seed)
    index_type = np.int32 if n < 2**31 else np.int64  # the one array of size N held: 4 bytes a row
    epoch = 0
    while epochs is None or epoch < epochs:
        order = np.arange(n, dtype=index_type)
        rng.shuffle(order)
        for start in range(0, n - batch_size + 1, batch_size):
            rows = np.sort(order[start:start + batch_size])
            x = np.asarray(data[rows])
            yield x if context is None else (x, np.asarray(context[rows]))
        epoch += 1


# ----------------------------------------------------------------------------------------------
# the public entry
# ----------------------------------------------------------------------------------------------

#: `train`'s options and their defaults.
TRAIN_DEFAULTS = dict(
    num_steps=10_000, max_epochs=None, batch_size=512, learning_rate=5e-3, weight_decay=0.0,
    optimizer=None, opt_state=None, ema_decay=None, objective=None, validation=None,
    early_stopping=None, checkpoint=None, show_progress=True,
)

#: Options of earlier versions of `fit` and where they are now.
RENAMED_TRAIN_OPTIONS = {
    "max_steps": "num_steps (optimiser steps, a true cap)",
    "val_prop": "validation=nsi.Validation(fraction=...)",
    "val_repeats": "validation=nsi.Validation(repeats=...)",
    "min_steps_between_validations": "validation=nsi.Validation(every=...)",
    "max_patience": "early_stopping=nsi.EarlyStopping(patience=...)",
    "val_window": "early_stopping=nsi.EarlyStopping(window=...)",
    "time_sampler": "objective=nsi.Objective(time_sampler=...)",
    "antithetic": "objective=nsi.Objective(antithetic=...)",
}


def check_train_options(options: dict, where: str) -> dict:
    """`options` (a subset of `TRAIN_DEFAULTS`) checked, with the defaults filled in."""
    unknown = {k: v for k, v in options.items() if k not in TRAIN_DEFAULTS}
    reject_unknown(unknown, where, RENAMED_TRAIN_OPTIONS, known=TRAIN_DEFAULTS)
    options = TRAIN_DEFAULTS | options
    check_positive_int("num_steps", options["num_steps"])
    if options["max_epochs"] is not None:
        check_positive_int("max_epochs", options["max_epochs"])
    check_positive_int("batch_size", options["batch_size"])
    # Adam moves each parameter by about the learning rate per step: above 1 training diverges
    check_real("learning_rate", options["learning_rate"], low=0.0, high=1.0, low_open=True)
    check_real("weight_decay", options["weight_decay"], low=0.0)
    if options["optimizer"] is not None and (
        options["weight_decay"] > 0 or options["learning_rate"] != TRAIN_DEFAULTS["learning_rate"]
    ):
        raise ValueError(
            "learning_rate and weight_decay configure the default optimiser; with your own"
            " `optimizer`, set them there (e.g. optax.adamw) and leave these at their defaults."
        )
    if options["opt_state"] is not None and options["optimizer"] is None:
        raise ValueError(
            "opt_state continues a run of a given optimiser: pass that `optimizer` too (e.g."
            " nsi.default_optimizer(learning_rate, total_steps) built once for every call)."
        )
    if options["ema_decay"] is not None:
        check_real("ema_decay", options["ema_decay"], low=0.0, high=1.0, high_open=True)
    as_checkpoint(options["checkpoint"])
    for name, kind in (("objective", Objective), ("validation", Validation),
                       ("early_stopping", EarlyStopping)):
        if options[name] is None:
            options[name] = kind()
        elif not isinstance(options[name], kind):
            raise TypeError(f"{name} must be an nsi.{kind.__name__}, got {options[name]!r}.")
    return options


def flow_space(
    flow: AbstractFlow, samples: _Samples, name: str = "data"
) -> tuple[Array, Array | None]:
    """Checked unconstrained samples mapped to the fields' space: `(x, context)`."""
    x, context = samples
    check_data(x, name, dim=flow.dim)
    if flow.standardization is not None:
        x = flow.standardization.forward(x)
    if context is not None:
        check_data(context, "context" if name == "data" else f"{name}'s context",
                   dim=flow.context_dim)
        if flow.context_standardization is not None:
            context = flow.context_standardization.forward(context)
    return x, context


def _support(flow):
    if isinstance(flow, ConstrainedSIFlow):
        return flow.constraint
    return flow.support if isinstance(flow, ConditionalSIFlow) else None


def split_samples(
    key, samples: _Samples, validation: Validation
) -> tuple[_Samples, _Samples | None]:
    """A random validation share of the samples (`validation.held_out`; None when it is 0)."""
    n = samples.x.shape[0]
    n_val = validation.held_out(n)
    if validation.fraction > 0 and (n_val < 1 or n - n_val < 1):
        raise ValueError(
            f"{n} sample(s) cannot be split into training and validation sets with"
            f" fraction {validation.fraction}; give more data or Validation(fraction=0)."
        )
    perm = jax.random.permutation(key, n)

    def part(rows):
        return _Samples(*(None if a is None else a[rows] for a in samples))

    # the training part is the permuted samples even without validation (as it always was)
    return part(perm[n_val:]), (part(perm[:n_val]) if n_val else None)


def train(
    key: PRNGKeyArray,
    flow: SIFlow | ConstrainedSIFlow | ConditionalSIFlow,
    data: Float[ArrayLike, "N d"],
    *,
    context: Float[ArrayLike, "N k"] | None = None,
    val_data: Float[ArrayLike, "M d"] | tuple | None = None,
    **options,
):
    """Fit `flow`'s networks to samples by the quadratic objectives; returns `(flow, history)`,
    `flow` of the same kind with trained networks and a `TrainHistory`.

    The velocity b is learned by L_b (antithetic where gamma > 0) and a score network, if the
    flow has one, by L_s (docs/math.md section 2). Training runs whole epochs (one pass over the
    shuffled training set) as one jitted `lax.scan`, several per call when epochs are short;
    after each call the loss on the validation set (fixed noise, so checkpoints are compared on
    common random numbers) decides early stopping, and the best parameters are kept. Everything
    else of the flow (interpolant, base, standardisation, settings) is left as it is.

    **Arguments:**

    - `key`: a `jax.random` key.
    - `flow`: from `build_flow` or an earlier `train` (its networks are the starting point).
    - `data`: samples `(N, d)` in data space (points of the support for a `ConstrainedSIFlow`),
      or an iterator of `(B, d)` batches for data bigger than memory or simulated on the fly
      (`batches` makes one from an array or memmap; pairs `(samples, context)` for a
      conditional flow): rounds of `validation.every` batches, validated on `val_data` (none
      without it), until `num_steps` or the iterator's end; `batch_size`, `max_epochs` and
      `checkpoint` do not apply.
    - `context`: `(N, k)`, one context row per sample; required by a `ConditionalSIFlow`.
    - `val_data`: held-out samples for validation (a pair `(samples, context)` for a conditional
      flow); default: `validation.fraction` of `data`, drawn at random.

    **Options** (keyword-only):

    - `num_steps`: optimiser steps, a true cap (default 10 000); `max_epochs`: a cap in epochs.
    - `batch_size` (512), `learning_rate` (5e-3), `weight_decay` (0: Adam; > 0: AdamW) of the
      `default_optimizer`, or your own `optimizer` (an optax transformation).
    - `opt_state`: continue from this optimiser state (`history.opt_state` of an earlier run of
      the same `optimizer`), e.g. for warm-started refits.
    - `ema_decay`: validate and return an exponential moving average of the parameters with this
      decay (e.g. 0.999; `ema_update`); default `None`, no average.
    - `objective`: an `Objective` (time sampler, antithetic estimators).
    - `validation`: a `Validation` (held-out fraction, noise repeats, steps between
      validations); `early_stopping`: an `EarlyStopping` (patience, window).
    - `checkpoint`: a path (or `nsi.Checkpoint(path, every_seconds)`): the run is saved there
      atomically after validation rounds (at most once a minute by default), when it ends and
      when it is interrupted; called again with the same arguments, `train` resumes from it and
      ends bit for bit where an uninterrupted run ends.
    - `show_progress`: a tqdm progress bar over rounds.

    Ctrl-C stops training between rounds and returns the best flow so far
    (`history.interrupted`), saved to the checkpoint if there is one.

    Under `with jax.set_mesh(nsi.data_mesh()):` each batch is split over the mesh's devices
    with the parameters replicated (data parallel); the same key gives the one-device result
    up to the order of float sums.

    `plan_steps` gives the layout (steps per epoch, rounds) a run will have.
    """
    if not isinstance(flow, SIFlow | ConstrainedSIFlow | ConditionalSIFlow):
        raise TypeError(
            "train needs a flow from build_flow (an SIFlow, ConstrainedSIFlow or"
            f" ConditionalSIFlow), got {type(flow).__name__}."
        )
    given = set(options)
    options = check_train_options(options, "train")
    conditional = isinstance(flow, ConditionalSIFlow)
    if isinstance(data, Iterator):
        return _train_stream(key, flow, data, context, val_data, options, given, conditional)
    if conditional != (context is not None):
        raise ValueError(
            "a ConditionalSIFlow trains on (data, context) pairs: pass context=" if conditional
            else f"context is only for a ConditionalSIFlow; this flow is a {type(flow).__name__}."
        )
    key_split, key_train, key_val = jax.random.split(key, 3)
    samples = prepare_samples(data, context, _support(flow))
    if val_data is None:
        samples, held_out = split_samples(key_split, samples, options["validation"])
    else:
        val_x, val_context = val_data if conditional else (val_data, None)
        held_out = prepare_samples(val_x, val_context, _support(flow), name="val_data")
    val_set = None if held_out is None else flow_space(flow, held_out, name="val_data")
    return train_flow_space((key_train, key_val), flow, flow_space(flow, samples), val_set,
                            options)


def _train_stream(key, flow, stream, context, val_data, options, given, conditional):
    """`train` on an iterator of batches (data bigger than memory, or simulated on the fly)."""
    for name, why in (("context", "yield (samples, context) pairs instead"),
                      ("batch_size", "the stream's batches set it"),
                      ("max_epochs", "a stream has no epochs; use num_steps"),
                      ("checkpoint", "a stream cannot be rewound to resume from one")):
        value = context if name == "context" else options[name]
        if (name == "batch_size" and name in given) or (name != "batch_size" and value is not None):
            raise ValueError(f"train on a stream of batches takes no {name}: {why}.")
    _, key_train, key_val = jax.random.split(key, 3)
    val_set = None
    if val_data is not None:
        val_x, val_context = val_data if conditional else (val_data, None)
        held_out = prepare_samples(val_x, val_context, _support(flow), name="val_data")
        val_set = flow_space(flow, held_out, name="val_data")
    return train_flow_space((key_train, key_val), flow, _Stream(stream, flow, conditional),
                            val_set, options)
