"""Build the notebooks from their sources and execute them, keeping the outputs.

Sources are plain Python in ``notebooks/src/NAME.py`` with ``# %%`` cell markers
(``# %% [markdown]`` for text cells, whose lines start with ``# ``). The cell after
``# %% parameters`` holds the sizes; the test suite runs each notebook with
``QUICK = True`` injected there, the committed notebooks are executed in full.

Usage: ``python notebooks/build.py [--quick] [NAME ...]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse(source: str):
    """Split percent-format source into nbformat cells."""
    import nbformat

    cells, kind, lines, tags = [], None, [], []

    def flush():
        if kind is None:
            return
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#")
                             for line in text.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(text))
        elif text:
            cell = nbformat.v4.new_code_cell(text)
            if tags:
                cell.metadata["tags"] = list(tags)
            cells.append(cell)

    for line in source.splitlines():
        if line.startswith("# %%"):
            flush()
            rest = line[4:].strip()
            kind = "markdown" if rest == "[markdown]" else "code"
            tags = ["parameters"] if rest == "parameters" else []
            lines = []
        else:
            lines.append(line)
    flush()
    return cells


def build(name: str, quick: bool, execute: bool = True, out_dir: Path = HERE,
          timeout: int = 1200) -> Path:
    import nbformat
    from nbclient import NotebookClient

    src = HERE / "src" / f"{name}.py"
    nb = nbformat.v4.new_notebook()
    nb.cells = parse(src.read_text())
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    if quick:
        for cell in nb.cells:
            if "parameters" in cell.metadata.get("tags", []):
                cell.source += "\nQUICK = True  # injected by the test suite"
    if execute:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(HERE)}}).execute()
    out = out_dir / f"{name}.ipynb"
    nbformat.write(nb, out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    names = args.names or sorted(p.stem for p in (HERE / "src").glob("*.py"))
    for name in names:
        print(f"building {name}", file=sys.stderr, flush=True)
        build(name, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
