"""SDE sampling against the ODE: sample quality by noise level, schedule and training budget.

The stochastic-interpolant papers predict that sampling by the SDE dX = (b + eps s) dt +
sqrt(2 eps) dW corrects part of an imperfect learned velocity field, which the probability-flow
ODE transports as it is. This benchmark measures it on Gaussian mixtures with narrow modes, whose
answers are known (`numpyro_si.oracle`):

- `ring8`: 8 modes on a circle of radius 4, sd 0.15, d = 2;
- `ring8_narrow`: the same with sd 0.05;
- `mix4_d8`: 4 modes with means drawn on a sphere of radius 3, sd 0.2, d = 8.

For each target, two models are fitted to 20 000 draws with `nsi.fit` (every other option at its
default) at two training budgets: the velocity-only one-sided model (the default; its score
follows from the velocity) and a two-sided model with a learned score
(`LinearInterpolant(BrownianGamma(1.0))`, `learn_score=True`). Each model then draws 4 000
samples with every sampler, once per sampling key (three keys by default, `--sample-keys`):

- `ODE`: the probability-flow ODE (the default sampler);
- `SDE eps=e`: `nsi.SDESampler(e)`, constant eps, error-controlled adaptive steps (the default
  SDE solve: Heun, rtol = atol = 1e-2);
- `SDE decaying e`: `nsi.SDESampler(nsi.DecayingEps(e))`, eps(t) = e (1 - t) (the default
  schedule is e = 1);
- `SDE eps=e, 256 fixed`: `nsi.SDESampler(e, n_steps=256)`, fixed Euler-Maruyama steps (no error
  control), for comparison.

Reported per row: the energy distance to 4 000 fresh true draws (the noise floor is that of two
independent true sets), the share of samples farther than 4 sd from every mode ("off-mode"), the
largest error of a mode's share of the draws (each draw assigned to its nearest mode; "weight
error"; at these separations the energy distance mostly measures these shares), the
cross-entropy -E_q[log p] of the samples under the true density (nats; exact draws give the
entropy, and values below it mean draws piled onto the modes' centres), and the mean number of
solver steps per draw (`SIFlow.sample_with_info`). Each measured column is given as the mean
over the sampling keys ± their standard deviation (the spread of one set of 4 000 draws; the
mean's standard error is that divided by sqrt(keys)). The floors are the same statistics for
sets of exact draws, one per sampling key.

Run: `.venv/bin/python benchmarks/sde.py` (about 15 minutes on 2 cores; `--quick` for a smoke
run that writes nothing). The table goes to `docs/benchmarks.md` between `<!-- sde:start -->`
and `<!-- sde:end -->`; nothing else in the file is touched.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import numpyro_si as nsi
from numpyro_si.oracle import GaussianMixture

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_io import write_docs_region  # noqa: E402

START, END = "<!-- sde:start -->", "<!-- sde:end -->"
OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
N_TRAIN, N_SAMPLES = 20_000, 4_000


def ring(n_modes: int, radius: float, sd: float) -> GaussianMixture:
    angles = 2 * np.pi * np.arange(n_modes) / n_modes
    means = np.stack([radius * np.cos(angles), radius * np.sin(angles)], 1)
    return GaussianMixture(np.ones(n_modes) / n_modes, means,
                           np.tile(sd**2 * np.eye(2), (n_modes, 1, 1)))


def sphere_mixture(n_modes: int, dim: int, radius: float, sd: float, seed: int = 0):
    directions = np.random.default_rng(seed).standard_normal((n_modes, dim))
    means = radius * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    return GaussianMixture(np.ones(n_modes) / n_modes, means,
                           np.tile(sd**2 * np.eye(dim), (n_modes, 1, 1)))


TARGETS = {
    "ring8": (lambda: ring(8, 4.0, 0.15), 0.15),
    "ring8_narrow": (lambda: ring(8, 4.0, 0.05), 0.05),
    "mix4_d8": (lambda: sphere_mixture(4, 8, 3.0, 0.2), 0.2),
}
MODELS = {
    "velocity only": {},
    "learned score": dict(interpolant=nsi.LinearInterpolant(nsi.BrownianGamma(1.0)),
                          learn_score=True),
}


def samplers(quick: bool) -> dict:
    out = {"ODE": nsi.ODESampler()}
    for eps in (0.1, 0.5, 1.0, 2.0, 5.0) if not quick else (1.0,):
        out[f"SDE eps={eps:g}"] = nsi.SDESampler(eps)
    for eps in (1.0, 5.0) if not quick else (1.0,):
        out[f"SDE decaying {eps:g}"] = nsi.SDESampler(nsi.DecayingEps(eps))
    for eps in (1.0, 2.0) if not quick else ():
        out[f"SDE eps={eps:g}, 256 fixed"] = nsi.SDESampler(eps, n_steps=256)
    return out


def energy_distance(x: np.ndarray, y: np.ndarray, chunk: int = 500) -> float:
    """The (V-statistic) energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'|."""

    @jax.jit
    def mean_distance(a, b):
        return jnp.mean(jnp.linalg.norm(a[:, None] - b[None], axis=-1))

    def mean_pairwise(a, b):
        parts = [float(mean_distance(a[i:i + chunk], b)) * len(a[i:i + chunk])
                 for i in range(0, len(a), chunk)]
        return sum(parts) / len(a)

    x, y = jnp.asarray(x), jnp.asarray(y)
    return 2 * mean_pairwise(x, y) - mean_pairwise(x, x) - mean_pairwise(y, y)


