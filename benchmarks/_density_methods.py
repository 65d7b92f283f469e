"""Methods compared by `benchmarks/density.py`, each trained to the same time budget.

`METHODS` maps each method's stable id (`numpyro_si`, `numpyro_si_tuned`, `flowjax_coupling`,
`flowjax_maf`, `bnaf`; the keys of the stored results) to a trainer that turns
`(key, train, budget_seconds)` into a `Trained` record with a batched `log_prob`, a batched
`sample` (None where the model cannot sample) and its cost counters. Display labels are the
renderer's business (`density_report.py`).

`fit_siflow` is the benchmarks' one call of `nsi.fit` and the one place its history is read;
`fit_flowjax` is the one call of flowjax's `fit_to_data`.

Clock. The 2 cores are shared with other jobs (load averages of 8-13 were seen), so equal
wall-clock budgets would hand the methods unequal compute; by default the budget is this
process's CPU time (`time.process_time`, all threads), which tracks the compute a method
actually received. `set_clock("wall")` switches to wall-clock. Both are reported.

Budgets. `nsi.fit` and flowjax's `fit_to_data` take a step / epoch budget, not a time budget
(and `fit`'s cosine learning-rate schedule needs the total in advance), so both are calibrated
the same way: after a warm-up run, two short pilot runs give the steady steps per second and the
fixed overhead (compilation, set-up), and the real run gets `rate * (budget - overhead)` steps.
Both recompile in every call, as for a user, so the overhead counts against the budget of each.
The pilots are cached per (method, dimension) and are not counted; a real run that misses its
budget by more than 10 % replaces the cached rate by its own (`recalibrate`). The NumPyro BNAF has no
training routine of its own; its loop checks the clock directly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import numpyro_si as nsi
from numpyro_si._solvers import solve_ode  # the sampler's own solve, for its step counts

BATCH_SIZE = 512  # every method trains on batches of this size (nsi.fit's default)
_CALIBRATION: dict[tuple, tuple[float, float]] = {}
_CLOCK = {"name": "cpu"}


def set_clock(name: str):
    """Budgets in "cpu" (process CPU seconds, default) or "wall" seconds."""
    if name not in ("cpu", "wall"):
        raise ValueError(f"clock must be 'cpu' or 'wall', got {name!r}")
    _CLOCK["name"] = name
    _CALIBRATION.clear()


def budget_clock() -> float:
    return time.process_time() if _CLOCK["name"] == "cpu" else time.perf_counter()


@dataclass
class Trained:
    """A trained density model and what it cost."""

    method: str
    n_params: int
    train_time: float  # wall-clock seconds of the real training run (pilots excluded)
    train_cpu: float  # process CPU seconds of the same run
    steps: int  # optimiser steps taken
    # (n, d) -> ((n,) log densities, (n,) vector-field evaluations per point or None), jitted
    log_prob: Callable[[jax.Array], tuple[jax.Array, jax.Array | None]]
    sample: Callable[[jax.Array, int], jax.Array] | None  # (key, n) -> (n, d), jitted
    # SIFlow only: (key, n) -> (n,) vector-field evaluations of each sample's ODE solve
    nfe_sample: Callable[[jax.Array, int], jax.Array] | None = None
    extra: dict = field(default_factory=dict)
    model: object = None


class Whitening:
    """Per-coordinate standardisation by the training data (numpyro_si does the same inside
    `fit`; the peers get it here), with the log-Jacobian that maps densities back."""

    def __init__(self, train):
        self.mean = np.asarray(train.mean(0), dtype=np.float32)
        self.scale = np.asarray(np.maximum(train.std(0), 1e-8), dtype=np.float32)
        self.log_det = -float(np.sum(np.log(self.scale.astype(np.float64))))

    def forward(self, x):
        return (x - self.mean) / self.scale

    def wrap(self, log_prob, sample):
        def wrapped_log_prob(x):
            return log_prob(self.forward(x)) + self.log_det, None

        if sample is None:
            return wrapped_log_prob, None
        return wrapped_log_prob, lambda key, n: self.mean + self.scale * sample(key, n)


def count_params(tree) -> int:
    return int(sum(x.size for x in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))))


def _timed(fn, *args, **kwargs):
    """(fn(...), wall seconds, CPU seconds), waiting for the results to be computed."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    jax.block_until_ready([leaf for leaf in jax.tree.leaves(out) if isinstance(leaf, jax.Array)])
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _budget_seconds(wall: float, cpu: float) -> float:
    return cpu if _CLOCK["name"] == "cpu" else wall


