"""Tests of the density benchmark: its data loaders (benchmarks/_density_data.py; the sbibm and
scikit-learn sets need the `bench` extra and skip without it), budget calibration, result
stores, verdicts and the rendered docs."""

import importlib.util
import json
import math
import re
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


def _report(tmp_path, monkeypatch):
    """The renderer, with the stores' side files in `tmp_path`."""
    import _density_store
    import density_report

    monkeypatch.setattr(_density_store, "FIGURES", tmp_path)
    return density_report, _density_store


def test_nll_verdict_is_paired_only_on_the_rows_stored_values(tmp_path, monkeypatch):
    report, store = _report(tmp_path, monkeypatch)
    rng = np.random.default_rng(0)
    # two methods whose log densities share a large per-point component: the paired s.e. of
    # the difference is far below the unpaired one
    shared = rng.normal(size=4000) * 2.0
    a, b = shared + 0.01 * rng.normal(size=4000), shared + 0.02 + 0.01 * rng.normal(size=4000)
    row = {"method": "numpyro_si", "nll": float(-a.mean()), "nll_se": standard_error(a)}
    best = {"method": "flowjax_maf", "nll": float(-b.mean()), "nll_se": standard_error(b)}
    unpaired = math.hypot(row["nll_se"], best["nll_se"])
    # nothing stored: the conservative s.e.
    assert report.nll_comparison(row, best, "toy") == (
        "within 2 s.e.", pytest.approx(0.02, abs=1e-3), unpaired, False)
    store.save_heldout("toy", {"numpyro_si": a})
    store.save_heldout("toy", {"flowjax_maf": b})  # a second run's method is added, not lost
    assert not list(tmp_path.glob("*.tmp"))
    verdict, diff, se, paired = report.nll_comparison(row, best, "toy")
    assert paired and se == pytest.approx(standard_error(a - b), rel=1e-4) and se < unpaired / 10
    assert verdict == "**no**" and diff == pytest.approx(row["nll"] - best["nll"])
    # values that are not the row's (a later run replaced the row but not its values): unpaired
    assert report.paired_se("toy", dict(row, nll=row["nll"] + 0.1), best) is None
    assert report.nll_comparison(row, best, None)[2:] == (unpaired, False)


