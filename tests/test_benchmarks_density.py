"""Smoke tests of the density benchmark's data loaders (benchmarks/_density_data.py).

They need the `bench` extra (scikit-learn, pandas, sbibm's files); each skips without it.
"""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _density_data import SBIBM_TASKS, SYNTHETIC, load_dataset, standard_error  # noqa: E402


def _check(data, dim):
    assert data.train.ndim == data.test.ndim == 2
    assert data.train.shape[1] == data.test.shape[1] == dim
    assert data.train.dtype == data.test.dtype == np.float32
    assert np.all(np.isfinite(data.train)) and np.all(np.isfinite(data.test))


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_sets_are_2d_and_reproducible(name):
    data = load_dataset(name, quick=True)
    _check(data, 2)
    assert np.array_equal(data.train, load_dataset(name, quick=True).train)
    assert not np.array_equal(data.train[:100], data.test[:100])


def test_known_entropies():
    assert load_dataset("checkerboard", quick=True).entropy == pytest.approx(math.log(32))
    # Four well-separated 2-d Gaussians: the entropy is near the mixture-of-entropies value.
    entropy = load_dataset("gaussian_mixture_2d", quick=True).entropy
    assert 2.0 < entropy < 4.0


@pytest.mark.parametrize("name", list(SBIBM_TASKS))
def test_sbibm_reference_posteriors(name):
    if importlib.util.find_spec("sbibm") is None or importlib.util.find_spec("pandas") is None:
        pytest.skip("needs the bench extra (sbibm files, pandas)")
    data = load_dataset(name)
    assert data.train.shape[0] + data.test.shape[0] == 10_000
    _check(data, 2 if name in ("sbibm_two_moons", "sbibm_gaussian_mixture") else 10)


def test_sklearn_sets():
    pytest.importorskip("sklearn")
    digits = load_dataset("digits")
    _check(digits, 64)
    assert digits.train.min() >= 0.0 and digits.train.max() < 1.0  # (pixel + u) / 17
    cancer = load_dataset("breast_cancer")
    _check(cancer, 30)
    np.testing.assert_allclose(cancer.train.mean(0), 0.0, atol=1e-5)


def test_standard_error():
    assert standard_error(np.array([1.0, -1.0, 1.0, -1.0])) == pytest.approx(0.5)
