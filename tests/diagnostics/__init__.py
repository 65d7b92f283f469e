"""Shared problem for the diagnostics tests: a smooth 2-d, 3-component Gaussian-mixture target and
a 2-component base, and flows with the oracle's exact fields to it (`make_flow`)."""

import numpyro_si as nsi
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle

DIM = 2

# Written out (no random construction: every eager JAX op compiles once per process, and these
# tests are dominated by compilation).
TARGET = dict(
    weights=[0.3, 0.45, 0.25],
    means=[[-1.5, 0.5], [1.0, 1.2], [0.3, -1.4]],
    covariances=[[[0.6, 0.2], [0.2, 0.5]], [[0.4, -0.1], [-0.1, 0.7]], [[0.8, 0.0], [0.0, 0.3]]],
)
BASE = dict(
    weights=[0.6, 0.4],
    means=[[0.5, 0.0], [-0.5, 0.3]],
    covariances=[[[1.0, 0.3], [0.3, 1.0]], [[0.8, 0.0], [0.0, 1.2]]],
)


def make_flow(kind="two-sided", standardization=None, **settings):
    """The oracle's exact fields of TARGET: a two-sided linear interpolant (Brownian gamma, the
    Gaussian-mixture BASE, with the score) or a one-sided velocity-only one. `settings`: fields
    of the flow's `SolverSettings`. Returns (flow, target)."""
    target = GaussianMixture(**TARGET)
    settings = nsi.SolverSettings(**settings)
    if kind == "two-sided":
        interpolant = nsi.LinearInterpolant(nsi.BrownianGamma(1.0))
        oracle = GaussianMixtureOracle(interpolant, target, GaussianMixture(**BASE))
        flow = nsi.SIFlow(
            oracle.interpolant, oracle.velocity, oracle.score, base=oracle.base_distribution(),
            dim=DIM, settings=settings, standardization=standardization,
        )
    else:
        oracle = GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), target)
        flow = nsi.SIFlow(oracle.interpolant, oracle.velocity, dim=DIM, settings=settings,
                          standardization=standardization)
    return flow, target