def test_stores_keep_what_a_run_did_not_redo_and_list_commands(tmp_path):
    from _density_store import merge_configs, merge_curve, read_results, write_results

    # budget curve: rows keyed by budget and series (method, flowjax patience protocol)
    path = tmp_path / "curves.json"
    first = [{"budget": 40, "method": "numpyro_si", "nll": 1.0},
             {"budget": 40, "method": "flowjax_maf", "patience_fraction": 0.2, "nll": 1.1},
             {"budget": 120, "method": "numpyro_si", "nll": 0.9}]
    merge_curve(path, "toy", first, "cmd 1", dataset="toy", entropy=0.5)
    entry = merge_curve(path, "toy", [{"budget": 40, "method": "numpyro_si", "nll": 0.8},
                                      {"budget": 40, "method": "flowjax_maf", "nll": 1.2}],
                        "cmd 2", dataset="toy", entropy=0.5)
    # the re-run row replaced, the others kept; another patience protocol is another series
    assert sorted((r["budget"], r["method"], r["nll"]) for r in entry["rows"]) == [
        (40, "flowjax_maf", 1.1), (40, "flowjax_maf", 1.2), (40, "numpyro_si", 0.8),
        (120, "numpyro_si", 0.9)]
    assert entry["commands"] == ["cmd 1", "cmd 2"] and entry["entropy"] == 0.5
    stored = json.loads(path.read_text())
    assert stored["schema"] == 2 and stored["curves"]["toy"] == entry
    # a --quick run reports its rows but writes nothing
    quick = merge_curve(path, "toy", [], "cmd 3", write=False, dataset="toy")
    assert quick["rows"] == [] and json.loads(path.read_text())["curves"]["toy"] == entry
    # configurations: keyed by id, in the study's order; ids no longer in the study dropped
    path = tmp_path / "configs.json"
    merge_configs(path, "toy", {"b": {"nll": 2.0}, "gone": {"nll": 0.0}}, "cmd 1",
                  known=["a", "b", "gone"])
    entry = merge_configs(path, "toy", {"a": {"nll": 1.0}}, "cmd 2", known=["a", "b"])
    assert list(entry["configs"]) == ["a", "b"] and entry["commands"] == ["cmd 1", "cmd 2"]
    # results: a run with other --methods keeps the stored methods of the data set
    path = tmp_path / "results.json"
    meta = {"machine": "m", "budgets": "2d 40", "clock": "cpu", "quick": False, "code": "c"}
    run = {"meta": dict(meta, commands=["cmd 1"]), "throughput": {},
           "datasets": {"toy": {"dim": 2, "methods": {"numpyro_si": {"nll": 1.0},
                                                      "bnaf": {"nll": 2.0}}}}, "solver": {}}
    write_results(path, run, datasets=["toy"], solver=[], throughput=[])
    run["datasets"]["toy"]["methods"] = {"bnaf": {"nll": 1.5}}
    run["meta"]["commands"] = ["cmd 2"]
    write_results(path, run, datasets=["toy"], solver=[], throughput=[])
    stored = read_results(path)
    assert stored["datasets"]["toy"]["methods"] == {"numpyro_si": {"nll": 1.0}, "bnaf": {"nll": 1.5}}
    assert stored["meta"]["commands"] == ["cmd 1", "cmd 2"]
    # a store of another schema is refused rather than misread
    path.write_text(json.dumps({"datasets": {}}))
    with pytest.raises(SystemExit, match="schema"):
        read_results(path)


def test_verdict_over_training_keys_adds_the_between_key_noise(tmp_path, monkeypatch):
    report, store = _report(tmp_path, monkeypatch)
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

    a, b = row("numpyro_si", fits_a), row("flowjax_maf", fits_b)
    assert report.key_nll(a) == pytest.approx(np.mean(a["nll_keys"]))
    assert report.between_key_se(a) == pytest.approx(0.03 / math.sqrt(3), rel=0.02)
    mean_a, mean_b = np.mean(fits_a, 0), np.mean(fits_b, 0)
    store.save_heldout("toy", {"numpyro_si": fits_a[0], "flowjax_maf": fits_b[0],
                               "numpyro_si" + store.KEY_MEAN: mean_a,
                               "flowjax_maf" + store.KEY_MEAN: mean_b})
    verdict, diff, se, paired = report.nll_comparison(a, b, "toy")
    assert paired and diff == pytest.approx(-mean_a.mean() + mean_b.mean(), abs=1e-5)
    expected = math.sqrt(standard_error(mean_a - mean_b) ** 2 + report.between_key_se(a) ** 2
                         + report.between_key_se(b) ** 2)
    assert se == pytest.approx(expected, rel=1e-3)
    # the first keys alone: a 0.02-nat loss with a tiny paired s.e., "no"; over keys the
    # loss is as large but its s.e. carries the training noise, and it is within 2 s.e.
    first_keys = report.nll_comparison({k: v for k, v in a.items() if k != "nll_keys"},
                                       {k: v for k, v in b.items() if k != "nll_keys"}, "toy")
    assert first_keys[0] == "**no**" and first_keys[2] < se / 10
    assert verdict == "within 2 s.e." and diff == pytest.approx(0.02, abs=2e-3)
    # a row with one key against a row with several: that row's key mean, the other's one fit
    single = {k: v for k, v in a.items() if k != "nll_keys"}
    verdict, diff, se, paired = report.nll_comparison(single, b, "toy")
    assert paired and diff == pytest.approx(a["nll"] - report.key_nll(b), abs=1e-5)
    # the goal table's cell: key mean and spread, and the keys' training CPU seconds if stored
    assert report._key_cell(single) == f"{a['nll']:.3f}"
    assert report._key_cell(a).endswith("s.d. 0.030)") and "CPU" not in report._key_cell(a)
    a["train_cpu_keys"] = [40.2, 23.9, 31.0]
    assert report._key_cell(a).endswith("s.d. 0.030; training 24-40 CPU s)")
    a["train_cpu_keys"] = [40.2, 39.9, 40.4]
    assert report._key_cell(a).endswith("s.d. 0.030; training 40 CPU s)")


