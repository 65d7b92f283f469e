"""The density benchmark's report: docs/benchmarks.md's density section from the stored results.

    .venv/bin/python benchmarks/density_report.py           # re-render the section in place
    .venv/bin/python benchmarks/density_report.py --check   # exit 1 if the page is out of date
    .venv/bin/python benchmarks/density_report.py --allow-mixed-runs  # rows of several runs

`benchmarks/density.py` measures and stores results keyed by stable ids (`_density_store`);
this module owns everything shown: the display labels of the ids, the tables (format functions
below), the verdicts computed from the numbers, and the prose, which lives in
`benchmarks/templates/density.md`. The hand-written reading of the results is
`docs/figures/density/analysis.md`, inserted after the goals. Nothing here measures anything,
so re-rendering is quick and needs no training.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_io import write_text  # noqa: E402
from _density_data import ALL_DATASETS, standard_error  # noqa: E402
from _density_store import DOCS, KEY_MEAN, load_all, load_heldout  # noqa: E402

START, END = "<!-- density:start -->", "<!-- density:end -->"
TEMPLATES = Path(__file__).resolve().parent / "templates" / "density.md"

# Display labels of the stored ids, in the tables' order.
METHOD_LABELS = {
    "numpyro_si": "numpyro_si",
    "numpyro_si_tuned": "numpyro_si tuned",
    "flowjax_coupling": "flowjax coupling",
    "flowjax_maf": "flowjax MAF",
    "flowjax_maf_docs": "flowjax MAF, its docs' settings",
    "bnaf": "numpyro BNAF",
    # measured in the budget curve only: `fit` with width=64, depth=8 (fit's defaults otherwise)
    "numpyro_si_w64d8": "numpyro_si, width 64, depth 8",
}
VARIANT_LABELS = {
    "tsit5_tol1e-5": "Tsit5 adaptive, tol 1e-5 (default)",
    "tsit5_tol1e-4": "Tsit5 adaptive, tol 1e-4",
    "tsit5_tol1e-3": "Tsit5 adaptive, tol 1e-3",
    "tsit5_fixed8": "Tsit5, 8 fixed steps",
    "tsit5_fixed6": "Tsit5, 6 fixed steps",
    "tsit5_fixed4": "Tsit5, 4 fixed steps",
    "tsit5_fixed2": "Tsit5, 2 fixed steps",
    "heun_fixed8": "Heun, 8 fixed steps",
    "tsit5_checked": "Tsit5, fewest fixed steps within 0.01 nats on 1000 training points",
}
CONFIG_LABELS = {
    "lin_lr2e-3_w128d3": "linear, lr 2e-3 (the previous defaults)",
    "trig_lr2e-3_w128d3": "trigonometric, lr 2e-3",
    "vp_lr2e-3_w128d3": "VP, lr 2e-3 (time U[0, 0.999])",
    "lin_lr5e-3_w128d3": "reference: linear, lr 5e-3, U[0,1] time, width 128, depth 3 (the default"
                         " for d > 16)",
    "lin_lr5e-3_w64d6": "linear, lr 5e-3, width 64, depth 6 (the default for d <= 16)",
    "lin_lr5e-3_w64d8": "linear, lr 5e-3, width 64, depth 8",
    "lin_lr5e-3_w48d8": "linear, lr 5e-3, width 48, depth 8",
    "lin_lr5e-3_w128d6": "linear, lr 5e-3, width 128, depth 6",
    "trig_lr5e-3_w128d3": "trigonometric, lr 5e-3",
    "trig_lr5e-3_w128d4": "trigonometric, lr 5e-3, depth 4",
    "lin_lr5e-3_w128d4": "linear, lr 5e-3, depth 4",
    "lin_lr2e-3_w128d3_beta21": "linear, lr 2e-3, time ~ Beta(2, 1) (more t near the data)",
    "lin_lr2e-3_w128d3_beta12": "linear, lr 2e-3, time ~ Beta(1, 2) (more t near the base)",
    "lin_lr2e-3_w128d4": "linear, lr 2e-3, depth 4",
    "lin_lr2e-3_w256d3": "linear, lr 2e-3, width 256",
}
GOAL_METHODS = ("numpyro_si", "numpyro_si_tuned")  # compared with the best goal reference
GOAL_REFERENCES = ("flowjax_coupling", "flowjax_maf", "flowjax_maf_docs")
DEFAULT_VARIANT, CHECKED_VARIANT = "tsit5_tol1e-5", "tsit5_checked"
REFERENCE_CONFIG = "lin_lr5e-3_w128d3"  # configuration rows are compared with this one


def load_templates(path: Path = TEMPLATES) -> dict[str, str]:
    """The prose sections of `path`: name -> text (str.format fields unfilled)."""
    parts = re.split(r"^<!-- template: (\w+) -->$", path.read_text(), flags=re.MULTILINE)
    return {name: text.strip("\n") for name, text in zip(parts[1::2], parts[2::2], strict=True)}


def _ordered(items: dict, labels: dict) -> list:
    """The ids of `items` in the order of `labels` (ids without a label last, as stored)."""
    return [i for i in labels if i in items] + [i for i in items if i not in labels]


def _label(labels: dict, item_id: str) -> str:
    return labels.get(item_id, item_id)


def _fmt(value, digits=0):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if digits == 0 and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def method_rows(entry: dict) -> list[dict]:
    """A data set's stored rows in table order, each with its method id under "method"."""
    return [dict(entry["methods"][m], method=m) for m in _ordered(entry["methods"], METHOD_LABELS)]