MIN_PILOT_GAP = 8.0  # seconds


def calibrate(cache_key, run: Callable[[int], tuple[int, float]], small: int, large: int):
    """(steps per second, overhead seconds) from pilot runs of `small` and `large` steps, after a
    warm-up run; `run(steps)` returns (steps taken, seconds). Cached under `cache_key` (method,
    dimension): at a fixed batch size the per-step cost does not depend on the training-set
    size, and the overhead is mostly compilation."""
    if cache_key not in _CALIBRATION:
        run(small)  # warm-up: one-time compilations (data, keys, ...) that later runs reuse
        # Each pilot recompiles, and compilation time varies by seconds between calls: take the
        # faster of two short pilots, and lengthen the long one until it takes at least
        # MIN_PILOT_GAP seconds more, so that the difference measures training steps, not noise.
        n_small, t_small = min((run(small) for _ in range(2)), key=lambda r: r[1])
        n_large, t_large = run(large)
        while t_large - t_small < MIN_PILOT_GAP and large < 16 * small:
            large *= 4
            n_longer, t_longer = run(large)
            if n_longer <= n_large:  # early stopping ends the pilot: no longer run to be had
                break
            n_large, t_large = n_longer, t_longer
        rate = (n_large - n_small) / max(t_large - t_small, 1e-3)
        overhead = max(t_small - n_small / rate, 0.0)
        _CALIBRATION[cache_key] = (rate, overhead)
        print(f"    calibrated {cache_key[0]} ({_CLOCK['name']} clock): {n_small} steps"
              f" {t_small:.1f}s, {n_large} steps {t_large:.1f}s -> {rate:.0f} steps/s +"
              f" {overhead:.1f}s", flush=True)
    return _CALIBRATION[cache_key]


def recalibrate(cache_key, steps: int, seconds: float, budget: float, *, stopped_early: bool):
    """Running correction: after a real run whose cost missed its budget by more than 10 %, the
    cached rate becomes this run's (steps over seconds past the overhead), so the next data set
    of the same dimension gets a budget-true step count. Long runs can cost more per step than
    the pilots (cache and load effects): a 60 s budget has been seen to take 85 s."""
    if cache_key not in _CALIBRATION or stopped_early or abs(seconds - budget) <= 0.1 * budget:
        return
    rate, overhead = _CALIBRATION[cache_key]
    new_rate = steps / max(seconds - overhead, 1e-3)
    _CALIBRATION[cache_key] = (new_rate, overhead)
    print(f"    recalibrated {cache_key[0]}: {steps} steps took {seconds:.1f}s of {budget:.0f}s ->"
          f" {rate:.0f} -> {new_rate:.0f} steps/s", flush=True)


def steps_for_budget(rate: float, overhead: float, budget: float) -> int:
    # Never less than half the budget for training proper, whatever the overhead estimate says.
    return max(int(rate * max(budget - overhead, 0.5 * budget)), 200)


# ----------------------------------------------------------------------------------------------
# numpyro_si
# ----------------------------------------------------------------------------------------------

# Vector-field evaluations of diffrax's explicit Runge-Kutta solvers: (per step, at the start).
# Tsit5, Dopri5 and Bosh3 are FSAL (first same as last): one evaluation at the start, then the
# new stages of every step, accepted or rejected. Counted with a jax.debug.callback in the
# velocity: 4 fixed steps -> Tsit5 25, Bosh3 13, Heun 8, Midpoint 8, Euler 4 calls.
STAGES = {"Tsit5": (6, 1), "Dopri5": (6, 1), "Bosh3": (3, 1), "Heun": (2, 0),
          "Midpoint": (2, 0), "Ralston": (2, 0), "Euler": (1, 0)}


def field_evaluations(solver, num_steps):
    per_step, initial = STAGES[type(solver).__name__]
    return per_step * num_steps + initial


