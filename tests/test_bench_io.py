"""Tests of the benchmarks' shared row loop (benchmarks/_bench_io.py `run_rows`): rows kept as
they come, a stopped run continued with `resume`, a finished or different run refused."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _bench_io import run_rows  # noqa: E402

UNITS = [{"seed": s, "method": m} for s in (0, 1) for m in ("a", "b")]
META = {"budget": [5, 5], "seeds": [0, 1]}


def test_rows_are_kept_as_they_come_and_a_stopped_run_resumes(tmp_path):
    path = tmp_path / "results.json"
    measured = []

    def measure(unit):
        if len(measured) == 3:
            raise KeyboardInterrupt  # stopped before the last row
        measured.append(unit)
        return {"value": 10 * unit["seed"] + ord(unit["method"])}

    with pytest.raises(KeyboardInterrupt):
        run_rows(path, UNITS, measure, meta=META, resume=False, quick=False)
    stored = json.loads(path.read_text())
    assert [{k: r[k] for k in ("seed", "method")} for r in stored["rows"]] == UNITS[:3]
    assert stored["complete"] is False and stored["budget"] == [5, 5]

    measured.clear()
    run, loads = run_rows(path, UNITS, measure, meta=META, resume=True, quick=False)
    assert measured == UNITS[3:]  # only the missing row is measured
    assert run["run"] == stored["run"] and len(run["rows"]) == 4
    assert run["rows"][3]["value"] == 10 + ord("b") and "load" in run["rows"][3]
    assert len(loads) == 5  # at the start, then after each of the four rows


def test_resume_refuses_a_finished_or_different_run(tmp_path):
    path = tmp_path / "results.json"
    with pytest.raises(SystemExit, match="no unfinished run"):
        run_rows(path, UNITS, dict, meta=META, resume=True, quick=False)  # nothing stored
    run, _ = run_rows(path, UNITS[:1], lambda u: {}, meta=META, resume=False, quick=False)
    path.write_text(json.dumps(run))  # unfinished, budget [5, 5]
    with pytest.raises(SystemExit, match="no unfinished run"):
        run_rows(path, UNITS, dict, meta=META | {"budget": [6, 6]}, resume=True, quick=False)
    path.write_text(json.dumps(run | {"complete": True}))
    with pytest.raises(SystemExit, match="no unfinished run"):
        run_rows(path, UNITS, dict, meta=META, resume=True, quick=False)


def test_a_quick_run_writes_nothing(tmp_path):
    path = tmp_path / "results.json"
    run, _ = run_rows(path, UNITS, lambda u: {}, meta=META, resume=False, quick=True)
    assert len(run["rows"]) == 4 and not path.exists()


def test_the_cited_command_and_the_finished_run(tmp_path, capsys):
    from _bench_io import finish_run, row_run_args, run_command

    args = row_run_args("d", ["--seeds", "0,1"])
    assert args.seed_list == [0, 1] and not args.quick
    assert run_command("x.py", args, {"run": "r1"}) == "`.venv/bin/python benchmarks/x.py --seeds 0,1`"
    resumed = row_run_args("d", ["--resume"])
    assert run_command("x.py", resumed, {"run": "r1"}) == (
        "`.venv/bin/python benchmarks/x.py` (run r1, continued with `--resume`)")

    path, out = tmp_path / "results.json", tmp_path / "bench.md"
    out.write_text("# B\n\n<!-- a:start -->\nold\n<!-- a:end -->\n\nkept\n")
    quick = row_run_args("d", ["--quick"])
    run = {"run": "r1", "rows": [], "complete": False}
    finish_run(run, ["| t |"], quick, path=path, out=out, start="<!-- a:start -->",
               end="<!-- a:end -->")
    assert not path.exists() and "old" in out.read_text() and run["complete"] is False
    finish_run(run, ["| t |"], args, path=path, out=out, start="<!-- a:start -->",
               end="<!-- a:end -->")
    assert json.loads(path.read_text())["complete"] is True
    assert out.read_text() == "# B\n\n<!-- a:start -->\n| t |\n<!-- a:end -->\n\nkept\n"
    assert "| t |" in capsys.readouterr().out
