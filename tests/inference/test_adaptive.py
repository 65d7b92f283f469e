"""The adaptive driver (numpyro_si.inference.adaptive): flow learned from the chains in warm-up,
frozen for production.

Target: the shared 2-d mixture (modes at x = -4, weight 0.3, and x = +4, weight 0.7, ~16 nats of
barrier; local MALA/NUTS never cross it, see test_mixed.test_local_kernels_alone_stay_stuck).
The chains start four in each mode, so chains that never jump would give the mode weight 0.5.
"""

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpyro_si as nsi
from numpyro_si.inference import AdaptiveResult, adaptive

from . import assert_unbiased, in_second_mode, mixture_problem, target_moments

N_CHAINS = 8
TINY = dict(
    n_local=2, n_warmup_rounds=1, n_warmup_steps=10, n_production=15, fit_steps=50,
    network=nsi.FieldMLPSpec(width=16, depth=1),
    train_options=dict(batch_size=64, validation=nsi.Validation(fraction=0.0)),
    check_solver_error=False, show_progress=False,
)


def split_start(target):
    """Four chains at each mode."""
    return jnp.concatenate([jnp.tile(target.means[0], (4, 1)), jnp.tile(target.means[1], (4, 1))])


def test_shapes_counts_and_frozen_flow():
    target, _, _ = mixture_problem()
    start = split_start(target).astype(jnp.float32)
    result = adaptive.run(jax.random.key(0), target.log_prob, start, local="mala", **TINY)
    assert isinstance(result, AdaptiveResult)
    assert result.samples.shape == (N_CHAINS, 15, 2)
    for field in ("logdensity", "local_acceptance", "global_acceptance", "global_accepted"):
        assert getattr(result, field).shape == (N_CHAINS, 15), field
    np.testing.assert_allclose(
        result.logdensity, target.log_prob(result.samples.reshape(-1, 2)).reshape(N_CHAINS, 15),
        rtol=1e-5, atol=1e-4,
    )
    assert result.flow.rtol == result.flow.atol == 1e-5  # the float32 default
    assert result.step_size > 0 and np.isnan(result.log_q_solver_error)
    # MALA: one gradient per local step, one per global move, one per chain at the start; the
    # warm-up round has no flow yet, production runs whole rounds of 10 transitions (2 for 15)
    n_local, steps = TINY["n_local"], TINY["n_warmup_steps"]
    assert result.grad_evals_warmup == N_CHAINS * (1 + steps * n_local)
    assert result.grad_evals_production == N_CHAINS * 2 * steps * (n_local + 1)
    (history,) = result.warmup["train_history"]
    assert isinstance(history, nsi.TrainHistory) and history.num_steps == TINY["fit_steps"]
    assert result.warmup["n_training_points"] == [N_CHAINS * steps * n_local]
    assert np.isnan(result.warmup["global_acceptance"][0])
    assert 0.0 <= float(jnp.mean(result.global_acceptance)) <= 1.0
    assert set(result.timing) == {"warmup_sampling", "training", "production", "total"}
    idata = result.to_inference_data()
    assert idata.posterior["x"].shape == (N_CHAINS, 15, 2)
    assert "global_acceptance_rate" in idata.sample_stats


def test_warm_up_rounds_resume_one_optimiser():
    """Every warm-up round trains the same flow further with one optimiser: each round takes its
    own `fit_steps`, and the optimiser state's step counts run on across rounds (a fresh
    optimiser per round would restart them)."""
    target, _, _ = mixture_problem()
    start = split_start(target).astype(jnp.float32)
    result = adaptive.run(jax.random.key(1), target.log_prob, start,
                          **(TINY | dict(n_warmup_rounds=2, fit_steps=[30, 20])))
    histories = result.warmup["train_history"]
    assert [history.num_steps for history in histories] == [30, 20]
    for history, total in zip(histories, (30, 50), strict=True):
        counts = [leaf for leaf in jax.tree.leaves(history.opt_state)
                  if jnp.issubdtype(leaf.dtype, jnp.integer)]
        assert counts and all(int(count) == total for count in counts), counts
    assert result.warmup["n_training_points"] == [N_CHAINS * 10 * 2] * 2
    assert np.isfinite(result.warmup["global_acceptance"][1])


