"""Smoke check of numpyro_si against whatever dependency versions are installed.

Run by `.ci/test-min` on the dependency floors (`.ci/min-constraints.txt`): training (optax,
equinox), ODE/SDE solves (diffrax, lineax), save/load, diagnostics (arviz, matplotlib), the
BlackJAX kernels and `SIFlowBoost` inside `numpyro.infer.MCMC`; under a minute on one core.
"""

import os

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
os.environ.setdefault("MPLBACKEND", "Agg")

import importlib.metadata  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import arviz  # noqa: E402
import blackjax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

import numpyro_si as nsi  # noqa: E402
import numpyro_si.datasets  # noqa: E402,F401
import numpyro_si.diagnostics  # noqa: E402,F401
import numpyro_si.inference  # noqa: E402
import numpyro_si.oracle  # noqa: E402
from numpyro_si.inference import SIFlowBoost, independence, mixed  # noqa: E402


def fit_small(key, data):
    """Train a small flow: the one call of the training API."""
    flow, _history = nsi.fit(
        key, data, num_steps=200, network=nsi.FieldMLPSpec(width=16, depth=2),
        show_progress=False,
    )
    return flow



DEPENDENCIES = (
    "jax", "jaxlib", "numpyro", "equinox", "diffrax", "optax", "blackjax", "arviz", "jaxtyping",
    "tqdm", "matplotlib",
    # transitive, but pinned by .ci/min-constraints.txt or imported by numpyro_si directly
    "numpy", "scipy", "lineax", "optimistix", "pandas", "ml_dtypes", "chex", "typeguard",
)


def print_versions():
    print(f"python {sys.version.split()[0]}")
    for name in DEPENDENCIES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "(not installed)"
        print(f"  {name:<12} {version}")


def check_finite(name, value):
    value = np.asarray(value)
    assert np.all(np.isfinite(value)), f"{name} not finite: {value}"


def log_target(x):
    """A broad 2-d Gaussian target for the MCMC steps (unnormalised)."""
    return -0.5 * jnp.sum((x / 2.0) ** 2)


def main():
    print_versions()
    data = nsi.datasets.two_moons(jax.random.key(0), 500)
    assert data.shape == (500, 2)

    flow = fit_small(jax.random.key(1), data)
    assert isinstance(flow, nsi.SIFlow), type(flow)
    points = data[:5]
    log_p = flow.log_prob(points)
    assert log_p.shape == (5,)
    check_finite("log_prob", log_p)
    print(f"fit: log_prob of 5 data points {np.round(np.asarray(log_p), 3)}")

    ode_draws = flow.sample(jax.random.key(2), (64,))
    assert ode_draws.shape == (64, 2)
    check_finite("ODE sample", ode_draws)
    sde_draws = flow.with_settings(sampler="sde", eps=0.5).sample(jax.random.key(3), (64,))
    assert sde_draws.shape == (64, 2)
    check_finite("SDE sample", sde_draws)
    print("sample: ODE and SDE draws finite")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flow.nsi"
        nsi.save(path, flow)
        loaded = nsi.load(path)
    np.testing.assert_array_equal(np.asarray(loaded.log_prob(points)), np.asarray(log_p))
    print("save/load: identical log_prob")

    # diagnostics: importance weights (arviz.psislw) and a marginal plot (matplotlib)
    report = nsi.diagnostics.importance_diagnostics(jax.random.key(7), flow, log_target, n=64)
    print(f"diagnostics: importance ESS {float(report.ess):.1f} of 64")
    figure = nsi.diagnostics.plot_marginals(ode_draws, data)
    figure.savefig(os.devnull, format="png")

    # one independence-MH step with the fitted flow as the proposal
    imh = independence.as_top_level_api(log_target, flow)
    state = imh.init(jnp.zeros(2))
    state, info = jax.jit(imh.step)(jax.random.key(4), state)
    check_finite("IMH position", state.position)
    assert 0.0 <= float(info.acceptance_rate) <= 1.0
    print(f"independence: one step, acceptance rate {float(info.acceptance_rate):.3f}")

    # one mixed step: a BlackJAX MALA local move, then a global flow move
    mala = blackjax.mala(log_target, 0.1)
    algorithm = mixed.as_top_level_api(log_target, flow, mala, n_local=1)
    state = algorithm.init(jnp.zeros(2))
    state, info = jax.jit(algorithm.step)(jax.random.key(5), state)
    check_finite("mixed position", state.local_state.position)
    assert 0.0 <= float(info.global_acceptance_rate) <= 1.0
    print(f"mixed: one MALA + flow step, global acceptance {float(info.global_acceptance_rate):.3f}")

    # NumPyro: NUTS on a 2-d toy model boosted by an exact oracle flow (numpyro_si.oracle)
    mixture = nsi.oracle.GaussianMixture(
        jnp.ones(1), jnp.zeros((1, 2)), 1.3 * jnp.eye(2)[None]
    )
    oracle = nsi.oracle.GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), mixture)
    oracle_flow = nsi.SIFlow(oracle.interpolant, oracle.velocity, dim=2)

    def model():
        numpyro.sample("x", dist.Normal(jnp.zeros(2), 1.0).to_event(1))

    mcmc = MCMC(SIFlowBoost(NUTS(model), oracle_flow), num_warmup=5, num_samples=5,
                progress_bar=False)
    mcmc.run(jax.random.key(6))
    x = mcmc.get_samples()["x"]
    assert x.shape == (5, 2)
    check_finite("SIFlowBoost draws", x)
    stats = arviz.from_numpyro(mcmc).sample_stats
    assert stats["global_accept_prob"].shape == (1, 5)
    print("SIFlowBoost(NUTS): 5 warm-up + 5 draws")

    print("smoke OK")


if __name__ == "__main__":
    main()