def siflow_evaluators(flow: nsi.SIFlow):
    """Jitted log_prob, sample and their field-evaluation counts for a flow."""

    @jax.jit
    def log_prob(flow, x):
        values, info = flow.log_prob_with_info(x)
        return values, field_evaluations(flow.likelihood.solver, info.num_steps)

    sample_fns = {}

    def sample(key, n):
        if n not in sample_fns:
            sample_fns[n] = jax.jit(lambda flow, key: flow.sample(key, (n,)))
        return sample_fns[n](flow, key)

    @jax.jit
    def _nfe_sample(flow, x0):
        sampler = flow.sampler
        t0, t1 = flow.interpolant.time_min, flow.interpolant.time_max
        _, info = jax.vmap(
            lambda y: solve_ode(flow.velocity, y, t0, t1, method=sampler, rtol=flow.rtol,
                                atol=flow.atol)
        )(x0)
        return field_evaluations(sampler.solver, info.num_steps)

    def nfe_sample(key, n):
        return _nfe_sample(flow, flow.base.sample(key, (n,)))

    return (lambda x: log_prob(flow, x)), sample, nfe_sample


@dataclass
class SIFit:
    """What the benchmarks use of one `nsi.fit` call."""

    flow: nsi.SIFlow
    steps: int  # optimiser steps taken
    stopped_early: bool
    final_val_loss: float  # the last validation loss (NaN without validation)
    wall: float  # seconds of the call
    cpu: float


def fit_siflow(key, data, *, steps: int | None = None, **options) -> SIFit:
    """`nsi.fit(key, data, **options)` run for `steps` optimiser steps (fit's default if None),
    timed. The benchmarks' one call of `nsi.fit` and the one place its history is read."""
    if steps is not None:
        options["num_steps"] = steps
    (flow, history), wall, cpu = _timed(nsi.fit, key, jnp.asarray(data), show_progress=False,
                                        **options)
    val_loss = history.val_loss
    return SIFit(flow=flow, steps=int(history.num_steps), stopped_early=bool(history.stopped_early),
                 final_val_loss=float(val_loss[-1]) if len(val_loss) else float("nan"),
                 wall=wall, cpu=cpu)


def epoch_steps(n: int, batch_size: int = BATCH_SIZE) -> int:
    """Optimiser steps per epoch on `n` points after `fit`'s default validation split (the
    benchmark's flowjax runs split them the same way)."""
    n_train = n - nsi.Validation().held_out(n)
    return nsi.plan_steps(n_train, batch_size=batch_size).steps_per_epoch


def train_siflow(key, train, budget, *, method="numpyro_si", options=None):
    """`nsi.fit` with `options` (defaults if empty) for as many steps as fit in the budget."""
    options = dict(options or {})
    cache_key = (method, train.shape[1])

    def run(steps):
        fit = fit_siflow(key, train, steps=steps, **options)
        return fit.steps, _budget_seconds(fit.wall, fit.cpu)

    rate, overhead = calibrate(cache_key, run, 200, 1000)
    planned = steps_for_budget(rate, overhead, budget)  # fit runs exactly this many
    fit = fit_siflow(key, train, steps=planned, **options)
    recalibrate(cache_key, fit.steps, _budget_seconds(fit.wall, fit.cpu), budget,
                stopped_early=fit.stopped_early)
    log_prob, sample, nfe_sample = siflow_evaluators(fit.flow)
    return Trained(
        method=method, n_params=count_params(fit.flow.velocity), train_time=fit.wall,
        train_cpu=fit.cpu, steps=fit.steps, log_prob=log_prob, sample=sample,
        nfe_sample=nfe_sample,
        extra={"planned_steps": planned, "stopped_early": fit.stopped_early,
               "calibrated_rate": rate, "overhead": overhead},
        model=fit.flow,
    )


# ----------------------------------------------------------------------------------------------
# flowjax
# ----------------------------------------------------------------------------------------------


def make_flowjax(kind: str, key, dim: int, nn_width: int = 50, flow_layers: int = 8):
    """flowjax flow with a rational-quadratic spline transformer (8 knots on [-4, 4]), 8 layers:
    `coupling_flow` or `masked_autoregressive_flow`; `invert=True` (fast log_prob)."""
    from flowjax.bijections import RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import coupling_flow, masked_autoregressive_flow

    build = {"coupling": coupling_flow, "maf": masked_autoregressive_flow}[kind]
    return build(
        key, base_dist=Normal(jnp.zeros(dim)),
        transformer=RationalQuadraticSpline(knots=8, interval=4), nn_width=nn_width,
        flow_layers=flow_layers,
    )