def _datasets(section: dict) -> list[str]:
    return [n for n in ALL_DATASETS if n in section]


# ----------------------------------------------------------------------------------------------
# verdicts
# ----------------------------------------------------------------------------------------------


def _keys(row: dict) -> list[float]:
    """The NLLs of a row's training keys (`--seeds`) if it has several, else []."""
    keys = row.get("nll_keys") or []
    return keys if len(keys) > 1 else []


def key_nll(row: dict) -> float:
    """A row's NLL averaged over its training keys (`--seeds`), else its one NLL."""
    keys = _keys(row)
    return float(np.mean(keys)) if keys else row["nll"]


def between_key_se(row: dict) -> float:
    """Standard error of `key_nll` from the spread between training keys (0 for one key)."""
    keys = _keys(row)
    return float(np.std(keys, ddof=1) / math.sqrt(len(keys))) if keys else 0.0


def _heldout_ref(row: dict) -> tuple[str, float]:
    """The side-file entry of a row's held-out log densities and the NLL they must give: the
    key-averaged values for a row with several keys, else the first key's."""
    if _keys(row):
        return row["method"] + KEY_MEAN, key_nll(row)
    return row["method"], row["nll"]


def paired_se(name: str | None, row: dict, other: dict) -> float | None:
    """The standard error of `row`'s NLL minus `other`'s from their per-point differences on
    the same held-out points, or None if the stored values are missing or are not those of
    the rows (a row written by a run that did not store them, or changed since)."""
    (key_a, nll_a), (key_b, nll_b) = _heldout_ref(row), _heldout_ref(other)
    stored = load_heldout(name, key_a, key_b)
    if stored is None:
        return None
    a, b = stored
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    for values, nll in ((a, nll_a), (b, nll_b)):
        if abs(-values.mean() - nll) > 1e-4 * max(1.0, abs(nll)):
            return None
    return standard_error(a - b)


def nll_comparison(row: dict, best: dict, name: str | None) -> tuple[str, float, float, bool]:
    """Is `row`'s NLL at most `best`'s: "yes", "within 2 s.e." or "**no**", the difference, its
    standard error, and whether that is paired on the held-out points (both rows' values
    stored) rather than from the two NLLs' standard errors (conservative: the points are shared).

    Rows trained with several keys (`--seeds`) are compared by their NLLs averaged over keys;
    the standard error then adds the between-key (training-noise) standard errors of both rows
    to the held-out one, which is paired on the key-averaged per-point log densities when
    those are stored."""
    diff = key_nll(row) - key_nll(best)
    se = paired_se(name, row, best)
    paired = se is not None
    if not paired:
        se = math.hypot(row["nll_se"], best["nll_se"])
    se = math.sqrt(se**2 + between_key_se(row) ** 2 + between_key_se(best) ** 2)
    if not math.isfinite(diff):
        return "**no**", diff, se, paired
    verdict = "yes" if diff <= 0 else "within 2 s.e." if diff <= 2 * se else "**no**"
    return verdict, diff, se, paired


