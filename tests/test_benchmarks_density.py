"""Smoke tests of the density benchmark's data loaders (benchmarks/_density_data.py).

They need the `bench` extra (scikit-learn, pandas, sbibm's files); each skips without it.
"""

import importlib.util
import json
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


def test_recalibrate_replaces_the_rate_only_when_a_run_misses_its_budget():
    import _density_methods as methods

    key = ("test method", 3)
    methods._CALIBRATION[key] = (100.0, 5.0)  # 100 steps/s after 5 s of overhead
    try:
        # 5500 steps in 60 s of a 60 s budget: on budget, the rate stays
        methods.recalibrate(key, 5500, 60.0, 60.0, stopped_early=False)
        assert methods._CALIBRATION[key] == (100.0, 5.0)
        # an early stop says nothing about the rate
        methods.recalibrate(key, 1000, 20.0, 60.0, stopped_early=True)
        assert methods._CALIBRATION[key] == (100.0, 5.0)
        # 5500 steps took 85 s: the next run gets 5500 / (85 - 5) steps/s
        methods.recalibrate(key, 5500, 85.0, 60.0, stopped_early=False)
        assert methods._CALIBRATION[key] == (pytest.approx(5500 / 80), 5.0)
        assert methods.steps_for_budget(*methods._CALIBRATION[key], 60.0) == int(5500 / 80 * 55)
    finally:
        del methods._CALIBRATION[key]


def test_flowjax_patience_follows_fits_rule():
    from _density_methods import flowjax_patience

    # 20 000 points, 10% validation, batch 512: 35 steps per epoch
    assert flowjax_patience(20_000, 80) == math.ceil(2000 / 35)  # at least 2000 steps
    assert flowjax_patience(20_000, 1000) == 200  # a fifth of a long run
    assert flowjax_patience(300, 10) == 2000  # one step per epoch on tiny data


def test_nll_verdict_is_paired_only_on_the_rows_stored_values(tmp_path, monkeypatch):
    density = pytest.importorskip("density")
    monkeypatch.setattr(density, "FIGURES", tmp_path)
    rng = np.random.default_rng(0)
    # two methods whose log densities share a large per-point component: the paired s.e. of
    # the difference is far below the unpaired one
    shared = rng.normal(size=4000) * 2.0
    a, b = shared + 0.01 * rng.normal(size=4000), shared + 0.02 + 0.01 * rng.normal(size=4000)
    row = {"method": "numpyro_si", "nll": float(-a.mean()), "nll_se": standard_error(a)}
    best = {"method": "flowjax MAF", "nll": float(-b.mean()), "nll_se": standard_error(b)}
    unpaired = math.hypot(row["nll_se"], best["nll_se"])
    # nothing stored: the conservative s.e.
    assert density.nll_verdict(row, best, "toy") == ("within 2 s.e.", pytest.approx(0.02, abs=1e-3),
                                                     unpaired)
    density.save_heldout("toy", {"numpyro_si": a})
    density.save_heldout("toy", {"flowjax MAF": b})  # a second run's method is added, not lost
    assert not list(tmp_path.glob("*.tmp"))
    verdict, diff, se = density.nll_verdict(row, best, "toy")
    assert se == pytest.approx(standard_error(a - b), rel=1e-4) and se < unpaired / 10
    assert verdict == "**no**" and diff == pytest.approx(row["nll"] - best["nll"])
    # values that are not the row's (a later run replaced the row but not its values): unpaired
    assert density.paired_se("toy", dict(row, nll=row["nll"] + 0.1), best) is None
    assert density.nll_verdict(row, best, None)[2] == unpaired


def test_study_store_keeps_rows_not_rerun_and_lists_commands(tmp_path):
    density = pytest.importorskip("density")
    path = tmp_path / "curves.json"
    key, order = (lambda r: (r["budget"], r["method"])), (lambda r: r["budget"])
    first = [{"budget": 40, "method": "a", "nll": 1.0}, {"budget": 120, "method": "a", "nll": 0.9}]
    density._merge_study(path, "toy", first, "cmd 1", row_key=key, sort_key=order, entropy=0.5)
    entry = density._merge_study(path, "toy", [{"budget": 40, "method": "a", "nll": 0.8}], "cmd 2",
                                 row_key=key, sort_key=order, entropy=0.5)
    assert [r["nll"] for r in entry["rows"]] == [0.8, 0.9]  # the re-run row replaced, the other kept
    assert entry["commands"] == ["cmd 1", "cmd 2"] and entry["entropy"] == 0.5
    assert json.loads(path.read_text())["toy"] == entry and not list(tmp_path.glob("*.tmp"))
    # a --quick run reports its rows but writes nothing
    quick = density._merge_study(path, "toy", [], "cmd 3", row_key=key, sort_key=order, write=False)
    assert quick["rows"] == [] and json.loads(path.read_text())["toy"] == entry