_FLOWJAX_LOSS = None
_FLOWJAX_OPTIMIZERS: dict[float, optax.GradientTransformation] = {}


def _flowjax_fit_objects(learning_rate: float = 5e-4):
    # One loss and one optimiser object per learning rate for every call, so flowjax's jitted
    # step compiles once per model shape (its cache is keyed on these static arguments).
    global _FLOWJAX_LOSS
    if _FLOWJAX_LOSS is None:
        from flowjax.train.losses import MaximumLikelihoodLoss

        _FLOWJAX_LOSS = MaximumLikelihoodLoss()
    if learning_rate not in _FLOWJAX_OPTIMIZERS:  # 5e-4: fit_to_data's default optimiser
        _FLOWJAX_OPTIMIZERS[learning_rate] = optax.adam(learning_rate)
    return _FLOWJAX_LOSS, _FLOWJAX_OPTIMIZERS[learning_rate]


def flowjax_patience(n_train: int, epochs: int, batch_size: int = BATCH_SIZE) -> int:
    """Patience in epochs for `fit_to_data`, by `nsi.fit`'s own rule: at least 20 validation
    rounds of >= 100 steps (2000 steps), or a fifth of the planned run if longer. Both return
    their best-validation parameters. (fit_to_data's default of 5 epochs, even raised to about
    300 steps, stopped flowjax on 9 of 11 sets with up to half its budget unused while fit kept
    training; the budget curve's rows labelled "patience ~300 steps" show what that cost it.)"""
    return max(math.ceil(2000 / epoch_steps(n_train, batch_size)), math.ceil(epochs / 5))


@eqx.filter_jit
def flowjax_log_prob(flow, x):
    """A flowjax flow's batched log_prob, compiled (in the whitened space)."""
    return flow.log_prob(x)


def fit_flowjax(key, flow, data, *, epochs: int, patience: int, batch_size: int = BATCH_SIZE,
                learning_rate: float = 5e-4):
    """flowjax `fit_to_data` (Adam at `learning_rate`, 5e-4 by default as fit_to_data's,
    maximum likelihood), timed: (trained flow, epochs run, wall seconds, CPU seconds). The
    benchmarks' one call of `fit_to_data`."""
    from flowjax.train import fit_to_data

    loss_fn, optimizer = _flowjax_fit_objects(learning_rate)
    (flow, losses), wall, cpu = _timed(
        fit_to_data, key, flow, data, loss_fn=loss_fn, optimizer=optimizer, max_epochs=epochs,
        batch_size=batch_size, max_patience=patience, show_progress=False,
    )
    return flow, len(losses["train"]), wall, cpu


def train_flowjax(key, train, budget, *, kind: str, nn_width: int = 50, method=None,
                  patience_fraction: float | None = None, batch_size: int = BATCH_SIZE,
                  learning_rate: float = 5e-4, patience_epochs: int | None = None):
    """flowjax `fit_to_data` for `budget` seconds, patience by `flowjax_patience`;
    `patience_fraction` sets the patience to that fraction of the planned epochs instead, and
    `patience_epochs` to that many epochs."""
    method = method or f"flowjax_{kind}"
    key_init, key_fit = jax.random.split(key)
    dim = train.shape[1]
    whitening = Whitening(train)
    data = jnp.asarray(whitening.forward(train))
    steps_per_epoch = epoch_steps(train.shape[0], batch_size)
    cache_key = (method, nn_width, dim, batch_size, patience_fraction)

    def patience_for(epochs):
        if patience_epochs is not None:
            return patience_epochs
        if patience_fraction is not None:
            return max(math.ceil(patience_fraction * epochs), 1)
        return flowjax_patience(train.shape[0], epochs, batch_size)

    def fit(epochs):
        return fit_flowjax(key_fit, make_flowjax(kind, key_init, dim, nn_width), data,
                           epochs=epochs, patience=patience_for(epochs), batch_size=batch_size,
                           learning_rate=learning_rate)

    def run(steps):
        _, epochs_run, wall, cpu = fit(max(math.ceil(steps / steps_per_epoch), 1))
        return epochs_run * steps_per_epoch, _budget_seconds(wall, cpu)

    rate, overhead = calibrate(cache_key, run, 100, 400)
    epochs = max(math.ceil(steps_for_budget(rate, overhead, budget) / steps_per_epoch), 1)
    flow, epochs_run, wall, cpu = fit(epochs)
    recalibrate(cache_key, epochs_run * steps_per_epoch, _budget_seconds(wall, cpu), budget,
                stopped_early=epochs_run < epochs)

    sample_fns = {}

    def sample(key, n):
        if n not in sample_fns:
            sample_fns[n] = eqx.filter_jit(lambda flow, key: flow.sample(key, (n,)))
        return sample_fns[n](flow, key)

    wrapped_log_prob, wrapped_sample = whitening.wrap(lambda x: flowjax_log_prob(flow, x), sample)
    return Trained(
        method=method, n_params=count_params(flow), train_time=wall, train_cpu=cpu,
        steps=epochs_run * steps_per_epoch, log_prob=wrapped_log_prob, sample=wrapped_sample,
        extra={"planned_steps": epochs * steps_per_epoch, "epochs": epochs_run,
               "stopped_early": epochs_run < epochs, "calibrated_rate": rate,
               "overhead": overhead, "max_patience": patience_for(epochs)},
        model=flow,
    )