def test_whitened_flow_is_the_linear_image_of_the_whitened_flow(x64):
    """log q(x) = log q_w(L^{-1}(x - m)) - log|det L|, and draws are m + L (whitened draws)."""
    _, _, flow_w = mixture_problem()  # an exact-velocity one-sided flow, tolerances 1e-7
    shift = jnp.array([1.0, -2.0])
    chol = jnp.array([[2.0, 0.0], [0.7, 0.5]])
    flow = adaptive.whitened_flow(flow_w, shift, chol)
    x = jnp.array([[1.0, -2.0], [-6.0, 0.5], [9.0, -3.0]])
    w = jax.scipy.linalg.solve_triangular(chol, (x - shift).T, lower=True).T
    expected = flow_w.log_prob(w) - jnp.log(2.0 * 0.5)
    # two adaptive solves at rtol = atol = 1e-7 of differently scaled ODEs: equal to ~1e-7 relative
    np.testing.assert_allclose(jax.jit(flow.log_prob)(x), expected, rtol=1e-7, atol=1e-6)
    key = jax.random.key(5)
    draws = jax.jit(lambda k: flow.sample(k, (4,)))(key)
    draws_w = jax.jit(lambda k: flow_w.sample(k, (4,)))(key)
    np.testing.assert_allclose(draws, shift + draws_w @ chol.T, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="OneSidedLinearInterpolant"):
        adaptive.whitened_flow(
            nsi.SIFlow(nsi.OneSidedTrigonometricInterpolant(), flow_w.velocity, dim=2), shift, chol
        )


