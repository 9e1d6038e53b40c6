"""The pass registry: one declaration per pass, every front-end derived from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compress import passes
from compress.errors import CompressError
from compress.options import Option, Schema

BUILT_IN = ["train", "export", "prune", "share", "quantize", "distill", "cascade"]


def test_every_pass_is_declared_once_and_found():
    assert sorted(passes.names()) == sorted(BUILT_IN)
    for spec in passes.all_passes():
        assert isinstance(spec.schema, Schema) and spec.schema.name == spec.name
        assert callable(spec.resolve())
        defaults = spec.schema.validate({})
        assert isinstance(spec.data_reasons(defaults), list)
        if spec.produces == "artifact":
            assert spec.artifact_suffix(defaults).startswith(".")


@pytest.mark.parametrize("name, options, reasons", [
    ("prune", {}, []),
    ("prune", {"scope": "sensitivity"}, ["scope sensitivity"]),
    ("prune", {"method": "obd", "epochs": 2}, ["method obd", "epochs 2"]),
    ("share", {"method": "kmeans"}, []),
    ("share", {"epochs": 1}, ["epochs 1"]),
    ("quantize", {"mode": "dynamic"}, []),
    ("quantize", {}, ["mode int8"]),
    ("export", {}, []),
    ("distill", {}, ["distillation"]),
])
def test_needs_data_is_a_function_of_the_options(name, options, reasons):
    spec = passes.get(name)
    assert spec.data_reasons(spec.schema.validate(options)) == reasons


def test_one_data_refusal_worded_for_each_front_end():
    spec = passes.get("prune")
    opts = spec.schema.validate({"method": "obd"})
    with pytest.raises(CompressError, match=r"^--method obd needs --data \(for example"):
        spec.require_data(opts, None, flags=True)
    with pytest.raises(CompressError, match=r"^steps\[1\]\.prune: method obd needs data"):
        spec.require_data(opts, None, where="steps[1].prune")
    spec.require_data(spec.schema.validate({}), None, flags=True)  # data-free: no error


def test_a_pass_module_is_found_by_its_declaration_alone(tmp_path, monkeypatch):
    # A new pass is one module: the registry finds it by its `PASS = Pass(` line.
    package = tmp_path / "plugin_pkg"
    (package / "cli").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cli" / "__init__.py").write_text("PASS = Pass(  # never imported\n")
    (package / "helpers.py").write_text("raise RuntimeError('modules without PASS are not "
                                        "imported')\n")
    (package / "scale.py").write_text(
        "from compress.options import Option, Schema\n"
        "from compress.passes import Pass\n\n"
        "SCALE_OPTIONS = Schema('scale2', [Option('factor', float, 1.0, 'x')])\n\n\n"
        "def scale(model, data=None, *, verbose=0, **options):\n"
        "    return model, SCALE_OPTIONS.validate(options)\n\n\n"
        "PASS = Pass('scale2', 'scales', scale, SCALE_OPTIONS)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = passes.discover(package)
    assert [p.name for p in found] == ["scale2"]
    assert found[0].run("model", factor=2) == ("model", {"factor": 2.0})


def test_unknown_pass_is_one_line_naming_the_known_ones():
    with pytest.raises(CompressError, match="unknown pass .*prune"):
        passes.get("prun")


def test_the_python_api_is_derived_from_the_registry():
    import compress

    assert callable(compress.share) and compress.share is passes.get("share").resolve()
    assert compress.prune is passes.get("prune").resolve()
    assert compress.quantize is passes.get("quantize").resolve()
    names = dir(compress)
    assert {"prune", "share", "quantize", "distill"} <= set(names)
    assert len(names) == len(set(names)) and "importlib" not in names  # each once, no imports


def test_cli_commands_are_derived_from_the_registry(cli):
    from compress.cli import command_names, training_command_names

    listed = cli("--help").output
    for spec in passes.all_passes():
        assert (spec.name in command_names()) == spec.cli
        if spec.cli:
            assert f"  {spec.name} " in listed
        assert (spec.name in training_command_names()) == (spec.cli and spec.trains)


def test_docs_table_is_the_registry():
    text = (Path(__file__).resolve().parent.parent / "docs" / "developing.md").read_text()
    assert passes.markdown_table() in text, "regenerate the table with passes.markdown_table()"


# A trivial pass, declared the way a new pass module would be: schema, function, PASS.
SCALE_OPTIONS = Schema("scale", [
    Option("factor", float, 1.0, "multiply every kernel by this", low=0.0),
    Option("epochs", int, 0, "pretend fine-tuning epochs (needs data)", low=0),
])


def scale(model, data=None, *, verbose=0, **options):
    """Multiply every kernel of a copy of ``model`` by ``factor``."""
    from compress import training

    opts = SCALE_OPTIONS.validate(options)
    new = training.copy_model(model)
    for layer in new.layers:
        if getattr(layer, "kernel", None) is not None:
            layer.kernel.assign(layer.kernel * opts["factor"])
    return new, {"factor": opts["factor"]}


def _scale_needs_data(opts):
    return [f"epochs {opts['epochs']}"] if opts["epochs"] else []


SCALE = passes.Pass("scale", "multiply every kernel by a constant", scale, SCALE_OPTIONS,
                    needs_data=_scale_needs_data, order=90)


@pytest.fixture
def scale_pass():
    passes.register(SCALE)
    yield SCALE
    passes.unregister("scale")
    import compress

    vars(compress).pop("scale", None)


def test_a_new_pass_needs_only_its_declaration(scale_pass, cli, mlp_file, tmp_path):
    import keras

    import compress

    path, _ = mlp_file
    # Python API
    assert compress.scale is scale
    # CLI: a generic command from the schema, with the registry's data rule
    assert "scale" in cli("--help").output
    assert "--factor" in cli("scale", "--help").output
    refused = cli("scale", path, "-o", tmp_path / "x.keras", "--epochs", "2")
    assert refused.exit_code == 1 and "--epochs 2 needs --data" in refused.stderr
    out = tmp_path / "scaled.keras"
    done = cli("scale", path, "-o", out, "--factor", "0.5", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["pass"] == {"factor": 0.5}
    original = keras.models.load_model(path)
    scaled = keras.models.load_model(out)
    np.testing.assert_allclose(scaled.get_layer("fc1").kernel.numpy(),
                               0.5 * original.get_layer("fc1").kernel.numpy(), rtol=1e-6)
    # Recipes: a step kind, checked and run like the built-in ones
    from compress.recipes import load_recipe, run_recipe

    recipe = {"model": str(path), "steps": [{"scale": {"factor": 2.0}}]}
    assert load_recipe(recipe)["steps"][0]["scale"]["factor"] == 2.0
    with pytest.raises(CompressError, match=r"steps\[0\]\.scale: epochs 3 needs data"):
        load_recipe({"model": str(path), "steps": [{"scale": {"epochs": 3}}]})
    result = run_recipe(recipe, output=tmp_path / "run")
    assert result["steps"][0]["info"] == {"factor": 2.0}
    assert Path(result["steps"][0]["artifact"]).exists()


def test_a_script_that_first_imports_a_pass_module_keeps_every_pass():
    """``from compress.export import ...`` as a script's first line read the registry
    while compress.export was half imported (its ``from compress import io`` went through
    the package's ``__getattr__``): ``export`` was then missing from the registry, and
    ``compress export`` from the CLI in that process was "No such command"."""
    import subprocess
    import sys

    code = ("from compress.export import export_artifact\n"
            "from compress import passes\n"
            "print(' '.join(passes.names()))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert "export" in proc.stdout.split()
