"""The docs stay honest: a short README, every analysis on the generated page, a clean notebook."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

from kn_lens.experiments import ANALYSES

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "tutorial.ipynb"


def generated() -> ModuleType:
    """docs/hooks/generated.py, the mkdocs hook that writes the generated pages."""
    spec = importlib.util.spec_from_file_location(
        "docs_hooks_generated", REPO / "docs" / "hooks" / "generated.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_is_at_most_150_lines():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail to docs/"


def test_readme_test_command_is_the_one_ci_runs():
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if "pytest -q" in line]
    command = next(line for line in ci if "pip install" in line)
    assert command in (REPO / "README.md").read_text(encoding="utf-8").splitlines()


def test_every_analysis_is_on_the_generated_page():
    page = generated().analyses_markdown()
    for name, analysis in ANALYSES.items():
        assert f"## `{name}`" in page, f"the analyses page lacks a section for {name}"
        assert analysis.title in page
    assert "<!-- generated: analyses -->" in (REPO / "docs" / "analyses.md").read_text()


def test_the_hook_fills_in_the_marker():
    mod = generated()
    out = mod.on_page_markdown("# A\n\n<!-- generated: cli -->\n", None, None, None)
    assert "<!-- generated" not in out and "kn-lens reproduce" in out


def test_notebook_is_valid_json_without_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4 and nb["cells"]
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"cell {i} has outputs: clear them before committing"
            assert cell.get("execution_count") is None, f"cell {i} has an execution count"
