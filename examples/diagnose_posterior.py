"""Diagnose how well an SIFlow matches a posterior.

1. NUTS on a small nonlinear regression whose posterior is curved (a "banana") and has a
   positive noise scale (so it has a constrained site);
2. fit an SIFlow to half of the draws in the model's unconstrained space;
3. `numpyro_si.diagnostics.diagnostic_report` on the other half, against the model's own
   unnormalised posterior: cross-entropy, the loss profile L(t), importance weights (log
   marginal likelihood, reverse KL, ESS, Pareto k), and figures.

Run: `python examples/diagnose_posterior.py [--out DIR]` (about two minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning)  # ArviZ's refactor notice

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

import numpyro_si as nsi  # noqa: E402
from numpyro_si import diagnostics  # noqa: E402


def model(x, y=None):
    """y ~ N(a exp(b x), sigma): a and b are strongly and nonlinearly correlated."""
    a = numpyro.sample("a", dist.Normal(0.0, 2.0))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.sample("y", dist.Normal(a * jnp.exp(b * x), sigma), obs=y)


def main(out: str = "demo_output/diagnose_posterior"):
    key_data, key_noise, key_mcmc, key_fit, key_report = jax.random.split(jax.random.key(0), 5)
    x = jnp.linspace(-1.0, 1.0, 8)
    y = 1.5 * jnp.exp(0.7 * x) + 0.4 * jax.random.normal(key_noise, x.shape)

    mcmc = MCMC(NUTS(model), num_warmup=500, num_samples=2000, num_chains=2,
                chain_method="sequential", progress_bar=False)
    mcmc.run(key_mcmc, x, y)
    mcmc.print_summary()

    # The flow lives where NUTS works: the unconstrained space (sigma -> log sigma).
    log_target = diagnostics.log_target_from_model(model, x, y)
    draws = log_target.unconstrain(mcmc.get_samples())  # (4000, 3), sites in sorted order
    draws = jax.random.permutation(key_data, draws)
    train, heldout = draws[:2000], draws[2000:]
    flow, history = nsi.fit(key_fit, train, num_steps=4000)

    report = diagnostics.diagnostic_report(
        key_report, flow, heldout, history=history, log_target=log_target,
        names=[f"{name} (unconstrained)" if name == "sigma" else name
               for name in log_target.site_names],
    )
    print(report)
    paths = report.save_figures(Path(out))
    print("figures:", ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output/diagnose_posterior")
    main(parser.parse_args().out)