def weight_error(x: np.ndarray, target: GaussianMixture) -> float:
    """The largest |share of draws nearest a mode - its weight| over the modes."""
    nearest = np.linalg.norm(x[:, None] - np.asarray(target.means)[None], axis=-1).argmin(1)
    shares = np.bincount(nearest, minlength=len(target.weights)) / len(x)
    return float(np.max(np.abs(shares - np.asarray(target.weights))))


def off_mode_share(x: np.ndarray, target: GaussianMixture, sd: float) -> float:
    distances = np.linalg.norm(x[:, None] - np.asarray(target.means)[None], axis=-1).min(1)
    return float(np.mean(distances > 4 * sd))


@eqx.filter_jit
def _draw(flow, key):
    return flow.sample_with_info(key, (N_SAMPLES,))


def evaluate_once(flow, key, target, sd, reference):
    """One sampling key's statistics: energy, off-mode, weights, cross-entropy, steps, seconds."""
    tic = time.process_time()
    draws, info = _draw(flow, key)
    draws = np.asarray(draws)
    seconds = time.process_time() - tic
    return dict(
        energy=energy_distance(draws, reference), off_mode=off_mode_share(draws, target, sd),
        weights=weight_error(draws, target),
        cross_entropy=float(-np.mean(np.asarray(target.log_prob(jnp.asarray(draws))))),
        steps=float(np.mean(np.asarray(info.num_steps))), seconds=seconds,
    )


