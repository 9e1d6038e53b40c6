"""The notebooks run clean from their sources (quick sizes through the parameter cell)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "notebooks"))
SOURCES = sorted((ROOT / "notebooks" / "src").glob("*.py"))


def test_every_source_has_a_committed_notebook_with_outputs():
    import nbformat

    for src in SOURCES:
        nb = nbformat.read(ROOT / "notebooks" / f"{src.stem}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(c.get("execution_count") for c in code), src.stem
        assert any(o.get("output_type") == "display_data" for c in code for o in c.outputs), \
            f"{src.stem}: committed without its plots"


@pytest.mark.slow
@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_notebook_executes(src, tmp_path, monkeypatch):
    import nbformat
    from build import build

    # The notebooks write into tempfile.mkdtemp() for a reader to look at afterwards; the
    # kernel inherits TMPDIR, so under test those folders go to pytest's tmp_path, not /tmp.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    out = build(src.stem, quick=True, out_dir=tmp_path, timeout=900)
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.get("output_type") == "error"]
    assert errors == []
    assert any(c.cell_type == "code" and c.outputs for c in nb.cells)
    if "mkdtemp(" in src.read_text():
        assert list(scratch.glob("compress-*")), "the notebook's scratch folder went elsewhere"
