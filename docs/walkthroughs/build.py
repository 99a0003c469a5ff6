"""Build the walkthrough notebooks from their sources and run them, keeping the outputs.

Each walkthrough is written as `src/NN_slug.py` in the "percent" format: `# %% [markdown]` starts a
markdown cell (each line prefixed with `# `), `# %%` starts a code cell. This script turns a source
into `NN_slug.ipynb` beside this file and executes it in full mode (working directory: this folder),
so the saved notebook shows its figures when read on the repository's web page.

    python docs/walkthroughs/build.py                 # every walkthrough
    python docs/walkthroughs/build.py 01_convolution  # one (name with or without .py)
    python docs/walkthroughs/build.py --no-run 01_convolution   # convert only (no outputs)

`tests/test_walkthroughs.py` runs every notebook again in fast mode (NNBOX_FAST=1) and checks that
its cells still equal its source.
"""
import argparse
import os
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
MARKDOWN_MARK = "# %% [markdown]"
CODE_MARK = "# %%"


def parse_cells(text):
    """Split a percent-format source into [(kind, source)] with kind "markdown" or "code"."""
    cells, kind, lines = [], None, []

    def close():
        if kind is not None:
            body = "\n".join(lines).strip("\n")
            if kind == "markdown":
                body = "\n".join(_strip_comment(line) for line in body.split("\n"))
            if body.strip():
                cells.append((kind, body))

    for line in text.split("\n"):
        stripped = line.rstrip()
        if stripped == MARKDOWN_MARK or stripped == CODE_MARK:
            close()
            kind, lines = ("markdown" if stripped == MARKDOWN_MARK else "code"), []
        elif kind is None:
            if stripped:
                raise ValueError(f"text before the first '# %%' cell marker: {line!r}")
        else:
            lines.append(line)
    close()
    if not cells:
        raise ValueError("no cells: start each cell with '# %%' or '# %% [markdown]'")
    return cells


def _strip_comment(line):
    if line.startswith("# "):
        return line[2:]
    if line.strip() == "#":
        return ""
    raise ValueError(f"a markdown line must start with '# ' (or be a lone '#'): {line!r}")


def to_notebook(cells):
    nb = nbformat.v4.new_notebook()
    make = {"markdown": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
    nb.cells = [make[kind](source) for kind, source in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb, fast=False, timeout=1200):
    """Run `nb` in place with this folder as working directory; NNBOX_FAST=1 in fast mode."""
    from nbclient import NotebookClient

    previous = os.environ.get("NNBOX_FAST")
    os.environ["NNBOX_FAST"] = "1" if fast else "0"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(HERE)}}).execute()
    finally:
        if previous is None:
            os.environ.pop("NNBOX_FAST", None)
        else:
            os.environ["NNBOX_FAST"] = previous
    return nb


def source_path(name):
    path = SOURCES / (name if name.endswith(".py") else name + ".py")
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(SOURCES.glob("*.py"))) or "none"
        raise SystemExit(f"no walkthrough source {path} (known: {known})")
    return path


def build(source, run=True):
    nb = to_notebook(parse_cells(source.read_text()))
    if run:
        execute(nb)
    target = HERE / (source.stem + ".ipynb")
    nbformat.write(nb, target)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="walkthroughs to build (default: all)")
    parser.add_argument("--no-run", action="store_true", help="convert only, without executing")
    args = parser.parse_args(argv)
    sources = [source_path(n) for n in args.names] or sorted(SOURCES.glob("*.py"))
    for source in sources:
        target = build(source, run=not args.no_run)
        print(f"{source.relative_to(HERE)} -> {target.name} ({target.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    sys.exit(main())
