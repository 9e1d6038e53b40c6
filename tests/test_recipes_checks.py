"""compress.recipes.checks: a recipe is checked without TensorFlow, callbacks included."""

import json
import subprocess
import sys

_CHECK = """
import json, sys
from compress.errors import CompressError
from compress.recipes import load_recipe
try:
    recipe = load_recipe(sys.argv[1])
    outcome = sorted(recipe["baseline"]["callbacks"])
except CompressError as exc:
    outcome = str(exc)
print(json.dumps([outcome, "keras" in sys.modules, "tensorflow" in sys.modules]))
"""

RECIPE = """model: lenet300
data: digits
baseline: {epochs: 1, callbacks: {cosine: {warmup_epochs: 1}, early_stopping: {patience: 2}}}
steps:
  - cascade: {epochs: 1, callbacks: {plateau: {patience: 1, factor: %s}}}
"""


def _check(tmp_path, factor):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE % factor)
    proc = subprocess.run([sys.executable, "-c", _CHECK, str(path)], capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(proc.stdout)


def test_a_recipe_with_callbacks_is_checked_without_keras(tmp_path):
    assert _check(tmp_path, 0.5) == [["cosine", "early_stopping"], False, False]


def test_a_bad_callback_option_is_refused_without_keras(tmp_path):
    assert _check(tmp_path, 1.5) == [
        "steps[0].cascade.callbacks.plateau.factor: must be in (0.0, 1.0), got 1.5",
        False, False]


def test_a_missing_file_beside_a_recipe_elsewhere_names_where_paths_are_read(
        tmp_path, monkeypatch):
    # A recipe kept next to its model, run from another folder: "reg.keras: no such file"
    # alone did not say that relative paths are read from the working directory.
    import pytest

    from compress.errors import CompressError
    from compress.recipes import load_recipe

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "reg.keras").write_bytes(b"")
    (folder / "r.yaml").write_text("model: reg.keras\nsteps:\n  - prune: {sparsity: 0.5}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CompressError) as err:
        load_recipe("project/r.yaml")
    assert str(err.value).startswith("model: reg.keras: no such file")
    assert str(err.value).endswith("; reg.keras is in the recipe's folder (project), but "
                                   "relative paths in a recipe are read from the working "
                                   f"directory ({tmp_path})")
    (folder / "reg.keras").unlink()  # missing everywhere: the message stays as it was
    with pytest.raises(CompressError, match=r"no such file \(and not a builder: [^;]*$"):
        load_recipe("project/r.yaml")
    # the data file too, refused when the run reads it (before TensorFlow)
    from compress.recipes import run_recipe

    (folder / "houses.csv").write_text("a,b\n1,2\n")
    (folder / "d.yaml").write_text("model: lenet300\ndata: houses.csv\nsteps:\n"
                                   "  - prune: {sparsity: 0.5}\n")
    with pytest.raises(CompressError, match=r"^data: houses.csv: no such data file; "
                       r"houses.csv is in the recipe's folder \(project\)"):
        run_recipe("project/d.yaml", tmp_path / "out", start=lambda: 1 / 0)
    assert not (tmp_path / "out").exists()
