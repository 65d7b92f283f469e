"""Diagnostics for stochastic-interpolant flows: how good a learned density is, with numbers that
carry their uncertainty (docs/math.md sections 4 and 5)."""

from .._model_space import ModelLogDensity, log_target_from_model, unconstrained_draws
from ._cross_entropy import CrossEntropy, cross_entropy
from ._importance import ImportanceDiagnostics, forward_cross_entropy, importance_diagnostics
from ._loss_profile import KLBound, LossProfile, kl_bound, kl_bound_from_oracle, loss_profile
from ._plots import plot_loss_curves, plot_loss_profile, plot_marginals, plot_nll_histogram
from ._report import DiagnosticReport, diagnostic_report
from ._sde_likelihood import SDELikelihood, sde_log_likelihood
