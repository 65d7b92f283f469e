"""Smoke test of examples/posterior_as_prior.py with tiny settings (about 90 s of CPU: slow)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "posterior_as_prior.py"


@pytest.mark.slow
def test_posterior_as_prior_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("posterior_as_prior", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    summaries = example.main(tmp_path, quick=True)
    assert {"study 1 alone", "study 2, SIFlow prior (latent)", "joint (both studies)"} <= set(
        summaries
    )
    for mean, sd, se, _ in summaries.values():
        assert np.all(np.isfinite(mean)) and np.all(sd > 0) and np.all(se > 0)
    for name in ("summary.md", "summary.csv", "marginals.png", "study1_posterior.nsi"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| joint (both studies) | beta_1 |" in (tmp_path / "summary.md").read_text()
