"""The diagnostic report and its figures, on an exact oracle flow (cheap fields)."""

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from helpers import toy_conditional_flow  # noqa: E402

import numpyro_si as nsi  # noqa: E402
from numpyro_si import diagnostics  # noqa: E402
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle  # noqa: E402


@pytest.fixture(scope="module")
def oracle_flow():
    target = GaussianMixture(
        jnp.array([0.4, 0.6]), jnp.array([[-2.0, 0.0], [2.0, 1.0]]),
        jnp.stack([0.5 * jnp.eye(2), 0.3 * jnp.eye(2)]),
    )
    oracle = GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), target)
    flow = nsi.SIFlow(oracle.interpolant, oracle.velocity, dim=2)
    heldout, _ = target.sample(jax.random.key(0), 300)
    return flow, oracle, target, heldout


def test_report_table_and_figures(oracle_flow, tmp_path):
    flow, oracle, target, heldout = oracle_flow
    history = nsi.TrainHistory(
        train_loss=np.array([0.0, -0.5, -0.6]), val_loss=np.array([0.0, -0.4, -0.5]),
        val_loss_smoothed=np.array([0.0, -0.2, -0.3]), epoch=np.array([1, 2, 3]), best_epoch=3,
        stopped_early=False, num_steps=30, steps_per_epoch=10,
    )
    report = diagnostics.diagnostic_report(
        jax.random.key(1), flow, heldout, history=history, oracle=oracle,
        log_target=lambda x: target.log_prob(x) + jnp.log(3.0), n_samples=300, n_importance=300,
        reference_entropy=float(-jnp.mean(target.log_prob(heldout))),
    )
    table = report.table
    for row in ("cross-entropy (nats)", "velocity excess loss, integrated", "log Z", "Pareto k",
                "KL(data || flow) (nats)"):
        assert row in table.index
    # Exact fields: the flow density is the target's, so the KL row is ~0 (float32 ODE error
    # only) and the excess loss vanishes up to rounding of the two field evaluations.
    assert abs(table.loc["KL(data || flow) (nats)", "value"]) < 1e-3
    assert abs(table.loc["velocity excess loss, integrated", "value"]) < 1e-4
    assert abs(table.loc["log Z", "value"] - np.log(3.0)) < 1e-3
    assert set(report.figures) == {"loss_curves", "loss_profile", "marginals", "nll_histogram"}
    paths = report.save_figures(tmp_path)
    assert all(p.exists() and p.stat().st_size > 1000 for p in paths)
    assert "cross-entropy" in str(report)
    report.close()


def test_report_without_figures_or_target(oracle_flow):
    flow, _, _, heldout = oracle_flow
    report = diagnostics.diagnostic_report(jax.random.key(2), flow, heldout, figures=False)
    assert report.figures == {}
    assert report.importance is None
    assert "log Z" not in report.table.index


def test_report_bad_input(oracle_flow):
    flow, _, _, heldout = oracle_flow
    with pytest.raises(TypeError, match="SIFlow"):
        diagnostics.diagnostic_report(jax.random.key(0), object(), heldout)
    with pytest.raises(TypeError, match="condition"):
        diagnostics.diagnostic_report(jax.random.key(0), toy_conditional_flow(), heldout)
    with pytest.raises(ValueError, match="dimension|shape"):
        diagnostics.diagnostic_report(jax.random.key(0), flow, jnp.zeros((10, 3)))


def test_plot_functions_validate_input():
    with pytest.raises(ValueError, match="same d"):
        diagnostics.plot_marginals(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(TypeError, match="history must be the TrainHistory"):
        diagnostics.plot_loss_curves({"train_loss": [1.0], "val_loss": [1.0]})
    fig = diagnostics.plot_nll_histogram(np.array([1.0, 2.0, np.inf]))
    assert "non-finite" in fig.axes[0].get_title()
    plt.close("all")
