"""Figures for diagnosing a learned density: loss curves, L(t) profiles, corner-style marginals of
samples against data, and the per-sample NLL histogram. Each function draws on given matplotlib
axes (or makes a figure) and returns the figure."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from .._training import TrainHistory


def _figure_and_axes(ax, figsize=(5, 3.5)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def plot_loss_curves(history: TrainHistory, ax=None):
    """Training and validation loss against epochs, from the `TrainHistory` of `nsi.fit` or
    `nsi.train`, with the kept (best) epoch marked.

    **Returns:** the matplotlib figure.
    """
    if not isinstance(history, TrainHistory):
        raise TypeError(
            f"history must be the TrainHistory of nsi.fit or nsi.train, got {type(history).__name__}."
        )
    fig, ax = _figure_and_axes(ax)
    ax.plot(history.epoch, history.train_loss, label="training")
    if len(history.val_loss):
        ax.plot(history.epoch, history.val_loss, label="validation")
        ax.axvline(history.best_epoch, color="k", ls=":", lw=1, label="kept")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (quadratic form)")
    ax.set_title("training curves")
    ax.legend()
    return fig


def plot_loss_profile(times, loss, se=None, *, excess=None, excess_se=None, ax=None,
                      label="L(t)"):
    """The per-time loss L(t) with a ±2 s.e. band, and the excess loss DeltaL(t) against the exact
    field when it is known (a second axis).

    **Returns:** the matplotlib figure.
    """
    fig, ax = _figure_and_axes(ax)
    times, loss = np.asarray(times), np.asarray(loss)
    ax.plot(times, loss, label=label)
    if se is not None:
        se = np.asarray(se)
        ax.fill_between(times, loss - 2 * se, loss + 2 * se, alpha=0.3)
    ax.set_xlabel("t (0 = base, 1 = data)")
    ax.set_ylabel(label)
    if excess is not None:
        twin = ax.twinx()
        excess = np.asarray(excess)
        twin.plot(times, excess, color="C3", label="excess loss")
        if excess_se is not None:
            excess_se = np.asarray(excess_se)
            twin.fill_between(times, excess - 2 * excess_se, excess + 2 * excess_se, color="C3",
                              alpha=0.2)
        twin.set_ylabel("excess loss 1/2 E|f^ - f|^2", color="C3")
    ax.set_title("loss profile over time")
    return fig


def plot_marginals(samples, data, *, names: Sequence[str] | None = None, max_dims: int = 6,
                   bins: int = 40):
    """Corner-style plot: 1-d histograms on the diagonal, 2-d scatter below it, flow samples
    against data (first `max_dims` coordinates).

    **Arguments:**

    - `samples`: flow draws, shape `(n, d)`. `data`: reference draws, shape `(m, d)`.
    - `names`: coordinate names (default x0, x1, ...).

    **Returns:** the matplotlib figure.
    """
    samples, data = np.asarray(samples), np.asarray(data)
    if samples.ndim != 2 or data.ndim != 2 or samples.shape[1] != data.shape[1]:
        raise ValueError(
            f"samples and data must have shapes (n, d) and (m, d) with the same d, got"
            f" {samples.shape} and {data.shape}."
        )
    d = min(samples.shape[1], max_dims)
    names = list(names) if names is not None else [f"x{i}" for i in range(samples.shape[1])]
    fig, axes = plt.subplots(d, d, figsize=(2.2 * d + 1, 2.2 * d + 1), squeeze=False)
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            if i == j:
                lo = min(samples[:, i].min(), data[:, i].min())
                hi = max(samples[:, i].max(), data[:, i].max())
                edges = np.linspace(lo, hi, bins + 1)
                ax.hist(data[:, i], edges, density=True, alpha=0.5, label="data")
                ax.hist(samples[:, i], edges, density=True, histtype="step", lw=1.5,
                        label="flow")
            else:
                ax.scatter(data[:, j], data[:, i], s=1, alpha=0.3, label="data")
                ax.scatter(samples[:, j], samples[:, i], s=1, alpha=0.3, label="flow")
            if i == d - 1:
                ax.set_xlabel(names[j])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
    axes[0, 0].legend(fontsize="small")
    fig.suptitle("flow samples against data")
    fig.tight_layout()
    return fig


def plot_nll_histogram(nll, *, reference=None, ax=None, bins: int = 50):
    """Histogram of per-sample negative log-likelihoods, with their mean (and an optional
    reference value such as a known entropy) marked.

    **Returns:** the matplotlib figure.
    """
    fig, ax = _figure_and_axes(ax)
    nll = np.asarray(nll)
    finite = nll[np.isfinite(nll)]
    ax.hist(finite, bins=bins, alpha=0.7)
    ax.axvline(finite.mean(), color="k", ls="--", label=f"mean {finite.mean():.3f}")
    if reference is not None:
        ax.axvline(reference, color="C3", ls=":", label=f"reference {reference:.3f}")
    if finite.size < nll.size:
        ax.set_title(f"NLL per sample ({nll.size - finite.size} non-finite not shown)")
    else:
        ax.set_title("NLL per sample")
    ax.set_xlabel("-log q(x) (nats)")
    ax.legend()
    return fig