# ----------------------------------------------------------------------------------------------
# NumPyro block neural autoregressive flow (the transform behind AutoBNAFNormal)
# ----------------------------------------------------------------------------------------------


def train_bnaf(key, train, budget, *, num_flows=2, hidden_factors=(16, 16), learning_rate=1e-3,
               method="bnaf"):
    """NumPyro's `BlockNeuralAutoregressiveTransform`s, stacked as in `AutoBNAFNormal` (gated
    residual on all but the last, order reversed between flows), fitted by maximum likelihood.

    AutoBNAFNormal pushes base draws z to the latent space, x = T(z); T has no analytic inverse,
    so the density of *given* points cannot be evaluated in that direction. For density
    estimation the same transforms are used the other way (as in the BNAF paper): z = T(x),
    log p(x) = log N(T(x); 0, I) + log|det dT/dx|. Training is then cheap maximum likelihood,
    but sampling would need a numerical inverse, which NumPyro does not provide: no samples.
    """
    from numpyro.nn.block_neural_arn import BlockNeuralAutoregressiveNN

    dim = train.shape[1]
    applies, params = [], []
    keys = jax.random.split(key, num_flows + 2)
    for i in range(num_flows):
        residual = "gated" if i < num_flows - 1 else None
        init_fn, apply_fn = BlockNeuralAutoregressiveNN(dim, list(hidden_factors), residual)
        _, p = init_fn(keys[i], (dim,))
        applies.append(apply_fn)
        params.append(p)

    def log_prob_one(params, x):
        total = 0.0
        for i, (apply_fn, p) in enumerate(zip(applies, params, strict=True)):
            if i > 0:
                x = x[::-1]
            x, logdet = apply_fn(p, x)
            total = total + jnp.sum(logdet)
        return total + jnp.sum(jax.scipy.stats.norm.logpdf(x))

    batched = jax.vmap(log_prob_one, in_axes=(None, 0))
    whitening = Whitening(train)
    data = jnp.asarray(whitening.forward(train))
    perm = jax.random.permutation(keys[-1], data.shape[0])
    n_val = round(0.1 * data.shape[0])
    val, fit_data = data[perm[:n_val]], data[perm[n_val:]]
    batch = min(BATCH_SIZE, fit_data.shape[0])
    steps_per_epoch = max(fit_data.shape[0] // batch, 1)
    epochs_per_round = max(1, math.ceil(100 / steps_per_epoch))
    optimizer = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(learning_rate))

    def loss(params, x):
        return -jnp.mean(batched(params, x))

    @jax.jit
    def run_round(params, opt_state, key):
        def step(carry, x):
            params, opt_state = carry
            value, grads = jax.value_and_grad(loss)(params, x)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        def epoch(carry, k):
            order = jax.random.permutation(k, fit_data.shape[0])[: steps_per_epoch * batch]
            batches = fit_data[order].reshape(steps_per_epoch, batch, dim)
            return jax.lax.scan(step, carry, batches)

        (params, opt_state), losses = jax.lax.scan(
            epoch, (params, opt_state), jax.random.split(key, epochs_per_round)
        )
        return params, opt_state, loss(params, val)

    wall, cpu, start = time.perf_counter(), time.process_time(), budget_clock()
    opt_state = optimizer.init(params)
    best, best_val, steps, round_key = params, np.inf, 0, keys[-2]
    while budget_clock() - start < budget:
        round_key, k = jax.random.split(round_key)
        params, opt_state, val_loss = run_round(params, opt_state, k)
        steps += epochs_per_round * steps_per_epoch
        val_loss = float(val_loss)
        if not math.isfinite(val_loss):
            break
        if val_loss < best_val:
            best, best_val = params, val_loss
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    final = best
    jit_log_prob = jax.jit(batched)
    wrapped_log_prob, _ = whitening.wrap(lambda x: jit_log_prob(final, x), None)
    return Trained(
        method=method, n_params=int(sum(x.size for x in jax.tree.leaves(final))),
        train_time=wall, train_cpu=cpu, steps=steps, log_prob=wrapped_log_prob, sample=None,
        extra={"num_flows": num_flows, "hidden_factors": list(hidden_factors)},
    )


