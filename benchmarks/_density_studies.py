"""The density benchmark's studies beyond the main table, each keyed by stable ids: the
likelihood solver's cost against accuracy (`SOLVER_VARIANTS`), fit configurations at equal steps
(`CONFIG_STUDY`), held-out NLL against training budget, training throughput at equal batch size
and parameter count, and XLA's flop counts behind the solver's cost ratio."""

from __future__ import annotations

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from _density_data import Dataset, standard_error
from _density_eval import chunked_log_prob, evaluate
from _density_methods import (
    BATCH_SIZE,
    FLOWJAX_KINDS,
    METHODS,
    Whitening,
    _budget_seconds,
    calibrate,
    count_params,
    epoch_steps,
    fit_flowjax,
    fit_siflow,
    flowjax_log_prob,
    make_flowjax,
    siflow_evaluators,
    train_flowjax,
)

import numpyro_si as nsi

# ----------------------------------------------------------------------------------------------
# likelihood solver: cost against accuracy
# ----------------------------------------------------------------------------------------------

CHECK_POINTS, CHECK_MAX_ERROR = 1000, 1e-2


def _solve_with(**options):
    """A solver variant: the flow with these `with_settings` changes (none: the flow itself)."""
    return lambda flow, train: (flow.with_settings(**options) if options else flow, {})


def _checked_fixed_steps(flow, train):
    """Fixed steps chosen by `flow.with_fixed_step_likelihood` on training points, then measured
    on the held-out ones like every other variant (an out-of-sample check of that method)."""
    variant, report = flow.with_fixed_step_likelihood(train[:CHECK_POINTS],
                                                      max_error=CHECK_MAX_ERROR)
    return variant, {"n_steps": report["n_steps"], "check_error": report["max_error"]}


# Likelihood-solver variants measured on the default numpyro_si flow of every data set, by id:
# each maps (flow, training points) to (the flow to measure, extra fields of its row). The first
# is the default solve, which the others are compared with.
SOLVER_VARIANTS = {
    "tsit5_tol1e-5": _solve_with(),
    "tsit5_tol1e-4": _solve_with(rtol=1e-4, atol=1e-4),
    "tsit5_tol1e-3": _solve_with(rtol=1e-3, atol=1e-3),
    "tsit5_fixed8": _solve_with(likelihood=nsi.ODELikelihood(n_steps=8)),
    "tsit5_fixed6": _solve_with(likelihood=nsi.ODELikelihood(n_steps=6)),
    "tsit5_fixed4": _solve_with(likelihood=nsi.ODELikelihood(n_steps=4)),
    "tsit5_fixed2": _solve_with(likelihood=nsi.ODELikelihood(n_steps=2)),
    "heun_fixed8": _solve_with(likelihood=nsi.ODELikelihood(diffrax.Heun(), n_steps=8)),
    "tsit5_checked": _checked_fixed_steps,
}


def flowjax_log_prob_rate(data: Dataset, x: np.ndarray) -> float:
    """Points/s of a flowjax coupling-flow log_prob on `x`, measured now: the main table's
    architecture and whitening, untrained weights (a spline flow's cost does not depend on
    them), so the solver table's cost ratios compare two measurements taken seconds apart in
    one process instead of rows measured at other moments (or in other runs) of a loaded
    machine."""
    flow = make_flowjax("coupling", jax.random.key(0), data.dim)
    wrapped, _ = Whitening(data.train).wrap(lambda x: flowjax_log_prob(flow, x), None)
    _, _, elapsed, n_eval = chunked_log_prob(wrapped, x)
    return n_eval / elapsed