def test_verdict_over_training_keys_adds_the_between_key_noise(tmp_path, monkeypatch):
    density = pytest.importorskip("density")
    monkeypatch.setattr(density, "FIGURES", tmp_path)
    rng = np.random.default_rng(1)
    shared = rng.normal(size=4000) * 2.0
    # three keys per method: per-point log densities of each fit, the fits' NLLs spread by
    # training noise (0.03) far above the paired held-out s.e.
    fits_a = [shared + s + 0.01 * rng.normal(size=4000) for s in (0.00, 0.03, -0.03)]
    fits_b = [shared + s + 0.01 * rng.normal(size=4000) for s in (0.02, 0.02, 0.02)]

    def row(method, fits):
        return {"method": method, "nll": float(-fits[0].mean()),
                "nll_se": standard_error(fits[0]),
                "nll_keys": [float(-f.mean()) for f in fits]}

    a, b = row("numpyro_si", fits_a), row("flowjax MAF", fits_b)
    assert density.key_nll(a) == pytest.approx(np.mean(a["nll_keys"]))
    assert density.between_key_se(a) == pytest.approx(0.03 / math.sqrt(3), rel=0.02)
    mean_a, mean_b = np.mean(fits_a, 0), np.mean(fits_b, 0)
    density.save_heldout("toy", {"numpyro_si": fits_a[0], "flowjax MAF": fits_b[0],
                                 "numpyro_si" + density.KEY_MEAN: mean_a,
                                 "flowjax MAF" + density.KEY_MEAN: mean_b})
    verdict, diff, se, paired = density._nll_comparison(a, b, "toy")
    assert paired and diff == pytest.approx(-mean_a.mean() + mean_b.mean(), abs=1e-5)
    expected = math.sqrt(standard_error(mean_a - mean_b) ** 2 + density.between_key_se(a) ** 2
                         + density.between_key_se(b) ** 2)
    assert se == pytest.approx(expected, rel=1e-3)
    # the first keys alone: a 0.02-nat loss with a tiny paired s.e., "no"; over keys the
    # loss is as large but its s.e. carries the training noise, and it is within 2 s.e.
    first_keys = density._nll_comparison({k: v for k, v in a.items() if k != "nll_keys"},
                                         {k: v for k, v in b.items() if k != "nll_keys"}, "toy")
    assert first_keys[0] == "**no**" and first_keys[2] < se / 10
    assert verdict == "within 2 s.e." and diff == pytest.approx(0.02, abs=2e-3)
    # a row with one key against a row with several: that row's key mean, the other's one fit
    single = {k: v for k, v in a.items() if k != "nll_keys"}
    verdict, diff, se, paired = density._nll_comparison(single, b, "toy")
    assert paired and diff == pytest.approx(a["nll"] - density.key_nll(b), abs=1e-5)
    # the goal table's cell: key mean and spread, and the keys' training CPU seconds if stored
    assert density._key_cell(single) == f"{a['nll']:.3f}"
    assert density._key_cell(a).endswith("s.d. 0.030)") and "CPU" not in density._key_cell(a)
    a["train_cpu_keys"] = [40.2, 23.9, 31.0]
    assert density._key_cell(a).endswith("s.d. 0.030; training 24-40 CPU s)")
    a["train_cpu_keys"] = [40.2, 39.9, 40.4]
    assert density._key_cell(a).endswith("s.d. 0.030; training 40 CPU s)")


def test_atomic_writes_leave_the_previous_file_when_a_write_fails(tmp_path):
    from _bench_io import update_npz, write_atomically, write_json, write_text

    path = tmp_path / "out.md"
    write_text(path, "first")

    def broken(f):
        f.write(b"half of the new fi")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, broken)
    assert path.read_text() == "first" and list(tmp_path.iterdir()) == [path]
    write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    update_npz(tmp_path / "s.npz", {"a": np.arange(3)})
    stored = update_npz(tmp_path / "s.npz", {"b": np.ones(2)})
    assert sorted(stored) == ["a", "b"] and np.array_equal(np.load(tmp_path / "s.npz")["a"], np.arange(3))