def test_whitening_uses_the_within_chain_covariance():
    """Two chains with different means: the whitening covariance is the within-chain one (each
    chain about its own mean, averaged), not the pooled one that includes the between-chain
    spread; an (n, d) array is one chain (the ordinary sample covariance)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 3)) @ np.diag([1.0, 2.0, 0.5])
    b = rng.normal(size=(200, 3)) + np.array([10.0, 0.0, 0.0])
    shift, chol = adaptive._whitening(np.stack([a, b], axis=1))  # (draws, chains, d)
    within = (np.cov(a, rowvar=False) + np.cov(b, rowvar=False)) / 2
    ridge = 1e-6 * np.trace(within) / 3
    np.testing.assert_allclose(chol @ chol.T, within + ridge * np.eye(3), rtol=1e-10)
    np.testing.assert_allclose(shift, np.concatenate([a, b]).mean(axis=0), rtol=1e-12)
    assert np.allclose(np.tril(chol), chol)
    # the pooled covariance would have variance ~26 along x0; the within one keeps it ~1
    assert (chol @ chol.T)[0, 0] < 1.5
    shift, chol = adaptive._whitening(a)
    pooled = np.cov(a, rowvar=False)
    np.testing.assert_allclose(chol @ chol.T, pooled + 1e-6 * np.trace(pooled) / 3 * np.eye(3),
                               rtol=1e-10)
    # one draw per chain: no within-chain spread, so the chains are pooled
    shift, chol = adaptive._whitening(a[None])
    np.testing.assert_allclose(chol @ chol.T, pooled + 1e-6 * np.trace(pooled) / 3 * np.eye(3),
                               rtol=1e-10)


def test_bad_inputs():
    target, _, _ = mixture_problem()
    good = split_start(target)
    run = adaptive.run
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"\(n_chains, d\)"):
        run(key, target.log_prob, good[0], **TINY)
    with pytest.raises(TypeError, match="floating"):
        run(key, target.log_prob, jnp.zeros((4, 2), dtype=jnp.int32), **TINY)
    with pytest.raises(ValueError, match=r"chain\(s\) \[2\]"):
        run(key, target.log_prob, good.at[2, 1].set(jnp.nan), **TINY)
    with pytest.raises(ValueError, match=r"not finite .* chain\(s\) \[0, 3\]"):
        def log_half_plane(x):  # -inf left of x0 = -4.5
            return jnp.where(x[0] > -4.5, target.log_prob(x), -jnp.inf)

        run(key, log_half_plane, good.at[jnp.array([0, 3]), 0].set(-5.0), **TINY)
    with pytest.raises(ValueError, match="scalar"):
        run(key, lambda x: x, good, **TINY)
    with pytest.raises(ValueError, match="kernel must be one of"):
        run(key, target.log_prob, good, local="slice", **TINY)
    # a kernel factory comes inside a LocalKernel, which needs its target acceptance
    with pytest.raises(TypeError, match="LocalKernel"):
        run(key, target.log_prob, good, local=blackjax.mala, **TINY)
    with pytest.raises(ValueError, match="target_acceptance"):
        adaptive.LocalKernel(blackjax.mala)
    with pytest.raises(ValueError, match="inverse_mass_matrix"):
        run(key, target.log_prob, good,
            local=adaptive.LocalKernel("nuts", inverse_mass_matrix=jnp.ones(3)), **TINY)
    with pytest.raises(ValueError, match="n_warmup_rounds"):
        run(key, target.log_prob, good, **(TINY | dict(n_warmup_rounds=0)))
    with pytest.raises(ValueError, match="fit_steps"):
        run(key, target.log_prob, good, **(TINY | dict(fit_steps=[10, 10])))
    with pytest.raises(ValueError, match="step_size"):
        adaptive.LocalKernel("mala", step_size=-0.1)
    # the options of earlier versions name their new place
    with pytest.raises(TypeError, match=r"'step_size', which is now local=adaptive\.LocalKernel"):
        run(key, target.log_prob, good, step_size=0.1, **TINY)
    with pytest.raises(TypeError, match="'fit_options', which is now network="):
        run(key, target.log_prob, good, fit_options=dict(width=16), **TINY)
    # run sets the training length and the optimiser state itself
    for name, value in (("num_steps", 10), ("opt_state", None), ("show_progress", True)):
        with pytest.raises(ValueError, match=f"must not set '{name}'"):
            run(key, target.log_prob, good,
                **(TINY | dict(train_options=TINY["train_options"] | {name: value})))
    # the build options of the old fit_options (standardize, the networks) are no train options
    for name, value in (("standardize", True), ("velocity_network", None)):
        with pytest.raises(TypeError, match=rf"unexpected option\(s\) \['{name}'\]"):
            run(key, target.log_prob, good, **(TINY | dict(train_options={name: value})))


STATISTICAL = dict(
    n_warmup_rounds=3, n_warmup_steps=100, fit_steps=1000,
    network=nsi.FieldMLPSpec(width=64, depth=2), show_progress=False,
)


@pytest.mark.slow
@pytest.mark.parametrize("local", ["mala", "nuts"])
def test_production_chain_is_unbiased(x64, local):
    """Chains split 4/4 between the modes (weight 0.5 if they never jumped); the production
    chain's mode weight (truth 0.7) and first two moments are within 4 ESS-based standard errors,
    the mode weight within 0.03 (the accuracy the kernel is meant for), and every chain visits
    both modes."""
    target, _, _ = mixture_problem()
    result = adaptive.run(
        jax.random.key(11), target.log_prob, split_start(target), local=local, n_local=5,
        n_production=1000, **STATISTICAL,
    )
    assert result.samples.shape == (N_CHAINS, 1000, 2)
    assert not bool(jnp.any(result.global_failed))
    assert result.log_q_solver_error < 1e-5  # float64, flow_tol 1e-7
    per_chain = in_second_mode(result.samples).mean(axis=1)
    assert np.all((per_chain > 0.2) & (per_chain < 0.95)), per_chain  # no chain stuck
    assert float(jnp.mean(result.global_acceptance)) > 0.3

    weight_se, ess = assert_unbiased(result.samples, target, burn_in=0)
    assert weight_se < 0.01, f"too few effective draws for the mode weight (ESS {ess:.0f})"
    weight = in_second_mode(result.samples).mean()
    assert abs(weight - target_moments(target)[0]) < 0.03


class InterruptingBar:
    """A stand-in for tqdm whose `update` raises KeyboardInterrupt at its n-th call (Ctrl-C at a
    round boundary): warm-up updates it twice per round, production once per chunk."""

    def __init__(self, at):
        self.at, self.calls = at, 0

    def __call__(self, *args, **kwargs):
        return self

    def update(self, *args):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt

    def set_description(self, *args, **kwargs):
        pass

    set_postfix = set_description
    close = set_description


@pytest.mark.parametrize("at, phase, draws", [
    (3, "warm-up", 0),
    # the same mechanism in the production phase: slow suite, to keep `make test` under 15 min
    pytest.param(6, "production", 20, marks=pytest.mark.slow),
])
def test_ctrl_c_keeps_the_latest_flow_and_the_draws_made(monkeypatch, at, phase, draws):
    """Ctrl-C in the second warm-up round keeps the first round's flow; in production it keeps
    the whole production rounds run before it (here 2 of 10 transitions)."""
    target, _, _ = mixture_problem()
    start = split_start(target).astype(jnp.float32)
    monkeypatch.setattr(adaptive, "tqdm", InterruptingBar(at))
    options = TINY | dict(n_warmup_rounds=2, n_production=30)
    with pytest.warns(UserWarning, match=f"interrupted during {phase}"):
        result = adaptive.run(jax.random.key(0), target.log_prob, start, **options)
    assert result.interrupted and isinstance(result.flow, nsi.SIFlow)
    assert len(result.warmup["train_history"]) == (1 if phase == "warm-up" else 2)
    assert result.samples.shape == (N_CHAINS, draws, 2)
    assert result.global_accepted.shape == (N_CHAINS, draws)
    assert np.isfinite(result.flow.log_prob(np.zeros(2)))


def test_a_target_that_is_nan_where_the_flow_proposes_is_reported():
    """log pi NaN for x_0 > 1 (a fifth of N(0, 1)'s mass): MCMC would silently reject there."""

    def log_density(x):
        value = -0.5 * jnp.sum(x**2)
        return jnp.where(x[0] > 1.0, jnp.nan, value)

    start = jnp.zeros((N_CHAINS, 2)) - 0.5
    with pytest.warns(UserWarning, match=r"logdensity_fn is NaN at \d+ of 256 points"):
        adaptive.run(jax.random.key(0), log_density, start, **TINY)
