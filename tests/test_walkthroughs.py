"""The teaching walkthroughs (docs/walkthroughs/*.ipynb) run end to end in fast mode and match their sources."""
import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="install the test extra: pip install -e .[test]")
pytest.importorskip("nbclient", reason="install the test extra: pip install -e .[test]")

WALKTHROUGHS = Path(__file__).resolve().parents[1] / "docs" / "walkthroughs"
NOTEBOOKS = sorted(WALKTHROUGHS.glob("[0-9][0-9]_*.ipynb"))


def _builder():
    spec = importlib.util.spec_from_file_location("walkthrough_build", WALKTHROUGHS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _builder()


def test_parse_cells_splits_markdown_and_code():
    text = "# %% [markdown]\n# # Title\n#\n# Some $x^2$.\n# %%\nx = 1\n\n# %%\nprint(x)\n"
    assert build.parse_cells(text) == [("markdown", "# Title\n\nSome $x^2$."), ("code", "x = 1"),
                                       ("code", "print(x)")]


def test_parse_cells_rejects_markdown_without_comment_prefix():
    with pytest.raises(ValueError, match="must start with '# '"):
        build.parse_cells("# %% [markdown]\nplain text\n")


def test_every_source_has_its_notebook():
    sources = {p.stem for p in (WALKTHROUGHS / "src").glob("*.py")}
    notebooks = {p.stem for p in NOTEBOOKS}
    assert sources == notebooks, "build the missing notebooks: python docs/walkthroughs/build.py NAME"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_matches_its_source(path):
    saved = nbformat.read(path, as_version=4)
    cells = build.parse_cells((WALKTHROUGHS / "src" / (path.stem + ".py")).read_text())
    assert [(c.cell_type, c.source) for c in saved.cells] == cells, (
        f"{path.name} is out of date: python docs/walkthroughs/build.py {path.stem}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_was_saved_with_its_outputs(path):
    saved = nbformat.read(path, as_version=4)
    code = [c for c in saved.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), (
        f"{path.name} was saved without running: python docs/walkthroughs/build.py {path.stem}")
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name} was saved with an error output: {errors[0].get('ename')}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path):
    nb = nbformat.read(path, as_version=4)
    build.execute(nb, fast=True, timeout=300)  # raises CellExecutionError naming the failing cell
