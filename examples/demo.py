"""The numpyro_si main job (`make demo`): learn a density from samples, check it, sample it, and
use it as a learned prior in a NumPyro model run by NUTS.

Steps:
1. two-moons samples (built in, `numpyro_si.datasets`), split into training and held-out sets;
2. `nsi.fit` learns the velocity of a one-sided linear interpolant (flow matching);
3. held-out cross-entropy (mean negative log-likelihood by the probability-flow ODE, with its
   Monte Carlo standard error);
4. samples by the ODE and by the SDE (score from the velocity, eps(t) = eps0 (1 - t));
5. a figure: data, ODE and SDE samples, and the learned log-density heat map;
6. the flow as the prior of theta in y ~ N(theta, 0.3^2 I), NUTS, and an ArviZ summary;
7. save and reload the flow.

Everything lands in `demo_output/`. Run: `python examples/demo.py [--steps N] [--out DIR]`.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning)  # ArviZ's refactor notice

import arviz as az  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

import numpyro_si as nsi  # noqa: E402


def main(steps: int = 10_000, out: str = "demo_output", n_train: int = 5000, n_test: int = 2000):
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    key_data, key_test, key_fit, key_ode, key_sde, key_mcmc = jax.random.split(jax.random.key(0), 6)

    # 1. data
    data = nsi.datasets.two_moons(key_data, n_train)
    test = nsi.datasets.two_moons(key_test, n_test)
    print(f"data: two moons, {n_train} training and {n_test} held-out points in 2-d")

    # 2. fit
    tic = time.perf_counter()
    flow, history = nsi.fit(key_fit, data, num_steps=steps)
    print(
        f"fit: {history.num_steps} steps in {time.perf_counter() - tic:.1f} s,"
        f" best validation loss {history.val_loss.min():.4f} at epoch {history.best_epoch}"
    )

    # 3. held-out cross-entropy
    tic = time.perf_counter()
    log_prob, info = jax.jit(flow.log_prob_with_info)(test)
    nll = -log_prob
    mean, se = float(jnp.mean(nll)), float(jnp.std(nll) / jnp.sqrt(n_test))
    print(
        f"held-out cross-entropy: {mean:.3f} +/- {se:.3f} nats (mean NLL +/- s.e.),"
        f" {float(jnp.mean(info.num_steps)):.1f} ODE steps per point,"
        f" {time.perf_counter() - tic:.1f} s"
    )

    # 4. samples
    sample = jax.jit(lambda f, k: f.sample(k, (n_test,)))
    ode_samples = sample(flow, key_ode)
    sde_flow = flow.with_settings(sampler="sde", eps=nsi.DecayingEps(1.0))
    sde_samples = sample(sde_flow, key_sde)
    for name, draws in (("ODE", ode_samples), ("SDE", sde_samples)):
        print(
            f"{name} samples: mean {jnp.round(draws.mean(0), 3)}, std {jnp.round(draws.std(0), 3)}"
            f" (data: mean {jnp.round(test.mean(0), 3)}, std {jnp.round(test.std(0), 3)})"
        )

    # 5. figure
    lo, hi = jnp.min(test, axis=0) - 0.5, jnp.max(test, axis=0) + 0.5
    gx, gy = jnp.meshgrid(jnp.linspace(lo[0], hi[0], 120), jnp.linspace(lo[1], hi[1], 120))
    grid = jnp.stack([gx.ravel(), gy.ravel()], axis=-1)
    grid_log_prob = jax.jit(flow.log_prob)(grid).reshape(gx.shape)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4), sharex=True, sharey=True)
    panels = (("held-out data", test), ("ODE samples", ode_samples), ("SDE samples", sde_samples))
    for ax, (title, points) in zip(axes, panels, strict=False):
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
        ax.set_title(title)
    mesh = axes[3].pcolormesh(gx, gy, jnp.maximum(grid_log_prob, -10.0), shading="auto")
    axes[3].set_title("learned log density")
    fig.colorbar(mesh, ax=axes[3])
    for ax in axes:
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal")
    fig.tight_layout()
    figure_path = out_dir / "two_moons.png"
    fig.savefig(figure_path, dpi=110)
    plt.close(fig)
    print(f"figure: {figure_path}")

    # 6. learned prior in a NumPyro model
    observed = jnp.array([0.5, 0.25])

    def model(y=None):
        theta = numpyro.sample("theta", flow)
        numpyro.sample("y", dist.Normal(theta, 0.3).to_event(1), obs=y)

    tic = time.perf_counter()
    mcmc = MCMC(
        NUTS(model), num_warmup=300, num_samples=500, num_chains=2, chain_method="sequential",
        progress_bar=True,
    )
    mcmc.run(key_mcmc, y=observed)
    print(f"NUTS with the learned prior (y = {observed.tolist()}, 2 chains):"
          f" {time.perf_counter() - tic:.1f} s")
    print(az.summary(az.from_numpyro(mcmc), round_to=3).to_string())

    # 7. save and reload
    path = out_dir / "two_moons_flow.nsi"
    nsi.save(path, flow)
    reloaded = nsi.load(path)
    same = bool(jnp.array_equal(reloaded.log_prob(test[:10]), flow.log_prob(test[:10])))
    print(f"saved to {path}; reloaded flow gives identical log_prob: {same}")
    print(f"demo finished in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000, help="optimiser steps for fit")
    parser.add_argument("--out", default="demo_output", help="output folder")
    args = parser.parse_args()
    main(steps=args.steps, out=args.out)
