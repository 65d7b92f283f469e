"""Can an SIFlow fitted to exact phi^4 draws propose well? Importance-sampling ESS against fit steps.

NumPyro NUTS draws from the phi ~ +1 mode of the `benchmarks/mcmc.py` phi^4 target (8 chains x 500),
mirrored to both modes; `nsi.fit` on the whitened draws (as `adaptive.run` does: within-chain
covariance; `POOLED=1` for the pooled covariance), then `importance_diagnostics` of the flow
against the target (256 draws) and the fraction of flow draws in a mode. Separates the flow's accuracy
from the quality of the chains' training data in the MCMC benchmark.

Run: `[POOLED=1] .venv/bin/python benchmarks/phi4_flow_check.py 1000,4000 [learning_rate]` (~3 minutes).
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jax
import jax.numpy as jnp
import mcmc as M
import numpy as np
from _density_methods import fit_siflow
from numpyro.infer import MCMC, NUTS

from numpyro_si.diagnostics import importance_diagnostics
from numpyro_si.inference.adaptive import _whitening, whitened_flow

tic = time.time()
mc = MCMC(NUTS(potential_fn=lambda x: -M.phi4_logdensity(x)), num_warmup=300, num_samples=500,
          num_chains=8, chain_method="vectorized", progress_bar=False)
init = jnp.ones((8, 64)) + 0.05 * jax.random.normal(jax.random.key(1), (8, 64))
mc.run(jax.random.key(0), init_params=init)
chains = np.asarray(mc.get_samples(group_by_chain=True))  # (8, 500, 64)
chains = np.concatenate([chains, -chains])  # both modes, weight 1/2: 16 chains, 8 per mode
x = chains.reshape(-1, chains.shape[-1])
print("nuts samples", x.shape, "mean phi^2", (x**2).mean(), f"{time.time()-tic:.0f}s", flush=True)
# adaptive.run's whitening (within-chain covariance); POOLED=1 whitens by the pooled covariance,
# which adaptive.run used before 2026-11-23
pooled = os.environ.get("POOLED") == "1"
shift, chol = _whitening(x if pooled else chains.swapaxes(0, 1))
w = np.linalg.solve(chol, (x - shift).T).T
for steps in [int(s) for s in sys.argv[1].split(",")]:
    fit = fit_siflow(jax.random.key(2), jnp.asarray(w, jnp.float32), steps=steps, standardize=False,
                     learning_rate=float(sys.argv[2]) if len(sys.argv) > 2 else 2e-3)
    flow = whitened_flow(fit.flow, shift, chol)
    t_fit = fit.wall
    tic = time.time()
    d = importance_diagnostics(jax.random.key(3), flow, M.phi4_logdensity, n=256)
    draws = np.asarray(jax.jit(lambda k, flow=flow: flow.sample(k, (1000,)))(jax.random.key(4)))
    in_mode = np.mean(np.abs(np.abs(draws.mean(axis=1)) - 1.0) < 0.2)  # mean field near +-1
    print(steps, "pooled" if pooled else "within-chain", f"fit {t_fit:.0f}s is {time.time()-tic:.0f}s",
          d, f"draws with mean field within 0.2 of +-1: {in_mode:.3f} (data: 1.000)", flush=True)