def solver_study(flow: nsi.SIFlow, data: Dataset) -> tuple[dict[str, dict], float]:
    """Cost and accuracy of the likelihood solve for one trained flow, on <= 1000 test points,
    by variant id; also returns the flowjax coupling log_prob rate the cost ratios use (the mean
    of two measurements, before and after the variants)."""
    x = data.test[:1000]
    before = flowjax_log_prob_rate(data, x)
    rows, baseline = {}, None
    for variant_id, make_variant in SOLVER_VARIANTS.items():
        variant, extra = make_variant(flow, data.train)
        log_prob, _, _ = siflow_evaluators(variant)
        values, nfe, elapsed, n_eval = chunked_log_prob(log_prob, x)
        if baseline is None:
            baseline = values
        rows[variant_id] = {
            "nll": float(-np.mean(values)),
            "nll_se": standard_error(values),
            "max_abs_change": float(np.max(np.abs(values - baseline))),
            "nfe_log_prob": float(np.mean(nfe)),
            "nfe_max": float(np.max(nfe)),
            "log_prob_per_s": n_eval / elapsed,
            **extra,
        }
    reference = 0.5 * (before + flowjax_log_prob_rate(data, x))
    for row in rows.values():
        row["cost_vs_flowjax"] = reference / row["log_prob_per_s"]
    return rows, reference


def _flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis["flops"])


def flop_counts(flow: nsi.SIFlow, dim: int, n: int = 100) -> dict:
    """XLA's flop counts per point: one likelihood-ODE evaluation of the flow (velocity plus the
    exact divergence, d JVPs) and one flowjax coupling-flow log_prob (default architecture).
    XLA counts a loop body once, so flowjax's scanned layers are counted as one layer times 8."""
    import equinox as eqx

    x = jnp.ones((n, dim))
    divergence = nsi.ExactDivergence()
    velocity = flow.velocity
    evaluation = jax.jit(jax.vmap(lambda y: divergence(lambda z: velocity(0.5, z), y, None)))
    one_layer = make_flowjax("coupling", jax.random.key(0), dim, flow_layers=1)
    params, static = eqx.partition(one_layer, eqx.is_array)
    one_layer_log_prob = jax.jit(lambda p, x: eqx.combine(p, static).log_prob(x))
    return {
        "eval_flops": _flops(evaluation.lower(x).compile()) / n,
        "velocity_flops": _flops(jax.jit(jax.vmap(lambda z: velocity(0.5, z))).lower(x).compile())
        / n,
        "flowjax_flops": 8 * _flops(one_layer_log_prob.lower(params, x).compile()) / n,
    }


# ----------------------------------------------------------------------------------------------
# fit configurations at equal optimiser steps (`--config-study`)
# ----------------------------------------------------------------------------------------------

# Nearby configurations of `fit`, by id, each run at the same number of optimiser steps. Every
# option is spelled out, so a row means the same thing whatever fit's defaults are. The renderer
# compares every row with `lin_lr5e-3_w128d3` (fit's default for d > 16); `lin_lr5e-3_w64d6` is
# the default for d <= 16. The trigonometric interpolant, better on the study's sets, stalled on
# pinwheel (docs/guide.md). `--configs` runs a subset (stored rows of the others are kept).
_LIN, _TRIG = nsi.OneSidedLinearInterpolant(), nsi.OneSidedTrigonometricInterpolant()


def _net(width: int, depth: int) -> dict:
    return dict(network=nsi.FieldMLPSpec(width=width, depth=depth))


def _times(sampler) -> dict:
    return dict(objective=nsi.Objective(sampler))


