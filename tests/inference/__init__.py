"""Shared problem for the MCMC tests: a 2-d Gaussian mixture target with two well-separated modes
of unequal weights, and an oracle flow (closed-form velocity, docs/math.md section 6) to a slightly
different mixture as the proposal, so q is known exactly and differs from pi.

Statistical assertions compare a chain estimate with its Monte Carlo standard error,
se = sd / sqrt(ESS) with NumPyro's ESS over all chains (fixed keys, |error| < 4 se), and require
that se to be small enough for the check to mean something.
"""

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.diagnostics import effective_sample_size

import numpyro_si as nsi
from numpyro_si.inference import run_chain
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle

MEANS = [[-4.0, 1.0], [4.0, -1.0]]  # ~16 nats of barrier between the modes: local MCMC is stuck
COVARIANCES = [[[0.5, 0.2], [0.2, 0.5]], [[0.6, -0.2], [-0.2, 0.4]]]
TARGET_WEIGHTS = [0.3, 0.7]
N_SE = 4.0


def mixture_problem(**settings):
    """(target, proposal mixture, flow); call under float64 (`x64` fixture). `settings`: fields
    of the flow's `SolverSettings`, changing the defaults below.

    The proposal has the target's means, covariances scaled by 1.3 and weights 0.5/0.5; the flow
    is the exact-velocity ODE flow to it, adaptive Tsit5 at rtol = atol = 1e-7 (its log q is then
    within ~1e-7 nats of the closed form). The same adaptive solver class draws and evaluates q:
    a fixed-step likelihood solve would disagree with the adaptive draws by its uncontrolled
    discretisation error.
    """
    target = GaussianMixture(jnp.array(TARGET_WEIGHTS), jnp.array(MEANS), jnp.array(COVARIANCES))
    proposal = GaussianMixture(jnp.array([0.5, 0.5]), target.means, 1.3 * target.covariances)
    oracle = GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), proposal)
    settings = nsi.SolverSettings(**(dict(rtol=1e-7, atol=1e-7) | settings))
    flow = nsi.SIFlow(oracle.interpolant, oracle.velocity, dim=2, settings=settings)
    return target, proposal, flow


def run_parallel(algorithm, key, positions, n_steps):
    """`n_steps` of `algorithm` on len(positions) chains in parallel (vmap of a jitted scan)."""
    states = jax.jit(jax.vmap(algorithm.init))(positions)  # eager diffrax solves are slow
    keys = jax.random.split(key, positions.shape[0])
    run = jax.jit(jax.vmap(lambda k, s: run_chain(k, algorithm.step, s, n_steps)))
    return run(keys, states)


def target_moments(target):
    """Exact mode weight of the x > 0 mode, mean (2,) and second moments E[x x^T] (2, 2)."""
    w, mu, cov = target.weights, target.means, target.covariances
    mean = jnp.sum(w[:, None] * mu, axis=0)
    second = jnp.sum(w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :]), axis=0)
    return float(w[1]), np.asarray(mean), np.asarray(second)


def in_second_mode(positions):
    """Indicator of the x > 0 mode (the modes sit at x = -4 and x = +4)."""
    return (np.asarray(positions)[..., 0] > 0).astype(float)


def mc_estimate(draws):
    """Mean over all chains and draws of `draws` (chains, n) and its ESS-based standard error."""
    draws = np.asarray(draws, dtype=float)
    ess = float(effective_sample_size(draws[:, :, None])[0])
    return draws.mean(), draws.std() / np.sqrt(ess), ess


def assert_within_mc_error(draws, truth, name):
    estimate, se, ess = mc_estimate(draws)
    assert abs(estimate - truth) < N_SE * se, (
        f"{name}: estimate {estimate:.4f} vs truth {truth:.4f}, se {se:.4f} (ESS {ess:.0f})"
    )
    return estimate, se, ess


def assert_unbiased(positions, target, burn_in):
    """Mode weight, mean and second moments of `positions` (chains, n, 2) within N_SE se."""
    positions = np.asarray(positions)[:, burn_in:]
    weight, mean, second = target_moments(target)
    _, weight_se, ess = assert_within_mc_error(in_second_mode(positions), weight, "mode weight")
    for i in range(2):
        assert_within_mc_error(positions[..., i], mean[i], f"E x{i}")
        for j in range(i, 2):
            products = positions[..., i] * positions[..., j]
            assert_within_mc_error(products, second[i, j], f"E x{i} x{j}")
    return weight_se, ess


def expected_imh_acceptance(key, target, proposal, n=200_000):
    """E[min(1, w(y) / w(x))] for x ~ pi, y ~ q independent (the stationary IMH acceptance rate)
    from the closed-form densities, and its standard error."""
    key_x, key_y = jax.random.split(key)
    x, _ = target.sample(key_x, n)
    y, _ = proposal.sample(key_y, n)

    def log_weight(z):
        return target.log_prob(z) - proposal.log_prob(z)

    accept = np.asarray(jnp.minimum(1.0, jnp.exp(log_weight(y) - log_weight(x))))
    return accept.mean(), accept.std() / np.sqrt(n)
