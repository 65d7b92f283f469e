"""SDE sampling at every noise level, against the exact answer: a 2-d mixture of 8 narrow modes
(sd 0.05 on a circle of radius 4) with the oracle's exact velocity (a one-sided, velocity-only
model: the score follows from the velocity). Near the data end the drift eps * s has a
Lipschitz constant of about eps / sd^2 = 400 eps, far beyond what 256 fixed Euler-Maruyama steps
can integrate at eps of a few; the default (error-controlled) solve must still land every draw
on a mode, for constant eps from 0 to 5 and for the decaying schedules.

Tolerances from the exact distribution: a draw lies farther than 4 sd from its mode with
probability exp(-8) = 3.4e-4 (the radius of a 2-d standard normal), so among 1000 exact draws
the count is Poisson with mean 0.34 and exceeds 4 with probability 4e-5; each mode's share of
exact draws is 1/8 with standard error 0.0105, and we allow 4 of them (0.042).
"""

import warnings

import equinox as eqx
import jax
import numpy as np
import pytest

import numpyro_si as nsi
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle

N_MODES, RADIUS, SD, N = 8, 4.0, 0.05, 1000
MAX_OFF_MODE = 4
WEIGHT_TOLERANCE = 4 * np.sqrt((1 / N_MODES) * (1 - 1 / N_MODES) / N)


def narrow_ring():
    angles = 2 * np.pi * np.arange(N_MODES) / N_MODES
    means = np.stack([RADIUS * np.cos(angles), RADIUS * np.sin(angles)], 1)
    covariances = np.tile(SD**2 * np.eye(2), (N_MODES, 1, 1))
    return GaussianMixture(np.ones(N_MODES) / N_MODES, means, covariances)


@pytest.fixture(scope="module")
def flow():
    target = narrow_ring()
    interpolant = nsi.OneSidedLinearInterpolant()
    oracle = GaussianMixtureOracle(interpolant, target)
    return nsi.SIFlow(interpolant, oracle.velocity, dim=2), target


@eqx.filter_jit
def draw(flow, key, n=N):
    return flow.sample_with_info(key, (n,))


def assert_on_the_modes(draws, target):
    distances = np.linalg.norm(draws[:, None] - np.asarray(target.means)[None], axis=-1)
    off_mode = int(np.sum(distances.min(axis=1) > 4 * SD))
    assert off_mode <= MAX_OFF_MODE, f"{off_mode} of {N} draws off every mode"
    weights = np.bincount(distances.argmin(axis=1), minlength=N_MODES) / N
    np.testing.assert_allclose(weights, 1 / N_MODES, atol=WEIGHT_TOLERANCE)


_SLOW = pytest.mark.slow  # levels between the fast suite's ones run in `make test-all`


@pytest.mark.parametrize("eps", [
    0.0, pytest.param(0.5, marks=_SLOW), 1.0, pytest.param(2.0, marks=_SLOW), 5.0,
    nsi.DecayingEps(1.0), pytest.param(nsi.DecayingEps(5.0), marks=_SLOW), nsi.ZeroEndsEps(5.0),
], ids=str)
def test_default_sde_solve_is_right_at_every_noise_level(flow, eps):
    flow, target = flow
    sde = flow.with_settings(sampler="sde", eps=eps)
    draws, info = draw(sde, jax.random.key(0))
    assert_on_the_modes(np.asarray(draws), target)
    assert bool(info.succeeded.all()) and info.num_steps.shape == (N,)


def test_the_ode_is_right_too(flow):
    """The reference the SDE rows are held to."""
    flow, target = flow
    draws, info = draw(flow, jax.random.key(0))
    assert_on_the_modes(np.asarray(draws), target)


@pytest.mark.slow
def test_more_noise_costs_more_steps_not_accuracy(flow):
    """The controller pays for a stiffer drift with steps (eps = 5 takes more than eps = 0.5)."""
    flow, _ = flow
    steps = [float(np.mean(draw(flow.with_settings(sampler="sde", eps=eps),
                                jax.random.key(1), 100)[1].num_steps)) for eps in (0.5, 5.0)]
    assert steps[1] > 2 * steps[0], steps


def test_a_budget_too_small_for_the_noise_is_refused_by_name(flow):
    flow, _ = flow
    sde = flow.with_settings(sampler=nsi.SDESampler(5.0, max_steps=16))
    with pytest.raises(Exception, match=r"eps = ConstantEps\(eps0=5\.0\).*max_steps = 16"):
        jax.block_until_ready(draw(sde, jax.random.key(2)))


def test_a_noise_level_that_stays_positive_at_the_data_end_warns_for_a_derived_score(flow):
    """The score of a velocity-only model follows from the velocity; an eps that does not vanish
    at t = 1 amplifies the velocity's error there (docs/benchmarks.md, "SDE sampling")."""
    flow, _ = flow
    with pytest.warns(UserWarning, match=r"eps = ConstantEps\(eps0=1\.0\), which does not vanish"):
        flow.with_settings(sampler="sde", eps=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for eps in (None, nsi.DecayingEps(5.0), nsi.ZeroEndsEps(1.0), 0.0):
            flow.with_settings(sampler="sde", eps=eps)