CONFIG_STUDY = {
    "lin_lr2e-3_w128d3": dict(interpolant=_LIN, learning_rate=2e-3, **_net(128, 3)),
    "trig_lr2e-3_w128d3": dict(interpolant=_TRIG, learning_rate=2e-3, **_net(128, 3)),
    # Time trimmed to the interpolant's [0, time_max]: fit's default U[0, 1] reaches t = 1,
    # where the VP schedule's alpha' is infinite, and the loss became NaN.
    "vp_lr2e-3_w128d3": dict(
        interpolant=nsi.OneSidedVPInterpolant(), **_times(nsi.UniformTime(0.0, 1.0 - 1e-3)),
        learning_rate=2e-3, **_net(128, 3),
    ),
    "lin_lr5e-3_w128d3": dict(interpolant=_LIN, learning_rate=5e-3, **_net(128, 3)),
    "lin_lr5e-3_w64d6": dict(interpolant=_LIN, learning_rate=5e-3, **_net(64, 6)),
    "lin_lr5e-3_w64d8": dict(interpolant=_LIN, learning_rate=5e-3, **_net(64, 8)),
    "lin_lr5e-3_w48d8": dict(interpolant=_LIN, learning_rate=5e-3, **_net(48, 8)),
    "lin_lr5e-3_w128d6": dict(interpolant=_LIN, learning_rate=5e-3, **_net(128, 6)),
    "trig_lr5e-3_w128d3": dict(interpolant=_TRIG, learning_rate=5e-3, **_net(128, 3)),
    "trig_lr5e-3_w128d4": dict(interpolant=_TRIG, learning_rate=5e-3, **_net(128, 4)),
    "lin_lr5e-3_w128d4": dict(interpolant=_LIN, learning_rate=5e-3, **_net(128, 4)),
    "lin_lr2e-3_w128d3_beta21": dict(
        interpolant=_LIN, learning_rate=2e-3, **_times(nsi.BetaTime(2.0, 1.0)), **_net(128, 3)),
    "lin_lr2e-3_w128d3_beta12": dict(
        interpolant=_LIN, learning_rate=2e-3, **_times(nsi.BetaTime(1.0, 2.0)), **_net(128, 3)),
    "lin_lr2e-3_w128d4": dict(interpolant=_LIN, learning_rate=2e-3, **_net(128, 4)),
    "lin_lr2e-3_w256d3": dict(interpolant=_LIN, learning_rate=2e-3, **_net(256, 3)),
}


