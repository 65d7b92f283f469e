"""Tests of the MCMC benchmark's bookkeeping (benchmarks/mcmc.py): one run per table, spreads
over seeds, budgets and peer settings stated, load recorded; no sampler is run here."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import mcmc  # noqa: E402


def _row(run, seed, target="gmm2", method="nuts", ess=100.0, load=(0.5, 1.5)):
    fields = {"weight_error": 0.01 * (seed + 1), "m1_error": 0.1, "m2_error": 0.2, "ess": ess,
              "evals": 20_000, "ess_per_1000_evals": ess / 20, "ess_per_s": ess / 10,
              "seconds": 10.0, "global_acc": None, "flow_steps": 0, "mode_switches": 5.0}
    return {"run": run, "seed": seed, "target": target, "method": method, "fields": fields,
            "load": list(load), "finished": "2026-01-01 00:00", "extra": {}}


def _store(rows, runs=("r1",)):
    return {"schema": 2, "rows": rows,
            "runs": {r: mcmc.new_run(f"cmd {r}", mcmc.QUICK, [0, 1, 2], ["gmm2"], ["nuts"])
                     | {"id": r} for r in runs}}


def test_cells_are_mean_and_sd_over_seeds():
    rows = [_row("r1", s, ess=e) for s, e in zip((0, 1, 2), (90.0, 100.0, 110.0), strict=True)]
    stats = mcmc.aggregate(rows)
    mean, sd, n = stats["gmm2", "nuts"]["ess"]
    assert (mean, n) == (100.0, 3)
    assert sd == pytest.approx(10.0)
    assert mcmc.cell(stats["gmm2", "nuts"]["ess"], ".0f") == "100 ± 10"
    assert mcmc.cell(stats["gmm2", "nuts"]["global_acc"], ".2f") == "n/a"


def test_rows_of_two_runs_are_refused_unless_allowed():
    rows = [_row("r1", 0), _row("r2", 1)]
    with pytest.raises(mcmc.MixedRunsError, match="2 runs"):
        mcmc.aggregate(rows)
    with pytest.raises(mcmc.MixedRunsError):
        mcmc.render(_store(rows, ("r1", "r2")), mcmc.QUICK)
    lines = mcmc.render(_store(rows, ("r1", "r2")), mcmc.QUICK, allow_mixed=True)
    assert "`cmd r1`" in lines[0] and "`cmd r2`" in lines[0]


def test_render_states_seeds_load_budgets_and_peer_sources():
    rows = [_row("r1", s, load=(0.25 * s, 2.0 + s)) for s in (0, 1, 2)]
    lines = mcmc.render(_store(rows), mcmc.QUICK)
    text = "\n".join(lines)
    assert "seeds 0, 1, 2" in lines[0] and "0.00 to 4.00" in lines[0]
    assert "| gmm2 | NUTS | 3 | 0.020 ± 0.010 | 5.0 ± 0.0 |" in text
    for label in ("flowMC, its tutorial's settings", "flowMC, 3000 Adam steps", "NeuTra"):
        assert f"| {label} |" in text
    assert "GW-JAX-Team/flowMC@" in text and "pyro-ppl/numpyro@" in text


def test_run_all_interleaves_methods_and_resumes(monkeypatch):
    calls = []

    def fake_row(store, run_id, seed, t_index, name, method, budget):
        calls.append((seed, name, method))
        row = _row(run_id, seed, name, method)
        store["rows"].append(row)
        return row

    monkeypatch.setattr(mcmc, "run_row", fake_row)
    run = mcmc.new_run("cmd", mcmc.QUICK, [0, 1], ["gmm2", "gmm8"], ["nuts", "si-mala", "neutra"])
    store = {"schema": 2, "runs": {run["id"]: run}, "rows": []}
    mcmc.run_all(store, run, mcmc.QUICK, lambda s: None)
    assert len(calls) == 12 and len(set(calls)) == 12
    assert [c[0] for c in calls] == [0] * 6 + [1] * 6  # seeds outermost
    first = [c[2] for c in calls[0:3]], [c[2] for c in calls[3:6]]
    assert first[0] != first[1]  # each target's methods in a rotated order
    calls.clear()
    mcmc.run_all(store, run, mcmc.QUICK, lambda s: None)  # resumed: nothing left to do
    assert calls == []


def test_flowmc_budget_arithmetic():
    tutorial = mcmc.FULL.flowmc_settings("flowmc")
    assert mcmc.flowmc_adam_steps(tutorial) == 100  # 20 loops x 5 epochs x 1 batch
    assert mcmc.flowmc_adam_steps(mcmc.FULL.flowmc_settings("flowmc-long")) == 3000
    assert mcmc.flowmc_evals(tutorial) == 20 * 40 * 210
    pt = mcmc.FULL.flowmc_settings("flowmc-pt")
    assert mcmc.flowmc_evals(pt) == 20 * 40 * (210 + 2 * 5 * 100)


def test_latent_start_inverts_a_nonlinear_map():
    import jax.numpy as jnp

    def transform(z):
        return z + 0.5 * jnp.tanh(z) + 0.1 * jnp.roll(z, 1) ** 3 / (1 + z**2)

    z_true = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), dtype=jnp.float32)
    x = jnp.stack([transform(z) for z in z_true])
    z, miss = mcmc.latent_start(transform, x)
    assert np.all(miss < 1e-4)


def test_verdicts_compare_only_methods_within_tolerance():
    rows = []
    for seed, (si_ess, peer_ess) in enumerate([(100.0, 10.0), (120.0, 20.0), (90.0, 30.0)]):
        rows.append(_row("r1", seed, method="si-mala", ess=si_ess))
        rows.append(_row("r1", seed, method="flowmc", ess=peer_ess))
        stuck = _row("r1", seed, method="nuts", ess=1000.0)
        stuck["fields"]["weight_error"] = 0.3
        rows.append(stuck)
    for row in rows:
        row["fields"]["m2_error"] = 0.05
        if row["method"] != "nuts":
            row["fields"]["weight_error"] = 0.01
    line = mcmc.verdict("gmm2", mcmc._per_seed(_store(rows)))
    within, outside = line.split("; outside: ")
    assert "SIFlow + MALA" in within and "flowMC" in within and "NUTS (weights 0.300" in outside
    # per seed 10x, 6x, 3x: the median and the range
    assert "ESS / 1000 evals 6.0x (3.0-10.0x over 3 seeds)" in line


def test_chains_that_never_switch_mode_are_not_credited_with_the_weights():
    rows = [_row("r1", seed, method="si-mala") for seed in range(3)]
    for row in rows:
        row["fields"].update(weight_error=0.01, m2_error=0.05)
    assert mcmc.right(mcmc._per_seed(_store(rows))["gmm2", "si-mala"])
    for row in rows:
        row["fields"]["mode_switches"] = 0.2
    assert not mcmc.right(mcmc._per_seed(_store(rows))["gmm2", "si-mala"])


def test_score_counts_mode_switches_per_chain():
    target = mcmc.gmm_target(2)
    samples = np.zeros((2, 4, 2))
    samples[0] = [[-3, -3], [3, 3], [-3, -3], [-3, -3]]  # 2 switches
    samples[1] = [[3, 3]] * 4  # none
    assert mcmc.score(target, samples, 100, 1.0)["mode switches"] == 1.0


def test_the_real_suite_has_its_own_store_region_and_targets():
    synthetic, real = mcmc.parse([]), mcmc.parse(["--suite", "real"])
    assert synthetic.targets == ",".join(mcmc.TARGETS)
    assert real.targets == "eight_schools,brownian_motion,stochastic_volatility"
    assert "--suite real" in mcmc.command_line(real)
    assert "--suite" not in mcmc.command_line(synthetic)
    targets, store, start, end = mcmc.SUITES["real"]
    assert store != mcmc.STORE and (start, end) != (mcmc.START, mcmc.END)
    # the synthetic targets keep their indices, hence their keys, in the combined list
    assert list(mcmc.ALL_TARGETS)[: len(mcmc.TARGETS)] == list(mcmc.TARGETS)
    with pytest.raises(SystemExit):
        mcmc.parse(["--suite", "real", "--targets", "gmm2"])  # not a target of that suite