def _best_reference(rows: dict[str, dict]) -> dict | None:
    """The goal reference (a flowjax flow) with the lowest NLL over keys, or None."""
    references = [rows[m] for m in GOAL_REFERENCES if m in rows]
    return min(references, key=key_nll) if references else None


def _key_cell(row: dict) -> str:
    """A row's NLL for the goal table: over its training keys when it has several."""
    keys = _keys(row)
    if not keys:
        return f"{row['nll']:.3f}"
    cpu = row.get("train_cpu_keys")  # not every run stored every key's CPU seconds
    low, high = (f"{min(cpu):.0f}", f"{max(cpu):.0f}") if cpu else ("", "")
    spent = f"; training {low if low == high else f'{low}-{high}'} CPU s" if cpu else ""
    return (f"{key_nll(row):.3f} (mean of {len(keys)} keys, s.d. {np.std(keys, ddof=1):.3f}"
            f"{spent})")


def _variant_label(variant: str, row: dict) -> str:
    """A solver-table row's label; the checked fixed-step row names the steps it chose."""
    label = _label(VARIANT_LABELS, variant)
    if variant != CHECKED_VARIANT:
        return label
    if row.get("n_steps") is None:
        return label + ": none qualified, the adaptive solve kept"
    return label + f": {row['n_steps']} steps"


# ----------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------


def header(results: dict, text: dict) -> list[str]:
    meta = results["meta"]
    config_commands = {c for e in results.get("configs", {}).values() for c in e["commands"]}
    commands = sorted(set(meta["commands"]) | config_commands)
    return text["header"].format(
        commands=", ".join(f"`{c}`" for c in commands),
        quick_note=" " + text["quick_note"] if meta.get("quick") else "",
        machine=meta["machine"], code=meta.get("code", ""), clock=meta.get("clock", "cpu"),
        budgets=meta["budgets"],
    ).split("\n")


