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


def _build(config_path: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config_path),
         "-d", str(site)],
        capture_output=True, text=True, cwd=ROOT,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.slow
def test_the_site_builds_with_its_pages_code_run(tmp_path):
    """`make docs`: every `exec="on"` block of the tutorials and getting-started runs (a failing
    block fails the strict build) and its figures are in the pages."""
    pytest.importorskip("markdown_exec", reason="the docs extra: pip install -e '.[docs]'")
    result = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    for page in ("getting-started", "tutorials/posterior-as-prior"):
        assert "data:image/png;base64" in (tmp_path / "site" / page / "index.html").read_text()


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
    result = _build(path, tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    html = (tmp_path / "site" / "api" / "training" / "index.html").read_text()
    assert 'id="numpyro_si.fit"' in html
