"""A recipe scores its deployed artifacts on the model's own task (issue 18: no silent
wrong results): a regressor's int8 artifact is reported as MSE/MAE, never as an argmax
"accuracy" of its one-unit output."""

import json

import numpy as np
import pytest

from compress.recipes import run_recipe


@pytest.fixture(scope="module")
def regression_files(tmp_path_factory):
    import keras

    from compress import training

    training.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 6)).astype("float32")
    y = (x @ rng.normal(size=6) + 0.1 * rng.normal(size=600)).astype("float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)], name="reg")
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    model.fit(x[:400], y[:400], epochs=20, batch_size=32, verbose=0)
    folder = tmp_path_factory.mktemp("recipe_tasks")
    np.savez(folder / "reg.npz", x_train=x[:400], y_train=y[:400], x_test=x[400:],
             y_test=y[400:])
    model.save(folder / "reg.keras")
    return folder


def test_a_regressors_artifact_is_scored_as_mse_not_accuracy(regression_files, tmp_path):
    folder = regression_files
    recipe = {"name": "reg", "model": str(folder / "reg.keras"),
              "data": f"npz:{folder / 'reg.npz'}", "seed": 0,
              "steps": [{"quantize": {"mode": "int8"}}]}
    result = run_recipe(recipe, output=tmp_path / "out")
    after = result["steps"][0]["after"]
    assert "accuracy" not in after
    before = result["steps"][0]["before"]
    assert "accuracy" not in before and before["mse"] > 0
    # int8 of a healthy regressor stays close to its float MSE; the check can fail:
    # a constant output would score the variance of y, far above it
    assert after["mse"] < 1.5 * before["mse"] + 0.05
    assert after["mse"] < 0.5 * float(np.var(np.load(folder / "reg.npz")["y_test"]))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "mse" in report["steps"][0]["after"]


def test_the_cli_takes_regression_targets_from_npz(regression_files, tmp_path, cli):
    """Fractional or negative targets in an .npz are regression targets, not refused as
    "labels must be non-negative integers": the CLI fine-tunes a regressor on its MSE."""
    folder = regression_files
    out = tmp_path / "pruned.keras"
    result = cli("prune", folder / "reg.keras", "--data", f"npz:{folder / 'reg.npz'}",
                 "--sparsity", "0.5", "--epochs", "2", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert "accuracy" not in report["after"] and report["after"]["mse"] > 0
    assert "regression" in report["pass"].get("task", "") or "mse" in report["before"]


def test_regression_targets_for_a_classifier_are_refused(regression_files, tmp_path, cli):
    import keras

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
    model.save(tmp_path / "clf.keras")
    out = tmp_path / "x.keras"
    result = cli("prune", tmp_path / "clf.keras", "--data",
                 f"npz:{regression_files / 'reg.npz'}", "--sparsity", "0.5", "--epochs", "1",
                 "-o", out)
    assert result.exit_code == 1
    assert "error:" in result.output and "Traceback" not in result.output
    assert not out.exists()