def test_every_measured_id_has_a_label_and_the_cli_takes_ids_only():
    import density
    import density_report as report
    from _density_methods import METHODS
    from _density_studies import CONFIG_STUDY, SOLVER_VARIANTS

    assert set(METHODS) <= set(report.METHOD_LABELS)
    assert set(report.GOAL_METHODS + report.GOAL_REFERENCES) <= set(METHODS)
    assert list(SOLVER_VARIANTS) == list(report.VARIANT_LABELS)
    assert report.DEFAULT_VARIANT == next(iter(SOLVER_VARIANTS))
    assert report.CHECKED_VARIANT in SOLVER_VARIANTS
    assert list(CONFIG_STUDY) == list(report.CONFIG_LABELS)
    assert report.REFERENCE_CONFIG in CONFIG_STUDY
    # the defaults section's template names configurations by id: every one must exist
    templates = report.load_templates()
    named = set(re.findall(r"\{delta\[([^\]]+)\]\}", templates["defaults"]))
    assert named and named <= set(CONFIG_STUDY)
    args = density.parse_args(["--methods", "numpyro_si_tuned,bnaf", "--configs",
                               "lin_lr5e-3_w64d6", "--curve-methods", "flowjax_maf"])
    assert args.methods == ["numpyro_si_tuned", "bnaf"] and args.configs == ["lin_lr5e-3_w64d6"]
    for option, label in (("--methods", "numpyro_si tuned"), ("--seed-methods", "flowjax MAF"),
                          ("--configs", "reference"), ("--datasets", "moons")):
        with pytest.raises(SystemExit):
            density.parse_args([option, label])


def test_docs_are_the_stored_results_rendered_with_labels():
    """docs/benchmarks.md's density section is what the stored results render to (run
    `benchmarks/density_report.py` after changing them), and its tables show labels, not ids."""
    import density_report as report
    from _density_store import DOCS, load_all

    results = load_all()
    for entry in results["datasets"].values():
        assert set(entry["methods"]) <= set(report.METHOD_LABELS)
    for entry in results["solver"].values():
        assert set(entry["variants"]) <= set(report.VARIANT_LABELS)
    for entry in results["configs"].values():
        assert set(entry["configs"]) <= set(report.CONFIG_LABELS)
    for entry in results["curves"].values():
        assert {r["method"] for r in entry["rows"]} <= set(report.METHOD_LABELS)
    section = report.render(results, allow_mixed=True)
    assert section in DOCS.read_text()
    tables = [line for line in section.splitlines() if line.startswith("|")]
    assert tables and not any(i in line for line in tables
                              for i in ("numpyro_si_tuned", "flowjax_maf", "tsit5_", "lin_lr"))


def test_a_main_table_of_several_runs_is_refused_unless_allowed():
    import density_report as report

    def results(*runs):
        rows = {m: {"run": r} for m, r in zip(("numpyro_si", "flowjax_maf"), runs, strict=True)}
        return {"datasets": {"checkerboard": {"methods": rows}}}

    assert report.check_one_run(results("a", "a"), allow_mixed=False) == []
    with pytest.raises(report.MixedRunsError, match="2 runs"):
        report.check_one_run(results("a", "b"), allow_mixed=False)
    lines = report.check_one_run(results("a", "b"), allow_mixed=True)
    assert "`a` (checkerboard)" in lines[-1] and "`b` (checkerboard)" in lines[-1]


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
