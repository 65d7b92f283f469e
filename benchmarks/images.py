"""A flow on 784-dimensional images on this CPU: scikit-learn's 8x8 digits (1797 images shipped with
the package) upscaled to 28x28 (MNIST's size), a `FieldUNet` velocity trained by `nsi.train` within
a stated budget, and samples drawn with a fixed-step ODE map, shown beside training images as a
figure.

Data: `load_digits()` pixels / 16, resized to 28x28 by `jax.image.resize` (bilinear), plus N(0,
0.02^2) pixel noise (so that no pixel is constant and the density exists in all 784 dimensions);
1597 images to train on, 200 held out. The flow: `build_flow(key, x,
velocity_network=nsi.FieldUNet((1, 28, 28), widths=(16, 32), patch=2, key=...))` (standardised per
pixel, the one-sided linear interpolant); `train` with batches of 128 for `--steps` steps (default
4000), validation every 500 steps. Samples: 64 draws by the midpoint rule with 16 steps.

Reported (written to `docs/benchmarks.md` between `<!-- images:start -->` and `<!-- images:end
-->`, the figure to `docs/figures/images/samples.png`): training seconds and steps per second, the
validation loss at the start and the end, and sampling seconds. No held-out likelihood: an exact
divergence in 784 dimensions costs 784 Jacobian-vector products per solver step and point; the
validation loss and the figure are the checks.

Run: `.venv/bin/python benchmarks/images.py` (needs `make install-bench` for scikit-learn and
matplotlib); `--quick` for a smoke run that writes nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import numpyro_si as nsi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_io import write_docs_region  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks.md"
FIGURE = ROOT / "docs" / "figures" / "images" / "samples.png"
START, END = "<!-- images:start -->", "<!-- images:end -->"
SIDE, NOISE, BATCH, N_HELD_OUT = 28, 0.02, 128, 200


def digits_28(seed: int = 0) -> np.ndarray:
    """scikit-learn's digits at 28x28, flattened, with pixel noise: (1797, 784) float32."""
    from sklearn.datasets import load_digits

    small = load_digits().data.reshape(-1, 8, 8).astype(np.float32) / 16.0
    big = jax.image.resize(jnp.asarray(small), (small.shape[0], SIDE, SIDE), "linear")
    rng = np.random.default_rng(seed)
    noisy = np.asarray(big) + NOISE * rng.standard_normal(big.shape).astype(np.float32)
    return noisy.reshape(small.shape[0], SIDE * SIDE)


def figure(train: np.ndarray, samples: np.ndarray, path: Path, caption: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    for ax, images, title in ((axes[0], train, "training images"),
                              (axes[1], samples, "flow samples")):
        grid = images[:64].reshape(8, 8, SIDE, SIDE).transpose(0, 2, 1, 3).reshape(
            8 * SIDE, 8 * SIDE)
        ax.imshow(np.clip(grid, 0, 1), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--quick", action="store_true", help="60 steps; writes nothing")
    args = parser.parse_args(argv)
    steps = 60 if args.quick else args.steps
    data = digits_28()
    order = np.random.default_rng(1).permutation(data.shape[0])
    train, held_out = data[order[N_HELD_OUT:]], data[order[:N_HELD_OUT]]
    load_start = os.getloadavg()[0]
    net = nsi.FieldUNet((1, SIDE, SIDE), widths=(16, 32), patch=2, key=jax.random.key(0))
    flow = nsi.build_flow(jax.random.key(1), train, velocity_network=net)
    n_params = sum(x.size for x in jax.tree.leaves(flow.velocity) if hasattr(x, "size"))
    tic = time.perf_counter()
    flow, history = nsi.train(jax.random.key(2), flow, train, num_steps=steps, batch_size=BATCH,
                              val_data=held_out, validation=nsi.Validation(every=min(500, steps)),
                              show_progress=not args.quick)
    train_seconds = time.perf_counter() - tic
    sampler = flow.with_settings(sampler=nsi.ODESampler(diffrax.Midpoint(), n_steps=16))
    draw = jax.jit(lambda key: sampler.sample(key, (64,)))
    jax.block_until_ready(draw(jax.random.key(3)))  # compile
    tic = time.perf_counter()
    samples = np.asarray(jax.block_until_ready(draw(jax.random.key(4))))
    sample_seconds = time.perf_counter() - tic
    load_end = os.getloadavg()[0]
    command = "`.venv/bin/python benchmarks/images.py" + (
        f" --steps {args.steps}`" if args.steps != 4000 else "`")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} (cpu)"
    lines = [
        "## A flow on 784-dimensional images",
        "",
        f"Command: {command}. Machine: {machine}; 1-minute load average {load_start:.2f} at the"
        f" start, {load_end:.2f} at the end. scikit-learn's 8x8 digits upscaled to 28x28 (784"
        f" dimensions) with N(0, {NOISE}^2) pixel noise, {train.shape[0]} training and"
        f" {held_out.shape[0]} held-out images; `FieldUNet((1, 28, 28), widths=(16, 32), patch=2)`"
        f" ({n_params:,} parameters) as the velocity, batches of {BATCH}. Samples: the"
        " midpoint rule with 16 steps. The script's docstring has the set-up.",
        "",
        "| training steps | training seconds | steps per second | validation loss, first"
        " (last) | 64 samples, seconds |",
        "| --- | --- | --- | --- | --- |",
        f"| {history.num_steps} | {train_seconds:.0f} | {history.num_steps / train_seconds:.1f} |"
        f" {history.val_loss[0]:.4f} ({history.val_loss[-1]:.4f}) | {sample_seconds:.2f} |",
        "",
        "![training images and flow samples](figures/images/samples.png)",
    ]
    print("\n".join(lines))
    if args.quick:
        return
    figure(train, samples, FIGURE,
           f"FieldUNet flow, {history.num_steps} steps in {train_seconds:.0f} s on"
           f" {os.cpu_count()} CPU cores; samples by 16 midpoint steps")
    write_docs_region(OUT, START, END, lines)


if __name__ == "__main__":
    main()
