"""Data sets for `benchmarks/density.py`: all offline, all returned as float32 (train, test) splits.

- 2-d generators of `numpyro_si.datasets` (fresh draws for train and test);
- reference posterior samples shipped in the sbibm wheel (CSV files; sbibm itself is never
  imported, it pulls in torch);
- scikit-learn's bundled digits (dequantised) and breast-cancer table (standardised).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

import numpyro_si as nsi


@dataclass
class Dataset:
    """A train/test split and what is known about the density it came from."""

    name: str
    train: np.ndarray
    test: np.ndarray
    group: str  # "2d", "posterior", "real": sets the default training budget
    description: str
    entropy: float | None = None  # exact differential entropy (nats) where known
    notes: list[str] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return self.train.shape[1]


def _synthetic(name: str, n_train: int, n_test: int, seed: int) -> Dataset:
    key_train, key_test = jax.random.split(jax.random.key(seed))
    train = np.asarray(nsi.datasets.load(name, key_train, n_train), dtype=np.float32)
    test = np.asarray(nsi.datasets.load(name, key_test, n_test), dtype=np.float32)
    entropy, description = None, f"`nsi.datasets.{name}`"
    if name == "checkerboard":
        entropy = nsi.datasets.CHECKERBOARD_ENTROPY
        description += " (FFJORD's generator; optimal NLL ln 32)"
    elif name == "gaussian_mixture_2d":
        # The oracle's exact log density on the test points is an unbiased entropy estimate;
        # 10^6 draws make its Monte Carlo error negligible next to the held-out NLL's.
        oracle = nsi.datasets.gaussian_mixture_2d_oracle()
        big = nsi.datasets.gaussian_mixture_2d(jax.random.key(seed + 1), 1_000_000)
        entropy = float(-np.mean(np.asarray(oracle.log_prob(big))))
        description += " (4 anisotropic Gaussians; entropy from the oracle, 10^6 draws)"
    return Dataset(name, train, test, "2d", description, entropy)


SBIBM_TASKS = {
    "sbibm_two_moons": "two_moons",
    "sbibm_gaussian_mixture": "gaussian_mixture",
    "sbibm_gaussian_linear": "gaussian_linear",
    "sbibm_bernoulli_glm": "bernoulli_glm",
}


def sbibm_reference_posterior(task: str) -> np.ndarray:
    """The 10 000 reference posterior draws of sbibm task `task`, observation 1 (shipped CSV)."""
    import pandas as pd

    spec = importlib.util.find_spec("sbibm")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "sbibm is not installed; `make install-bench` installs it (--no-deps) for its"
            " reference posterior files."
        )
    root = Path(spec.submodule_search_locations[0])
    path = root / "tasks" / task / "files" / "num_observation_1" / "reference_posterior_samples.csv.bz2"
    return pd.read_csv(path).to_numpy(dtype=np.float32)


def _sbibm(name: str, seed: int, n_test: int = 2000) -> Dataset:
    task = SBIBM_TASKS[name]
    draws = sbibm_reference_posterior(task)
    order = np.random.default_rng(seed).permutation(draws.shape[0])
    test, train = draws[order[:n_test]], draws[order[n_test:]]
    description = f"sbibm `{task}` reference posterior, observation 1 ({draws.shape[0]} draws)"
    return Dataset(name, train, test, "2d" if draws.shape[1] == 2 else "posterior", description)


def _digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    pixels = load_digits().data.astype(np.float64)  # (1797, 64), integers 0..16
    rng = np.random.default_rng(seed)
    order = rng.permutation(pixels.shape[0])
    n_test = pixels.shape[0] // 5
    # Uniform dequantisation onto [0, 1): y = (pixel + u) / 17, u ~ U[0, 1). A density on y
    # converts to a discrete log-likelihood of the raw pixels by adding 64 log 17 = 181.3 nats.
    dequantised = (pixels + rng.uniform(size=pixels.shape)) / 17.0
    test, train = dequantised[order[:n_test]], dequantised[order[n_test:]]
    return Dataset(
        "digits", train.astype(np.float32), test.astype(np.float32), "real",
        "scikit-learn digits, 8x8 images dequantised: y = (pixel + U[0,1)) / 17",
        notes=["NLL in nats per image of y; add 64 ln 17 = 181.33 nats for the pixels' discrete"
               " NLL under uniform dequantisation"],
    )


def _breast_cancer(seed: int) -> Dataset:
    from sklearn.datasets import load_breast_cancer

    table = load_breast_cancer().data.astype(np.float64)  # (569, 30)
    order = np.random.default_rng(seed).permutation(table.shape[0])
    n_test = table.shape[0] // 5
    test, train = table[order[:n_test]], table[order[n_test:]]
    mean, std = train.mean(0), train.std(0)
    # Standardised with the training split's mean and scale; NLL is reported in that space.
    train, test = (train - mean) / std, (test - mean) / std
    return Dataset(
        "breast_cancer", train.astype(np.float32), test.astype(np.float32), "real",
        "scikit-learn breast cancer features (30 continuous columns), standardised by the"
        " training split",
        notes=["NLL in nats of the standardised features"],
    )


SYNTHETIC = ("checkerboard", "eight_gaussians", "two_moons", "pinwheel", "gaussian_mixture_2d")
ALL_DATASETS = (*SYNTHETIC, *SBIBM_TASKS, "digits", "breast_cancer")


def load_dataset(name: str, *, quick: bool = False, seed: int = 0,
                 n_train: int | None = None) -> Dataset:
    """Load one benchmark data set by name (see `ALL_DATASETS`); `n_train` sets the training-set
    size of a synthetic set (the test points do not change)."""
    if name in SYNTHETIC:
        default = 5000 if quick else 20_000
        return _synthetic(name, n_train or default, 2000 if quick else 5000, seed)
    if n_train is not None:
        raise ValueError(f"n_train applies to the synthetic sets only, not {name!r}.")
    if name in SBIBM_TASKS:
        return _sbibm(name, seed)
    if name == "digits":
        return _digits(seed)
    if name == "breast_cancer":
        return _breast_cancer(seed)
    raise ValueError(f"Unknown data set {name!r}; choose from {', '.join(ALL_DATASETS)}.")


def standard_error(values: np.ndarray) -> float:
    """Monte Carlo standard error of a mean: std / sqrt(n)."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.std(values) / math.sqrt(values.size))