def spread(results: list[dict]) -> dict:
    """Each statistic's mean over the sampling keys and (as `<name>_sd`) its standard deviation."""
    out = {}
    for name in results[0]:
        values = np.array([r[name] for r in results])
        out[name] = float(values.mean())
        out[f"{name}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def evaluate(flow, sampler, keys, target, sd, reference):
    """The row of one sampler: `spread` of `evaluate_once` over `keys`, or the solver's refusal."""
    flow = flow.with_settings(sampler=sampler)
    try:
        return spread([evaluate_once(flow, key, target, sd, reference) for key in keys])
    except Exception as error:  # noqa: BLE001 - a refused solve is a row of the table
        return dict(error=f"{type(error).__name__}: {str(error).splitlines()[0][:120]}")


HEADER = (f"{'target':13s} {'model':14s} {'steps':>6s} {'sampler':26s} {'energy':>8s}"
          f" {'off-mode':>8s} {'weights':>7s} {'cross-ent':>9s} {'solver steps':>12s}"
          f" {'CPU s':>6s}")


def fmt_row(target, model, budget, name, r) -> str:
    if "error" in r:
        return f"{target:13s} {model:14s} {budget:6d} {name:26s} {r['error']}"
    return (f"{target:13s} {model:14s} {budget:6d} {name:26s} {r['energy']:8.4f}"
            f" {r['off_mode']:8.3f} {r['weights']:7.3f} {r['cross_entropy']:9.3f} {r['steps']:12.0f}"
            f" {r['seconds']:6.1f}")


def pm(r: dict, name: str, digits: int) -> str:
    return f"{r[name]:.{digits}f} ± {r[name + '_sd']:.{digits}f}"


def run(quick: bool, n_keys: int = 3) -> tuple[list, list]:
    budgets = (300,) if quick else (1500, 6000)
    sampling_keys = jax.random.split(jax.random.key(7), n_keys)
    rows, floors = [], []
    print(HEADER, flush=True)
    for index, (name, (make, sd)) in enumerate(TARGETS.items()):
        if quick and index:
            break
        target = make()
        keys = jax.random.split(jax.random.key(index), 5)
        data = np.asarray(target.sample(keys[0], N_TRAIN)[0])
        reference = np.asarray(target.sample(keys[1], N_SAMPLES)[0])
        seconds = [np.asarray(target.sample(k, N_SAMPLES)[0])
                   for k in jax.random.split(keys[2], n_keys)]
        entropy, entropy_se = target.entropy_monte_carlo(keys[3], 100_000)
        floor = spread([dict(energy=energy_distance(x, reference),
                             off_mode=off_mode_share(x, target, sd),
                             weights=weight_error(x, target)) for x in seconds])
        floors.append((name, target.dim, sd, floor, float(entropy), float(entropy_se)))
        for model, options in MODELS.items():
            for budget in budgets:
                flow, _ = nsi.fit(keys[4], data, num_steps=budget, show_progress=False,
                                  **options)
                for sampler_name, sampler in samplers(quick).items():
                    result = evaluate(flow, sampler, sampling_keys, target, sd, reference)
                    rows.append((name, model, budget, sampler_name, result))
                    print(fmt_row(name, model, budget, sampler_name, result), flush=True)
    return rows, floors


def machine() -> str:
    return (f"{platform.machine()} {platform.processor() or 'cpu'}, {os.cpu_count()} cores, Python"
            f" {platform.python_version()}, jax {jax.__version__}, numpyro_si {nsi.__version__},"
            " float32")


def render(rows, floors, command: str, n_keys: int) -> list[str]:
    lines = [
        "## SDE sampling: noise level, schedule and training budget",
        "",
        f"Command: `{command}`. Machine: {machine()}. What each column means, the targets and"
        " the models: the docstring of `benchmarks/sde.py`. Energy distance and off-mode share"
        " against 4 000 fresh true draws; cross-entropy -E_q[log p] in nats (exact draws give"
        " the entropy; values below it mean draws piled onto the modes' centres); solver steps:"
        " mean per draw (ODE: Tsit5 steps; SDE: Heun steps plus the final ODE stretch). The"
        " floors are those of sets of 4 000 exact draws. Weight error: the largest"
        " |share of draws nearest a mode - its weight|. Every cell is the mean ± standard"
        f" deviation over {n_keys} sampling keys (sets of draws).",
        "",
        "| target | d | mode sd | energy floor | off-mode floor | weight error floor | entropy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, dim, sd, floor, entropy, entropy_se in floors:
        lines.append(f"| {name} | {dim} | {sd:g} | {pm(floor, 'energy', 4)} |"
                     f" {pm(floor, 'off_mode', 3)} | {pm(floor, 'weights', 3)} |"
                     f" {entropy:.3f} ± {entropy_se:.3f} |")
    lines += ["", "| target | model | training steps | sampler | energy distance | off-mode |"
              " weight error | cross-entropy | solver steps |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, model, budget, sampler, r in rows:
        if "error" in r:
            lines.append(f"| {name} | {model} | {budget} | {sampler} | refused: {r['error']} |"
                         " | | | |")
        else:
            lines.append(f"| {name} | {model} | {budget} | {sampler} | {pm(r, 'energy', 4)} |"
                         f" {pm(r, 'off_mode', 3)} | {pm(r, 'weights', 3)} |"
                         f" {pm(r, 'cross_entropy', 3)} | {r['steps']:.0f} |")
    return lines


def write_region(text_lines: list[str], out: Path = OUT) -> None:
    """The SDE region of `out` (docs/benchmarks.md); the rest of the file is kept."""
    write_docs_region(out, START, END, text_lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings; writes nothing")
    parser.add_argument("--sample-keys", type=int, default=3,
                        help="sampling keys (sets of draws) per row; the spread is over these")
    args = parser.parse_args(argv)
    rows, floors = run(args.quick, args.sample_keys)
    lines = render(rows, floors, "python benchmarks/sde.py", args.sample_keys)
    if not args.quick:
        write_region(lines)
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
