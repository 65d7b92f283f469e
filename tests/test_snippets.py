"""Every Python snippet of README.md and the documentation pages runs as written.

The blocks of one page run in order in one fresh interpreter (later blocks use earlier names),
with training budgets cut: `nsi.fit` and `nsi.train` take at most `STEPS` optimiser steps and
`adaptive.run` a few short rounds. Blocks marked `exec="on"` are run by the site's build
(`make docs`, markdown-exec) instead, with their full budgets.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
STEPS = 60

PRELUDE = f'''
import functools
import matplotlib
matplotlib.use("Agg")
import numpyro_si as nsi
from numpyro_si.inference import adaptive

def _capped(function, **caps):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        for name, cap in caps.items():
            kwargs[name] = min(kwargs.get(name, cap), cap)
        kwargs["show_progress"] = False
        return function(*args, **kwargs)
    return wrapper

nsi.fit = _capped(nsi.fit, num_steps={STEPS})
nsi.train = _capped(nsi.train, num_steps={STEPS})
adaptive.run = _capped(adaptive.run, n_warmup_rounds=2, n_warmup_steps=20, n_production=20,
                       fit_steps={STEPS})
'''

FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def snippets(page: Path) -> list[str]:
    return [code for options, code in FENCE.findall(page.read_text()) if "exec=" not in options]


PAGES_WITH_SNIPPETS = [p for p in PAGES if snippets(p)]


def test_the_pages_have_snippets():
    names = {p.name for p in PAGES_WITH_SNIPPETS}
    assert {"README.md", "guide.md", "index.md"} <= names


@pytest.mark.parametrize("page", PAGES_WITH_SNIPPETS, ids=lambda p: str(p.relative_to(ROOT)))
def test_snippets_run_as_written(page, tmp_path):
    script = tmp_path / "snippets.py"
    blocks = snippets(page)
    script.write_text(PRELUDE + "\n".join(
        f"\n# ---- block {i + 1} of {page.name}\n{code}" for i, code in enumerate(blocks)))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, f"{page.name}:\n{result.stderr[-4000:]}"
