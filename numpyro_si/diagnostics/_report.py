"""`diagnostic_report`: the diagnostics of one flow in a tidy table and a set of figures."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from jaxtyping import PRNGKeyArray

from .._distribution import SIFlow
from .._training import TrainHistory
from ._cross_entropy import CrossEntropy, as_sample_array, cross_entropy, unconstrained_flow
from ._importance import ImportanceDiagnostics, importance_diagnostics
from ._loss_profile import LossProfile, loss_profile
from ._plots import plot_loss_curves, plot_loss_profile, plot_marginals, plot_nll_histogram

__all__ = ["DiagnosticReport", "diagnostic_report"]


class DiagnosticReport(NamedTuple):
    """What `diagnostic_report` found.

    - `table`: a pandas DataFrame, one row per quantity, columns `value`, `se`, `note` (tidy:
      `report.table.to_xarray()` gives an xarray Dataset for ArviZ-style workflows).
    - `figures`: name -> matplotlib figure ("loss_curves", "loss_profile", "marginals",
      "nll_histogram").
    - `cross_entropy`, `loss_profile`, `importance`: the underlying results (`importance` is
      `None` without a `log_target`).
    """

    table: pd.DataFrame
    figures: dict[str, Any]
    cross_entropy: CrossEntropy
    loss_profile: LossProfile
    importance: ImportanceDiagnostics | None

    def __str__(self) -> str:
        return self.table.to_string(float_format=lambda v: f"{v:.4g}")

    def save_figures(self, folder: str | Path, *, dpi: int = 110) -> list[Path]:
        """Write every figure as `folder/<name>.png`; returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, fig in self.figures.items():
            path = folder / f"{name}.png"
            fig.savefig(path, dpi=dpi, bbox_inches="tight")
            paths.append(path)
        return paths

    def close(self) -> None:
        """Close the figures (free their memory)."""
        for fig in self.figures.values():
            plt.close(fig)


def diagnostic_report(
    key: PRNGKeyArray,
    flow: SIFlow,
    heldout: Any,
    *,
    history: TrainHistory | None = None,
    var_names: Sequence[str] | None = None,
    log_target: Callable | None = None,
    n_samples: int = 2000,
    n_importance: int = 2000,
    reference_entropy: float | None = None,
    oracle=None,
    names: Sequence[str] | None = None,
    figures: bool = True,
) -> DiagnosticReport:
    """Diagnose a learned density against held-out draws (and optionally an unnormalised target).

    Computes the cross-entropy on `heldout` with its standard error, the per-time velocity loss
    profile L(t), flow samples for a corner-style comparison, and, given `log_target`, the
    importance-sampling diagnostics (log Z, reverse KL, ESS, Pareto k). docs/math.md sections 4-5.

    **Arguments:**

    - `key`: a `jax.random` key.
    - `flow`: the `SIFlow` to diagnose.
    - `heldout`: draws of shape `(N, d)` (or `(chains, draws, d)`) or an ArviZ `InferenceData`
      (its posterior group, `var_names` selecting the variables) that the flow was NOT fitted to.
    - `history`: the `TrainHistory` of `nsi.fit` / `nsi.train`, for the loss-curve figure.
    - `log_target`: an unnormalised log density of one point (see `importance_diagnostics`).
    - `n_samples`: flow draws for the marginal plots; `n_importance`: draws for the weights.
    - `reference_entropy`: a known entropy of the held-out distribution, to report the KL gap.
    - `oracle`: a `GaussianMixtureOracle` of the held-out distribution, if known: adds the excess
      loss 1/2 E|b^ - b|^2 (L(t) itself contains the t-dependent minimum -1/2 E|b|^2, so only
      the excess measures the fit error at each time).
    - `names`: coordinate names for the figures (default: x0, x1, ...).
    - `figures`: make the figures (set False for the table only).

    **Returns:** a `DiagnosticReport`; `print(report)` shows the table.
    """
    unconstrained_flow(flow)  # refuses a ConditionalSIFlow (condition it first) and non-flows
    if len(flow.event_shape) != 1:
        raise TypeError(
            f"diagnostic_report needs a flow with vector draws, got event shape {flow.event_shape}."
        )
    points = as_sample_array(heldout, tuple(flow.event_shape), var_names=var_names,
                             name="heldout")
    key_profile, key_samples, key_importance = jax.random.split(key, 3)

    ce = cross_entropy(flow, points)
    profile = loss_profile(key_profile, flow, points, oracle=oracle)
    rows = [
        ("cross-entropy (nats)", ce.mean, ce.se, f"mean NLL on {ce.n} held-out draws"),
        ("failed likelihood solves", float(ce.n_failed), np.nan, "non-finite log_prob"),
        ("velocity loss, time-integrated", profile.integrated, profile.integrated_se,
         "quadratic L_b on held-out data (lower is better; not a distance)"),
    ]
    if profile.excess is not None:
        excess = np.asarray(profile.excess)
        worst = int(np.argmax(excess))
        rows += [
            ("velocity excess loss, integrated", profile.excess_integrated,
             profile.excess_integrated_se, "1/2 E|b^ - b|^2 against the oracle's exact field"),
            ("time of the largest excess loss", float(profile.times[worst]), np.nan,
             "where the velocity fit is worst"),
        ]
    if reference_entropy is not None:
        rows.append(("KL(data || flow) (nats)", ce.mean - reference_entropy, ce.se,
                     "cross-entropy minus the given reference entropy"))
    importance = None
    if log_target is not None:
        importance = importance_diagnostics(key_importance, flow, log_target, n_importance)
        rows += [
            ("log Z", importance.log_z, importance.log_z_se, "importance-sampling estimate"),
            ("reverse KL(q || pi) (nats)", importance.reverse_kl, importance.reverse_kl_se,
             "unreliable when Pareto k > 0.7"),
            ("importance ESS fraction", importance.ess_fraction, np.nan,
             f"ESS {importance.ess:.1f} of {importance.n}"),
            ("Pareto k", importance.pareto_k, np.nan, "< 0.5 good, 0.5-0.7 ok, > 0.7 bad"),
        ]
    table = pd.DataFrame(rows, columns=["quantity", "value", "se", "note"]).set_index("quantity")

    figs: dict[str, Any] = {}
    if figures:
        if history is not None:
            figs["loss_curves"] = plot_loss_curves(history)
        figs["loss_profile"] = plot_loss_profile(
            profile.times, profile.loss, profile.loss_se, excess=profile.excess,
            excess_se=profile.excess_se, label="L_b(t)",
        )
        samples = flow.sample(key_samples, (n_samples,))
        figs["marginals"] = plot_marginals(samples, points[:n_samples], names=names)
        figs["nll_histogram"] = plot_nll_histogram(ce.values, reference=reference_entropy)
    return DiagnosticReport(table, figs, ce, profile, importance)