def config_study(data: Dataset, steps: int, only: list[str] | None = None) -> dict[str, dict]:
    """Every `CONFIG_STUDY` entry (or those of `only`, a list of ids) fitted for `steps`
    optimiser steps (same key and split), by id: CPU seconds, held-out NLL on <= 3000 test
    points, mean field evaluations per log_prob."""
    rows = {}
    x = data.test[:3000]
    for config_id, options in CONFIG_STUDY.items():
        if only and config_id not in only:
            continue
        try:
            fit = fit_siflow(jax.random.key(1), data.train, steps=steps, **options)
        except FloatingPointError as error:  # a configuration that diverges is a result too
            print(f"  config {config_id}: failed: {error}", flush=True)
            rows[config_id] = {"failed": str(error)}
            continue
        log_prob, _, _ = siflow_evaluators(fit.flow)
        values, nfe, _, _ = chunked_log_prob(log_prob, x)
        row = rows[config_id] = {
            "steps": fit.steps, "cpu": fit.cpu, "wall": fit.wall,
            "params": count_params(fit.flow.velocity), "nll": float(-np.mean(values)),
            "nll_se": standard_error(values), "nfe_log_prob": float(np.mean(nfe)),
        }
        print(f"  config {config_id:26s} {row['steps']} steps cpu {fit.cpu:5.1f}s"
              f" NLL {row['nll']:.3f} ± {row['nll_se']:.3f} NFE {row['nfe_log_prob']:.1f}",
              flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# held-out NLL against training budget (`--budget-curve`)
# ----------------------------------------------------------------------------------------------


def budget_curve(data: Dataset, budgets: list[float], methods: list[str], seed: int,
                 flowjax_patience: float | None = None) -> list[dict]:
    """Each method id of `methods` trained on `data` at every budget of `budgets` (same key and
    split as the main table): does a longer budget close the gap to the optimum, and for whom?
    `flowjax_patience`: flowjax's patience as this fraction of its planned epochs (recorded in
    the rows as `patience_fraction`)."""
    rows = []
    for budget in budgets:
        for method in methods:
            key = jax.random.key(seed + 1)
            protocol = {}
            if flowjax_patience is not None and method in FLOWJAX_KINDS:
                protocol = {"patience_fraction": flowjax_patience}
                trained = train_flowjax(key, data.train, budget, kind=FLOWJAX_KINDS[method],
                                        method=method, patience_fraction=flowjax_patience)
            else:
                trained = METHODS[method](key, data.train, budget)
            row, _, _ = evaluate(trained, data, jax.random.key(seed + 2), n_samples=0)
            row = {"budget": budget, "method": method, **protocol, **{k: row[k] for k in (
                "params", "train_cpu", "train_time", "steps", "nll", "nll_se", "nfe_log_prob")},
                "stopped_early": bool(row.get("stopped_early"))}
            rows.append(row)
            gap = "" if data.entropy is None else f" (gap {row['nll'] - data.entropy:+.3f})"
            print(f"  budget {budget:5.0f}s {method:18s} cpu {row['train_cpu']:6.1f}s"
                  f" ({row['steps']} steps) NLL {row['nll']:.3f} ± {row['nll_se']:.3f}{gap}",
                  flush=True)
            jax.clear_caches()
    return rows


# ----------------------------------------------------------------------------------------------
# training throughput at equal batch size and parameter count
# ----------------------------------------------------------------------------------------------

# One data set per dimension of these is measured (d = 30 is left out: flowjax's pilots there
# take over 10 minutes).
THROUGHPUT_DIMS = (2, 10, 64)


def matched_width(dim: int, target: int) -> int:
    """flowjax coupling-flow conditioner width whose parameter count is closest to `target`."""
    counts = {w: count_params(make_flowjax("coupling", jax.random.key(0), dim, w))
              for w in range(4, 400, 2)}
    return min(counts, key=lambda w: abs(counts[w] - target))


def throughput_study(datasets: dict[str, Dataset]) -> dict[str, dict]:
    """Steady training steps/s of `nsi.fit` and flowjax `fit_to_data` (coupling flow, width
    matched to fit's default network) at batch 512, each from two runs of different length
    after a warm-up (the difference cancels compilation and set-up), by data set id."""
    rows = {}
    for name, data in datasets.items():
        row = rows[name] = _throughput_one(data.train)
        print(f"  throughput {name}: numpyro_si {row['si_steps_per_s']:.0f} steps/s"
              f" ({row['si_params']} params), flowjax {row['flowjax_steps_per_s']:.0f} steps/s"
              f" ({row['flowjax_params']} params, width {row['flowjax_width']}),"
              f" ratio {row['ratio']:.2f}", flush=True)
    return rows


def _throughput_one(train: np.ndarray) -> dict:
    dim = train.shape[1]
    key = jax.random.key(7)
    si_params = count_params(nsi.FieldMLP(dim, key=key))  # fit's default network
    width = matched_width(dim, si_params)
    fj_params = count_params(make_flowjax("coupling", key, dim, width))
    whitened = jnp.asarray(Whitening(train).forward(train))
    steps_per_epoch = epoch_steps(train.shape[0])

    def run_si(steps):
        fit = fit_siflow(key, train, steps=steps)
        return fit.steps, _budget_seconds(fit.wall, fit.cpu)

    def run_fj(steps):
        _, epochs_run, wall, cpu = fit_flowjax(
            key, make_flowjax("coupling", key, dim, width), whitened,
            epochs=max(math.ceil(steps / steps_per_epoch), 1), patience=10**9)
        return epochs_run * steps_per_epoch, _budget_seconds(wall, cpu)

    si_rate, si_overhead = calibrate(("throughput si", dim), run_si, 300, 1500)
    fj_rate, fj_overhead = calibrate(("throughput fj", width, dim), run_fj, 100, 500)
    return {
        "dim": dim, "batch": BATCH_SIZE, "si_params": si_params, "flowjax_width": width,
        "flowjax_params": fj_params, "si_steps_per_s": si_rate, "flowjax_steps_per_s": fj_rate,
        "ratio": si_rate / fj_rate, "si_overhead": si_overhead, "flowjax_overhead": fj_overhead,
    }
