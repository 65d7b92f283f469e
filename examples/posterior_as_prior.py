"""Posterior as prior: carry one study's posterior into the next with an SIFlow.

1. Study 1, a logistic regression on generated data with a weak N(0, 2.5^2) prior on the three
   coefficients: NUTS posterior draws.
2. `nsi.fit` learns an SIFlow from those draws.
3. Study 2 (new data, same coefficients): NUTS with the SIFlow as the prior, by the latent route
   (`FlowReparam`: NUTS runs in the flow's Gaussian base space; the faster route in
   docs/benchmarks.md) and, with `--density`, by the density route too.
4. The joint analysis of both studies with the original prior is the reference: exact sequential
   updating would reproduce it, so the gap measures what the flow lost.

Writes `summary.md` (posterior means and sds side by side, with Monte Carlo standard errors),
`summary.csv` and `marginals.png` to `--out` (default `examples_output/posterior_as_prior`).

Run: `python examples/posterior_as_prior.py [--out DIR] [--density]` (two to three minutes on
2 CPU cores); `--quick` runs tiny settings (a smoke test, not a result).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.diagnostics import effective_sample_size  # noqa: E402
from numpyro.handlers import reparam  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

import numpyro_si as nsi  # noqa: E402

TRUE_BETA = np.array([-0.5, 1.2, -0.8])
NAMES = ["intercept", "beta_1", "beta_2"]


def simulate(key, n):
    """A design with an intercept and two correlated covariates, and Bernoulli outcomes."""
    key_x, key_y = jax.random.split(key)
    z = jax.random.normal(key_x, (n, 2))
    x = jnp.column_stack([jnp.ones(n), z[:, 0], 0.6 * z[:, 0] + 0.8 * z[:, 1]])
    y = jax.random.bernoulli(key_y, jax.nn.sigmoid(x @ TRUE_BETA)).astype(jnp.float32)
    return x, y


def model(prior, x, y=None):
    beta = numpyro.sample("beta", prior)
    numpyro.sample("y", dist.Bernoulli(logits=x @ beta), obs=y)


def run_nuts(key, model_fn, *args, warmup, samples, chains):
    mcmc = MCMC(NUTS(model_fn), num_warmup=warmup, num_samples=samples, num_chains=chains,
                chain_method="sequential", progress_bar=False)
    tic = time.perf_counter()
    mcmc.run(key, *args)
    seconds = time.perf_counter() - tic
    beta = np.asarray(mcmc.get_samples(group_by_chain=True)["beta"])  # (chains, draws, 3)
    return beta, seconds


def summarise(beta):
    """Means, sds, and the Monte Carlo standard error of each mean (ESS-based)."""
    flat = beta.reshape(-1, beta.shape[-1])
    ess = effective_sample_size(beta)
    sd = flat.std(0)
    return flat.mean(0), sd, sd / np.sqrt(ess), ess


def main(out="examples_output/posterior_as_prior", density=False, quick=False):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(warmup=100, samples=100, chains=1) if quick else dict(
        warmup=500, samples=1000, chains=2)
    fit_steps = 200 if quick else 5000
    n_per_study = 80
    keys = jax.random.split(jax.random.key(0), 8)
    x1, y1 = simulate(keys[0], n_per_study)
    x2, y2 = simulate(keys[1], n_per_study)
    weak_prior = dist.Normal(jnp.zeros(3), 2.5).to_event(1)

    # 1. study 1 alone
    beta1, t1 = run_nuts(keys[2], model, weak_prior, x1, y1, **settings)
    draws1 = beta1.reshape(-1, 3)
    print(f"study 1: {draws1.shape[0]} posterior draws in {t1:.0f} s")

    # 2. the flow, fitted to study 1's posterior draws
    tic = time.perf_counter()
    flow, history = nsi.fit(keys[3], jnp.asarray(draws1), num_steps=fit_steps, show_progress=False)
    print(f"fit: {history.num_steps} steps in {time.perf_counter() - tic:.0f} s")
    nsi.save(out / "study1_posterior.nsi", flow)

    # 3. study 2 with the flow as its prior; 4. the joint analysis as the reference
    results = {"study 1 alone": beta1}
    latent = reparam(model, config={"beta": nsi.FlowReparam()})
    results["study 2, SIFlow prior (latent)"], t_latent = run_nuts(
        keys[4], latent, flow, x2, y2, **settings)
    print(f"study 2, latent route: {t_latent:.0f} s")
    if density:
        results["study 2, SIFlow prior (density)"], t_density = run_nuts(
            keys[5], model, flow, x2, y2, **settings)
        print(f"study 2, density route: {t_density:.0f} s")
    results["joint (both studies)"], t_joint = run_nuts(
        keys[6], model, weak_prior, jnp.concatenate([x1, x2]), jnp.concatenate([y1, y2]),
        **settings)
    print(f"joint analysis: {t_joint:.0f} s")

    # the table: means and sds side by side, and the gap to the joint analysis in MC units
    summaries = {name: summarise(beta) for name, beta in results.items()}
    joint_mean, _, joint_se, _ = summaries["joint (both studies)"]
    lines = [
        "| analysis | coefficient | mean ± MC se | sd | ESS | (mean - joint) / combined se |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    csv = ["analysis,coefficient,mean,mc_se,sd,ess,z_vs_joint"]
    for name, (mean, sd, se, ess) in summaries.items():
        for j, coefficient in enumerate(NAMES):
            z = (mean[j] - joint_mean[j]) / np.hypot(se[j], joint_se[j])
            z_text = "" if name.startswith("joint") else f"{z:+.2f}"
            lines.append(f"| {name} | {coefficient} | {mean[j]:.3f} ± {se[j]:.3f} | {sd[j]:.3f} |"
                         f" {ess[j]:.0f} | {z_text} |")
            csv.append(f"{name},{coefficient},{mean[j]:.5f},{se[j]:.5f},{sd[j]:.5f},{ess[j]:.1f},"
                       f"{'' if name.startswith('joint') else f'{z:.3f}'}")
    table = "\n".join(lines)
    print(table)
    header = (
        "# Posterior as prior\n\nCommand: `python examples/posterior_as_prior.py"
        f"{' --density' if density else ''}{' --quick' if quick else ''}`. True coefficients"
        f" {TRUE_BETA.tolist()}; {n_per_study} observations per study. Exact sequential updating"
        " equals the joint analysis, so the last column (difference in units of the combined"
        " Monte Carlo standard error) measures what the flow prior lost.\n\n"
    )
    (out / "summary.md").write_text(header + table + "\n")
    (out / "summary.csv").write_text("\n".join(csv) + "\n")

    # the figure: marginals of each analysis
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for j, (ax, coefficient) in enumerate(zip(axes, NAMES, strict=True)):
        for name, beta in results.items():
            ax.hist(beta[..., j].reshape(-1), bins=40, density=True, histtype="step", label=name)
        ax.axvline(TRUE_BETA[j], color="k", lw=0.8, ls=":")
        ax.set_title(coefficient)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "marginals.png", dpi=120)
    plt.close(fig)
    print(f"wrote {out / 'summary.md'}, {out / 'summary.csv'}, {out / 'marginals.png'}")
    return summaries


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples_output/posterior_as_prior")
    parser.add_argument("--density", action="store_true", help="also run the density route")
    parser.add_argument("--quick", action="store_true", help="tiny settings (a smoke test)")
    args = parser.parse_args()
    main(args.out, density=args.density, quick=args.quick)
