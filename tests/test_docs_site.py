"""The documentation site: it builds with no warning (broken links and anchors, unresolved API
references fail `mkdocs build --strict`), and every public name has an API reference entry.

The build here leaves out markdown-exec, so the pages' code blocks are shown, not run (they train
flows); `make docs` runs them."""

import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = ("numpyro_si", "numpyro_si.inference", "numpyro_si.diagnostics",
                  "numpyro_si.oracle", "numpyro_si.datasets")


def public_names() -> list[str]:
    import importlib

    names = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        exported = getattr(module, "__all__", None) or [k for k in dir(module) if k[0] != "_"]
        names += [f"{module_name}.{k}" for k in exported
                  if not isinstance(getattr(module, k), types.ModuleType)
                  or f"{module_name}.{k}" == "numpyro_si.inference.adaptive"]
    return names


def test_every_public_name_has_a_reference_entry():
    entries = {line.removeprefix("::: ").strip()
               for page in (ROOT / "docs" / "api").glob("*.md")
               for line in page.read_text().splitlines() if line.startswith("::: ")}
    missing = [name for name in public_names() if name not in entries]
    assert not missing, f"public names with no `::: name` entry in docs/api/: {missing}"


def test_the_site_builds_with_no_warning(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    import yaml
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config["plugins"] = [p for p in config["plugins"] if p != "markdown-exec"]
    config["docs_dir"] = str(ROOT / "docs")
    config["plugins"] = [
        {"mkdocstrings": dict(p["mkdocstrings"], handlers={"python": dict(
            p["mkdocstrings"]["handlers"]["python"], paths=[str(ROOT)])})}
        if isinstance(p, dict) and "mkdocstrings" in p else p for p in config["plugins"]]
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(path),
         "-d", str(tmp_path / "site")],
        capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    html = (tmp_path / "site" / "api" / "training" / "index.html").read_text()
    assert 'id="numpyro_si.fit"' in html
