"""Evidence for `fit`'s defaults: held-out NLL and cost of nearby configurations on two moons.

Run: `.venv/bin/python benchmarks/fit_defaults.py` (about 4 minutes on 2 CPU cores). Prints a
table and writes it to `docs/benchmarks.md` (section "fit defaults"). All configurations run in
one process on the same data and keys, so the NLL column compares like with like; times are
wall-clock on a shared machine and only indicative.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

import numpyro_si as nsi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_io import write_text  # noqa: E402
from _density_methods import fit_siflow  # noqa: E402

# Measured when fit's defaults were the one-sided linear interpolant with lr 2e-3 and a FieldMLP
# of width 128, depth 3; every row spells that baseline out (BASE), so the table keeps its meaning
# after the defaults changed (lr 5e-3, and width 64, depth 6 for d <= 16; evidence:
# benchmarks/density.py --config-study).
BASE = dict(interpolant=nsi.OneSidedLinearInterpolant(), learning_rate=2e-3,
            network=nsi.FieldMLPSpec(width=128, depth=3))
# configuration id -> the options that differ from BASE (`steps`: optimiser steps, fit's default
# if absent)
CONFIGS = {
    "baseline": {},
    "batch256": dict(batch_size=256),
    "batch1024": dict(batch_size=1024),
    "lr1e-3": dict(learning_rate=1e-3),
    "w256d4": dict(network=nsi.FieldMLPSpec(width=256, depth=4)),
    "residual_d4": dict(network=nsi.FieldMLPSpec(width=128, depth=4, residual=True)),
    "trigonometric": dict(interpolant=nsi.OneSidedTrigonometricInterpolant()),
    "no_standardize": dict(standardize=False),
    "steps5k": dict(steps=5000),
    "steps20k": dict(steps=20000),
}
# the table's labels of the configuration ids
LABELS = {
    "baseline": "baseline (linear, batch 512, lr 2e-3, 10k steps)",
    "batch256": "batch 256",
    "batch1024": "batch 1024",
    "lr1e-3": "lr 1e-3",
    "w256d4": "width 256, depth 4",
    "residual_d4": "residual, depth 4",
    "trigonometric": "trigonometric one-sided",
    "no_standardize": "no standardisation",
    "steps5k": "5k steps",
    "steps20k": "20k steps",
}


HEADER = "| configuration | fit time (s) | steps | held-out NLL (nats) | ODE steps per log_prob |"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def main(out: Path = DEFAULT_OUT):
    data = nsi.datasets.two_moons(jax.random.key(1), 5000)
    test = nsi.datasets.two_moons(jax.random.key(2), 2000)
    rows = []
    print(HEADER)
    for config, options in CONFIGS.items():
        fit = fit_siflow(jax.random.key(3), data, **(BASE | options))
        log_prob, info = jax.jit(fit.flow.log_prob_with_info)(test)
        nll, se = float(-jnp.mean(log_prob)), float(jnp.std(log_prob) / jnp.sqrt(test.shape[0]))
        row = (
            f"| {LABELS[config]} | {fit.wall:.1f} | {fit.steps} | {nll:.3f} ± {se:.3f} |"
            f" {float(jnp.mean(info.num_steps)):.1f} |"
        )
        print(row, flush=True)
        rows.append(row)

    section = "\n".join(
        [
            "## fit defaults (two moons)",
            "",
            "Command: `.venv/bin/python benchmarks/fit_defaults.py`. Machine: "
            f"{platform.machine()}, {platform.processor() or 'cpu'}, Python "
            f"{sys.version.split()[0]}, jax {jax.__version__}, {jax.device_count()} CPU device(s).",
            "5000 training and 2000 held-out points of `nsi.datasets.two_moons`; every row is one"
            " `nsi.fit` with the baseline (the one-sided linear interpolant, lr 2e-3, width 128,"
            " depth 3, batch 512, 10 000 optimiser steps; fit's defaults are lr 5e-3 and a"
            " dimension-dependent network) except the change named. NLL is the mean negative"
            " log-likelihood on the held-out points ± its standard error. Fit times are wall-clock"
            " on a 2-core machine that may be shared: indicative, not a speed benchmark.",
            "",
            HEADER,
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )
    text = out.read_text() if out.exists() else "# Benchmarks\n\n"
    marker = "## fit defaults (two moons)"
    if marker in text:
        start = text.index(marker)
        end = text.find("\n## ", start + len(marker))
        text = text[:start] + section + ("\n" + text[end + 1 :] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    write_text(out, text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
