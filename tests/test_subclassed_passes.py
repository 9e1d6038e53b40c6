"""A subclassed Keras model (its own ``call``, registered, saved to ``.keras``) through the
passes that tests/test_multi_io.py leaves out: distill, k-means sharing, OBD pruning with
the layer estimator, and a recipe whose model is the subclassed file (issue 19).

Each path either writes a model that loads back and reports an accuracy in [0, 1], or
refuses in one line, exit 1, nothing written.
"""

from __future__ import annotations

import json

import pytest
from _models import load_source, subclassed_source

SUBMLP = subclassed_source("subclassed_passes_test", "SubMLP", classes=10, hidden=24)
KEY = "subclassed_passes_test>SubMLP"


@pytest.fixture(scope="module")
def sub(tmp_path_factory):
    """``(model path, module path)`` of a SubMLP trained briefly on digits."""
    import keras

    from compress.data import load_data

    d = tmp_path_factory.mktemp("subclassed")
    module = d / "submlp_module.py"
    namespace = load_source(SUBMLP, module)
    try:
        keras.utils.set_random_seed(0)
        ds = load_data("digits", seed=0)
        model = namespace["SubMLP"]()
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(ds.x_train, ds.y_train, epochs=3, verbose=0)
        model.save(d / "sub.keras")
    finally:
        keras.saving.get_custom_objects().pop(KEY, None)
    return d / "sub.keras", module


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):])


def _loads_back(path, module):
    import keras

    from compress import io

    io.import_modules([str(module)])
    try:
        model = io.load_model(path)
        assert model.count_params() > 0
    finally:
        keras.saving.get_custom_objects().pop(KEY, None)


def _accuracy(report) -> float:
    acc = report["accuracy"]
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0
    return acc


def test_distill_refuses_a_width_student_and_takes_a_student_file(sub, cli, tmp_path):
    model, module = sub
    out = tmp_path / "s.keras"
    width = cli("distill", model, "-o", out, "--data", "digits", "--width", "0.5",
                "--epochs", "1", "--import", module)
    assert width.exit_code == 1 and not out.exists()
    lines = [ln for ln in width.output.strip().splitlines() if not ln.startswith("note:")]
    assert len(lines) == 1  # the wrapping note, then the one-line refusal
    assert "subclassed" in width.output and "--student" in width.output

    import keras

    student = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(8, activation="relu"),
                                keras.layers.Dense(10, activation="softmax")])
    student.save(tmp_path / "student.keras")
    r = _json(cli("distill", model, "-o", out, "--data", "digits", "--student",
                  tmp_path / "student.keras", "--epochs", "1", "--no-baseline",
                  "--import", module, "--json", "-q"))
    assert out.exists() and r["pass"]["student_params"] < r["pass"]["teacher_params"]
    for report in r["reports"]:
        _accuracy(report)
    _loads_back(out, module)


def test_kmeans_share_on_a_subclassed_model(sub, cli, tmp_path):
    model, module = sub
    out = tmp_path / "k.keras"
    r = cli("share", model, "-o", out, "--data", "digits", "--method", "kmeans",
            "--clusters", "8", "--epochs", "0", "--import", module, "--json", "-q")
    r = _json(r)
    assert abs(_accuracy(r["after"]) - _accuracy(r["before"])) < 0.3
    _loads_back(out, module)


def test_obd_layer_estimator_on_a_subclassed_model(sub, cli, tmp_path):
    model, module = sub
    out = tmp_path / "o.keras"
    r = _json(cli("prune", model, "-o", out, "--data", "digits", "--method", "obd",
                  "--estimator", "layer", "--sparsity", "0.5", "--epochs", "0",
                  "--import", module, "--json", "-q"))
    assert r["after"]["sparsity"] > 0.4
    _accuracy(r["after"])
    _loads_back(out, module)


def test_recipe_runs_a_subclassed_model_file(sub, cli, tmp_path):
    model, module = sub
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {model}\nimport: [{module}]\ndata: digits\nseed: 0\n"
                      "steps:\n  - prune: {method: magnitude, sparsity: 0.5}\n")
    out = tmp_path / "run"
    result = cli("run", recipe, "-o", out, "--unsafe", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    step = report["steps"][0]
    assert "error" not in step, step
    _accuracy(step["after"])
    _loads_back(step["artifact"], module)
