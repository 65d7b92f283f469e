"""Large batches run in batches of `POINTS_PER_BATCH` points (`jax.lax.map`), so memory stays
bounded; the results agree with one `jax.vmap` over all points to the solver's tolerance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpyro_si as nsi
from numpyro_si import _solvers
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle


@pytest.mark.slow  # compiles the batched solves: `make test-all`
def test_batched_results_match_one_vmap(monkeypatch):
    target = GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-2.0, 0.0], [2.0, 1.0]]),
                             jnp.array([jnp.eye(2) * 0.3, jnp.eye(2) * 0.5]))
    oracle = GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), target)
    flow = nsi.SIFlow(oracle.interpolant, oracle.velocity, dim=2)
    x = target.sample(jax.random.key(0), 10)[0]

    def everything():
        # log_prob and sample; the transports and sample_with_log_prob share `map_points`
        return flow.log_prob(x), flow.sample(jax.random.key(1), (10,))

    whole = everything()
    monkeypatch.setattr(_solvers, "POINTS_PER_BATCH", 3)  # 10 points: batches of 3, 3, 3, 1
    batched = everything()
    for a, b in zip(whole, batched, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(batched[0], target.log_prob(x), atol=1e-3)  # still the density