def main_table(results: dict) -> list[str]:
    lines = [
        "| data set | d | train / test | method | params | train s, CPU / wall (steps) |"
        " held-out NLL | log_prob pts/s | sample pts/s | NFE log_prob | NFE sample |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in _datasets(results["datasets"]):
        entry = results["datasets"][name]
        rows = method_rows(entry)
        best = min(r["nll"] for r in rows)
        for i, row in enumerate(rows):
            nll = f"{row['nll']:.3f} ± {row['nll_se']:.3f}" if math.isfinite(row["nll"]) else "inf"
            if row["nll"] == best:
                nll = f"**{nll}**"
            head = (f"| {name} | {entry['dim']} | {entry['n_train']} / {entry['n_test']} |"
                    if i == 0 else "| | | |")
            lines.append(
                head + f" {_label(METHOD_LABELS, row['method'])} | {_fmt(row['params'])} |"
                f" {row['train_cpu']:.0f} / {row['train_time']:.0f} ({row['steps']}) | {nll} |"
                f" {_fmt(row['log_prob_per_s'])} | {_fmt(row.get('sample_per_s'))} |"
                f" {_fmt(row.get('nfe_log_prob'), 1)} | {_fmt(row.get('nfe_sample'), 1)} |"
            )
    return lines


def reference_values(results: dict) -> list[str]:
    lines = ["Reference values:"]
    for name in _datasets(results["datasets"]):
        entry = results["datasets"][name]
        text = f"- {name}: {entry['description']}"
        if entry.get("entropy") is not None:
            text += f"; exact entropy {entry['entropy']:.3f} nats (the NLL gap is the KL)"
        for note in entry.get("notes", []):
            text += f"; {note}"
        rows = method_rows(entry)
        row_commands = {r["command"] for r in rows if "command" in r}
        if len(row_commands) > 1:  # rows of one data set from several runs
            by_command = {c: [_label(METHOD_LABELS, r["method"]) for r in rows
                              if r.get("command") == c] for c in sorted(row_commands)}
            text += "; rows from " + ", ".join(
                f"`{c}` ({', '.join(labels)})" for c, labels in by_command.items())
        elif entry.get("command"):
            text += f"; rows from `{next(iter(row_commands), entry['command'])}`"
        lines.append(text + f". Figure: [`{name}.png`](figures/density/{name}.png).")
    return lines


def goal_table(results: dict) -> list[str]:
    lines = [
        "| data set | best flowjax NLL | numpyro_si defaults | ≤ best flowjax? |"
        " numpyro_si tuned | ≤ best flowjax? |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in _datasets(results["datasets"]):
        rows = {r["method"]: r for r in method_rows(results["datasets"][name])}
        best = _best_reference(rows)
        if best is None or GOAL_METHODS[0] not in rows:
            continue
        cells = []
        for method in GOAL_METHODS:
            if method not in rows:
                cells += ["—", "—"]
                continue
            verdict, diff, se, paired = nll_comparison(rows[method], best, name)
            cells += [_key_cell(rows[method]),
                      f"{verdict} ({diff:+.3f} ± {se:.3f}{', paired' if paired else ''})"]
        short = _label(METHOD_LABELS, best["method"]).removeprefix("flowjax ")
        lines.append(f"| {name} | {_key_cell(best)} ({short}) | " + " | ".join(cells) + " |")
    return lines


def _nll_goal_summary(results: dict) -> list[str]:
    out = []
    names = _datasets(results["datasets"])
    for method in GOAL_METHODS:
        wins, total = [], 0
        for name in names:
            rows = {r["method"]: r for r in method_rows(results["datasets"][name])}
            best = _best_reference(rows)
            if method in rows and best is not None:
                total += 1
                if nll_comparison(rows[method], best, name)[0] == "yes":
                    wins.append(name)
        if total:
            out.append(f"- NLL at equal training budget, {_label(METHOD_LABELS, method)}: at most"
                       f" the best flowjax flow's on {len(wins)} of {total} data sets"
                       + (f" ({', '.join(wins)})." if wins else "."))
    if "checkerboard" in results["datasets"]:
        entry = results["datasets"]["checkerboard"]
        gaps = ", ".join(f"{_label(METHOD_LABELS, r['method'])} {r['nll'] - entry['entropy']:+.3f}"
                         for r in method_rows(entry))
        out.append(f"- Checkerboard, NLL - ln 32 (goal: numpyro_si within 0.05): {gaps}.")
    return out


def _curve_goal_summary(results: dict) -> list[str]:
    out = []
    for entry in results.get("curves", {}).values():
        if entry["dataset"] != "checkerboard":
            continue
        by_series: dict[str, list[str]] = {}
        for row in sorted(entry["rows"], key=lambda r: r["budget"]):
            by_series.setdefault(series_label(row), []).append(
                f"{row['nll'] - entry['entropy']:+.3f} at {row['budget']:.0f} s"
                + (f" (used {row['train_cpu']:.0f} s)"
                   if abs(row["train_cpu"] - row["budget"]) > 0.25 * row["budget"] else ""))
        out.append(f"- Checkerboard ({entry['n_train']} training points) gap to ln 32 against"
                   " training budget (table below): " + "; ".join(
                       f"{label} {', '.join(cells)}" for label, cells in by_series.items()) + ".")
    return out


def _solver_goal_summary(results: dict) -> list[str]:
    out = []
    for name in _datasets(results.get("solver", {})):
        entry = results["solver"][name]
        variants = entry["variants"]
        default = variants[DEFAULT_VARIANT]
        if default.get("cost_vs_flowjax") is None:
            continue
        # the cheapest variant whose log_prob stays within 0.01 nats of the default solve's at
        # every point (a biased solve can move the mean NLL either way)
        accurate = [v for v in _ordered(variants, VARIANT_LABELS)
                    if variants[v]["max_abs_change"] <= 0.01]
        cheapest = min(accurate, key=lambda v: variants[v]["cost_vs_flowjax"])
        checked = variants.get(CHECKED_VARIANT)
        checked_text = ""
        if checked is not None:
            checked_text = (
                " `with_fixed_step_likelihood` on training points: "
                + (f"{checked['n_steps']} steps, {checked['cost_vs_flowjax']:.0f}x, at most"
                   f" {checked['max_abs_change']:.3f} nats from the default on the held-out"
                   " points" if checked.get("n_steps") else "kept the adaptive solve") + ".")
        row = variants[cheapest]
        out.append(
            f"- log_prob cost, {name} (d = {entry['dim']}): default solve"
            f" {default['nfe_log_prob']:.0f} evaluations, {default['cost_vs_flowjax']:.0f}x a"
            " flowjax coupling log_prob; cheapest solve within 0.01 nats of it at every point:"
            f" {_variant_label(cheapest, row)}, {row['nfe_log_prob']:.0f} evaluations,"
            f" {row['cost_vs_flowjax']:.0f}x (goal at d = 10: 20x)." + checked_text
        )
    return out


def goal_summary(results: dict) -> list[str]:
    """The goals, each with the numbers of the stored results."""
    throughput = [
        f"- Training steps/s at batch 512 and equal parameter count, d = {row['dim']}:"
        f" numpyro_si {row['ratio']:.1f}x flowjax `fit_to_data` (goal: 2x)."
        for row in results.get("throughput", {}).values()
    ]
    return [*_nll_goal_summary(results), *_curve_goal_summary(results), *throughput,
            *_solver_goal_summary(results)]


def solver_section(results: dict, text: dict) -> list[str]:
    solver = results.get("solver", {})
    if not solver:
        return []
    lines = [
        "", *text["solver"].split("\n"), "",
        "| data set | d | solver | NLL | max change | NFE mean (max) | log_prob pts/s |"
        " cost vs flowjax coupling |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in _datasets(solver):
        variants = solver[name]["variants"]
        for i, variant in enumerate(_ordered(variants, VARIANT_LABELS)):
            row = variants[variant]
            lines.append(
                f"| {name if i == 0 else ''} | {solver[name]['dim'] if i == 0 else ''}"
                f" | {_variant_label(variant, row)} | {row['nll']:.3f} ± {row['nll_se']:.3f} |"
                f" {row['max_abs_change']:.1e} | {row['nfe_log_prob']:.1f}"
                f" ({row['nfe_max']:.0f}) | {_fmt(row['log_prob_per_s'])} |"
                f" {_fmt(row['cost_vs_flowjax'], 1)}x |"
            )
    commands = {}
    for name in _datasets(solver):
        if "command" in solver[name]:
            commands.setdefault(solver[name]["command"], []).append(name)
    if commands:
        lines += ["", "Solver rows from " + "; ".join(
            f"`{c}` ({', '.join(names)})" for c, names in sorted(commands.items()))
            + " (other data sets: the main table's run)."]
    return lines + flops_table(solver, text)


def flops_table(solver: dict, text: dict) -> list[str]:
    seen = {}
    for name in _datasets(solver):
        if "flops" in solver[name]:
            seen.setdefault(solver[name]["dim"], solver[name]["flops"])
    if not seen:
        return []
    lines = [
        "", text["flops"], "",
        "| d | velocity | velocity + exact divergence | flowjax coupling log_prob |"
        " evaluations allowed by 20x |",
        "| --- | --- | --- | --- | --- |",
    ]
    for dim, flops in sorted(seen.items()):
        lines.append(
            f"| {dim} | {_fmt(flops['velocity_flops'])} | {_fmt(flops['eval_flops'])} |"
            f" {_fmt(flops['flowjax_flops'])} |"
            f" {20 * flops['flowjax_flops'] / flops['eval_flops']:.1f} |"
        )
    return lines


def throughput_section(results: dict, text: dict) -> list[str]:
    if not results.get("throughput"):
        return []
    lines = [
        "", *text["throughput"].split("\n"), "",
        "| data set | d | numpyro_si params | flowjax params (width) | numpyro_si steps/s |"
        " flowjax steps/s | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in results["throughput"].items():
        lines.append(
            f"| {name} | {row['dim']} | {_fmt(row['si_params'])} |"
            f" {_fmt(row['flowjax_params'])} ({row['flowjax_width']}) |"
            f" {row['si_steps_per_s']:.0f} | {row['flowjax_steps_per_s']:.0f} |"
            f" {row['ratio']:.1f}x |"
        )
    return lines


def series_label(row: dict) -> str:
    """A budget-curve column: the method's label and flowjax's patience if not the main
    table's."""
    label = _label(METHOD_LABELS, row["method"])
    if row.get("patience_fraction") is not None:
        label += f", patience {row['patience_fraction']:.0%} of epochs"
    if row.get("patience_min_steps") is not None:
        label += f", patience ~{row['patience_min_steps']} steps"
    return label


def curves_section(results: dict, text: dict) -> list[str]:
    if not results.get("curves"):
        return []
    lines = ["", *text["curves"].split("\n"), ""]
    for entry in results["curves"].values():
        series = list(dict.fromkeys(series_label(r) for r in entry["rows"]))
        budgets = sorted({r["budget"] for r in entry["rows"]})
        cells = {(r["budget"], series_label(r)): r for r in entry["rows"]}
        title = entry["dataset"] + (f", {entry['curve_train']} training points"
                                    if entry.get("curve_train") else "")
        lines += [
            f"{title} (" + ", ".join(f"`{c}`" for c in entry["commands"]) + "):", "",
            "| budget s | " + " | ".join(series) + " |",
            "| --- |" + " --- |" * len(series),
        ]
        for budget in budgets:
            out = []
            for label in series:
                row = cells.get((budget, label))
                if row is None:
                    out.append("")
                    continue
                cell = f"{row['nll']:.3f} ± {row['nll_se']:.3f}"
                if entry.get("entropy") is not None:
                    cell += f" (gap {row['nll'] - entry['entropy']:+.3f})"
                out.append(cell + f", {row['train_cpu']:.0f} s, {row['steps']} steps")
            lines.append(f"| {budget:.0f} | " + " | ".join(out) + " |")
        lines.append("")
    return lines


def configs_section(results: dict, text: dict) -> list[str]:
    configs = results.get("configs", {})
    if not configs:
        return []
    lines = [
        "", *text["configs"].split("\n"), "",
        "| data set | configuration | params | steps | fit CPU s | held-out NLL | NFE log_prob |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in configs.items():
        rows = entry["configs"]
        best = min(r["nll"] for r in rows.values() if "nll" in r)
        for i, config in enumerate(_ordered(rows, CONFIG_LABELS)):
            row, label, first = rows[config], _label(CONFIG_LABELS, config), name if i == 0 else ""
            if "failed" in row:
                lines.append(f"| {first} | {label} | | | | failed: {row['failed']} | |")
                continue
            nll = f"{row['nll']:.3f} ± {row['nll_se']:.3f}"
            lines.append(
                f"| {first} | {label} | {_fmt(row['params'])} | {row['steps']} | {row['cpu']:.0f} |"
                f" {f'**{nll}**' if row['nll'] == best else nll} | {row['nfe_log_prob']:.1f} |"
            )
    lines.append("")
    for name, entry in configs.items():
        rows, reference = entry["configs"], entry["configs"][REFERENCE_CONFIG]
        ranked = sorted((c for c in _ordered(rows, CONFIG_LABELS) if "nll" in rows[c]),
                        key=lambda c: rows[c]["nll"])
        lines.append(f"- {name}: " + "; ".join(
            f"{_label(CONFIG_LABELS, c).split(' (')[0]} {rows[c]['nll'] - reference['nll']:+.3f}"
            for c in ranked if c != REFERENCE_CONFIG
        ) + " nats against the reference (width 128, depth 3; ranked, best first).")
    return lines


def _config_delta(configs: dict, config: str) -> str:
    """A configuration's change in held-out NLL and field evaluations against the reference
    row, on every data set that measured it."""
    parts = []
    for name, entry in configs.items():
        reference, row = entry["configs"][REFERENCE_CONFIG], entry["configs"].get(config)
        if row is None:
            continue
        if "nll" not in row:
            parts.append(f"{name}: failed")
            continue
        parts.append(f"{name} {row['nll'] - reference['nll']:+.3f} nats, NFE"
                     f" {row['nfe_log_prob']:.0f} vs {reference['nfe_log_prob']:.0f}")
    return "; ".join(parts)


def defaults_section(results: dict, text: dict) -> list[str]:
    """fit's defaults and the measured alternatives, each with the stored numbers."""
    configs = results.get("configs", {})
    if not configs:
        return []
    notes = []
    for name, entry in results.get("solver", {}).items():
        variants = entry["variants"]
        fixed8, loose = variants.get("tsit5_fixed8"), variants.get("tsit5_tol1e-3")
        default = variants[DEFAULT_VARIANT]
        if fixed8 and loose:
            speedup = default["log_prob_per_s"] and (
                fixed8["log_prob_per_s"] / default["log_prob_per_s"])
            notes.append(f"{name}: 8 fixed Tsit5 steps max |change| {fixed8['max_abs_change']:.1e}"
                         f" at {speedup:.1f}x the throughput; tol 1e-3 max |change|"
                         f" {loose['max_abs_change']:.1e}")
    delta = {c: _config_delta(configs, c) for c in CONFIG_LABELS}
    return ["", *text["defaults"].format(delta=delta, solver_notes="; ".join(notes) or "—")
            .split("\n")]


class MixedRunsError(RuntimeError):
    """The main table's rows come from more than one run."""


def runs_of(results: dict) -> dict[str, list[str]]:
    """The runs behind the main table's rows: run id (or, for rows stored before runs had ids,
    the command) -> the data sets with a row from it."""
    runs: dict[str, list[str]] = {}
    for name, entry in results["datasets"].items():
        for row in entry["methods"].values():
            run = row.get("run") or row.get("command", "?")
            if name not in runs.setdefault(run, []):
                runs[run].append(name)
    return runs


def check_one_run(results: dict, allow_mixed: bool) -> list[str]:
    """Refuses (`MixedRunsError`) a main table whose rows come from several runs unless
    `allow_mixed`; then returns a header line naming them."""
    runs = runs_of(results)
    if len(runs) <= 1:
        return []
    if not allow_mixed:
        raise MixedRunsError(
            f"the main table's rows come from {len(runs)} runs; a table's rows must come from"
            " one run. Re-run every data set in one invocation (`--resume` continues an"
            " interrupted one) or render with --allow-mixed-runs."
        )
    return ["", f"The main table's rows come from {len(runs)} runs (rendered with"
            " `--allow-mixed-runs`): " + "; ".join(
                f"`{run}` ({', '.join(names)})" for run, names in runs.items()) + "."]


FLOWJAX_SOURCE = "flowjax `docs/examples/unconditional.ipynb` (danielward27/flowjax@cabcb42)"


def peer_settings() -> list[str]:
    """flowjax's and the BNAF's settings here against their documentation's."""
    rows = [
        ("flowjax", "flows", "coupling and masked autoregressive, 8 layers, MLP width 50 depth"
         " 1, `RationalQuadraticSpline(knots=8, interval=4)`", "masked autoregressive, the same"
         " spline and defaults", FLOWJAX_SOURCE),
        ("flowjax", "data", "whitened, the map folded into log_prob", "standardised",
         FLOWJAX_SOURCE),
        ("flowjax", "training (`fit_to_data`)", "the coupling and MAF rows: Adam 5e-4 (its"
         " default), batches of 512 as every method, patience by `nsi.fit`'s rule (at least"
         " 2000 steps); the docs' row: Adam 1e-3, batches of 100, patience 5 epochs; every row"
         " within the same CPU budget", "Adam 1e-3, batches of 100, patience 5 epochs, at most"
         " 100 epochs", FLOWJAX_SOURCE),
        ("NumPyro BNAF", "flow, training", "`BlockNeuralAutoregressiveTransform`, 2 flows,"
         " hidden factors (16, 16), Adam 1e-3, batches of 512", "`AutoBNAFNormal`: 1 flow,"
         " hidden factors (8, 8), Adam 3e-3 (as a variational guide)",
         "NumPyro `examples/neutra.py` (pyro-ppl/numpyro@e708f34)"),
    ]
    return ["Peer settings, against their documentation's:", "",
            "| peer | setting | used here | the peer's documentation | source |",
            "| --- | --- | --- | --- | --- |",
            *(f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows)]


def render(results: dict, templates: Path = TEMPLATES, allow_mixed: bool = False) -> str:
    """The density section of docs/benchmarks.md (markers included) from `results`, as
    `_density_store.load_all` returns them. Refuses a main table of several runs unless
    `allow_mixed` (`check_one_run`)."""
    text = load_templates(templates)
    mixed = check_one_run(results, allow_mixed)
    loads = [x for e in results["datasets"].values() for r in e["methods"].values()
             for x in r.get("load", [])]
    if loads:
        mixed += ["", f"1-minute load average at the rows' starts and ends: {min(loads):.2f} to"
                  f" {max(loads):.2f} (per row in `docs/figures/density/results.json`)."]
    lines = [START, *header(results, text), *mixed, "", *peer_settings(), "",
             *main_table(results), "",
             *reference_values(results), "", *text["goals"].split("\n"), "",
             *goal_table(results), "", *goal_summary(results)]
    if results.get("analysis"):  # docs/figures/density/analysis.md
        lines += ["", results["analysis"].strip()]
    lines += [*solver_section(results, text), *throughput_section(results, text),
              *curves_section(results, text), *configs_section(results, text),
              *defaults_section(results, text), "", END]
    return "\n".join(lines)


def replace_region(page: str, section: str) -> str:
    """`page` with its density region replaced by `section` (appended if it has none)."""
    if START in page and END in page:
        start, end = page.index(START), page.index(END) + len(END)
        return page[:start] + section + page[end:]
    return page.rstrip("\n") + "\n\n" + section + "\n"


def write_docs(results: dict, path: Path = DOCS, allow_mixed: bool = False) -> None:
    page = path.read_text() if path.exists() else "# Benchmarks\n"
    write_text(path, replace_region(page, render(results, allow_mixed=allow_mixed)))


# ----------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------


def save_figure(name: str, test: np.ndarray, samples: dict[str, np.ndarray], path: Path):
    """Held-out points of data set `name` next to every method's samples (by method id)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {"held-out data": test,
              **{_label(METHOD_LABELS, m): samples[m] for m in _ordered(samples, METHOD_LABELS)}}
    n, dim = len(panels), test.shape[1]
    if name == "digits":
        fig, axes = plt.subplots(1, n, figsize=(1.9 * n, 2.1))
        for ax, (title, x) in zip(np.atleast_1d(axes), panels.items(), strict=True):
            grid = np.clip(x[:16], 0, 1).reshape(4, 4, 8, 8).transpose(0, 2, 1, 3).reshape(32, 32)
            ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    else:
        fig, axes = plt.subplots(1, n, figsize=(1.9 * n, 2.1), sharex=True, sharey=True)
        lo = np.percentile(test[:, :2], 0.5, axis=0)
        hi = np.percentile(test[:, :2], 99.5, axis=0)
        pad = 0.1 * (hi - lo)
        bounds = [[lo[0] - pad[0], hi[0] + pad[0]], [lo[1] - pad[1], hi[1] + pad[1]]]
        for ax, (title, x) in zip(np.atleast_1d(axes), panels.items(), strict=True):
            ax.hist2d(x[:, 0], x[:, 1], bins=60, range=bounds, cmap="Blues")
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        if dim > 2:
            fig.suptitle(f"{name}: coordinates 1 and 2 of {dim}", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=60)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if docs/benchmarks.md is not up to date")
    parser.add_argument("--allow-mixed-runs", action="store_true",
                        help="render a main table whose rows come from several runs, naming"
                        " them (refused without it)")
    args = parser.parse_args(argv)
    page = DOCS.read_text()
    rendered = replace_region(page, render(load_all(), allow_mixed=args.allow_mixed_runs))
    if args.check:
        if rendered != page:
            raise SystemExit(f"{DOCS}: the density section is out of date with the stored"
                             " results; run benchmarks/density_report.py")
        print(f"{DOCS}: up to date")
        return
    write_text(DOCS, rendered)
    print(f"wrote {DOCS}")


if __name__ == "__main__":
    main()