# ----------------------------------------------------------------------------------------------
# the methods compared, by stable id
# ----------------------------------------------------------------------------------------------

# The tuned numpyro_si configuration: fit's defaults with batches of 256 instead of 512 on 2-d
# data, and with weight decay 0.1 (`fit(..., weight_decay=0.1)`, AdamW) above 2 dimensions.
# Batches of 256: a step costs less than half one of 512, so at equal CPU seconds the fit sees
# more data; the evidence is mixed (an exploratory paired run on checkerboard gave -0.014 ± 0.003
# nats against 512, `benchmarks/batch_size_check.py checkerboard` +0.005 ± 0.003, and flowjax
# gains as much from 256 there; sbibm two_moons over 8 keys: the 256 row -3.602 against the
# default's key mean -3.580). Weight decay 0.1 (the table's step counts, two keys, paired on the
# held-out points; docs/guide.md "Weight decay"): sbibm gaussian_linear -0.030, sbibm
# bernoulli_glm -0.083, digits -3.4 nats, but checkerboard +0.10, sbibm slcp (5-d, not in the
# table) +0.13 and breast cancer +0.35 (three keys): it helps smooth posteriors and the small
# image set, and hurts sharp or multimodal densities, so it is not a default. A deeper network
# (width 64, depth 8 for d <= 16, width 128, depth 4 above) as the tuned row lost to the
# defaults at equal time on 6 of 11 data sets.
TUNED_BATCH_SIZE = 256
TUNED_WEIGHT_DECAY = 0.1


def tuned_options(dim: int) -> dict:
    if dim <= 2:
        return dict(batch_size=TUNED_BATCH_SIZE)
    return dict(weight_decay=TUNED_WEIGHT_DECAY)


FLOWJAX_KINDS = {"flowjax_coupling": "coupling", "flowjax_maf": "maf"}
# flowjax's documented density-estimation settings (docs/examples/unconditional.ipynb,
# danielward27/flowjax@cabcb42: a masked autoregressive RQS flow, Adam 1e-3, and fit_to_data's
# defaults otherwise: batches of 100, patience 5 epochs), within the same CPU budget
FLOWJAX_DOCS = dict(learning_rate=1e-3, batch_size=100, patience_epochs=5)

# method id -> trainer (key, train, budget seconds) -> Trained; the order is the tables' order
METHODS: dict[str, Callable] = {
    "numpyro_si": lambda key, train, budget: train_siflow(key, train, budget),
    "numpyro_si_tuned": lambda key, train, budget: train_siflow(
        key, train, budget, method="numpyro_si_tuned", options=tuned_options(train.shape[1])),
    "flowjax_coupling": lambda key, train, budget: train_flowjax(
        key, train, budget, kind="coupling"),
    "flowjax_maf": lambda key, train, budget: train_flowjax(key, train, budget, kind="maf"),
    "flowjax_maf_docs": lambda key, train, budget: train_flowjax(
        key, train, budget, kind="maf", method="flowjax_maf_docs", **FLOWJAX_DOCS),
    "bnaf": lambda key, train, budget: train_bnaf(key, train, budget),
}
