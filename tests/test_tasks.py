"""The model's own task (compress/task.py) in the passes, reports and checks, and the
Pruning callback beside EarlyStopping: the failures of issue 18, each reproduced."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from compress.errors import CompressError


def _dataset(x, y, name="reg"):
    from compress.data import Dataset

    n = len(x)
    te, va = n // 5, n // 5 + n // 10
    return Dataset(name=name, x_train=x[va:], y_train=y[va:], x_val=x[te:va], y_val=y[te:va],
                   x_test=x[:te], y_test=y[:te], num_classes=0)


@pytest.fixture(scope="module")
def diabetes():
    """scikit-learn's diabetes regression (offline), standardised; targets in ~[-2, 3]."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    x = ((x - x.mean(0)) / x.std(0)).astype("float32")[idx]
    y = ((y - y.mean()) / y.std()).astype("float32")[idx]
    return _dataset(x, y, "diabetes")


def _regressor(width=32, compile_loss=None):
    import keras

    from compress import training

    training.set_seed(0)
    model = keras.Sequential([keras.Input((10,)),
                              keras.layers.Dense(width, activation="relu", name="fc1"),
                              keras.layers.Dense(width, activation="relu", name="fc2"),
                              keras.layers.Dense(1, name="out")], name="reg")
    if compile_loss:
        model.compile(keras.optimizers.Adam(1e-2), compile_loss, metrics=["mae"])
    return model


@pytest.fixture(scope="module")
def regressor_file(tmp_path_factory, diabetes):
    """A trained regression MLP saved with its loss (mse), as a user's file would be."""
    model = _regressor(compile_loss="mse")
    model.fit(diabetes.x_train, diabetes.y_train, epochs=30, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("tasks") / "regressor.keras"
    model.save(path)
    return path


def test_a_file_with_a_loss_loads_compiled_and_its_task_is_its_own(regressor_file, tmp_path):
    from compress import io
    from compress.task import resolve

    model = io.load_model(regressor_file)
    assert model.compiled
    task = resolve(model)
    assert (task.kind, task.loss_name, task.source) == ("regression", "mean_squared_error",
                                                        "model")
    bare = _regressor()
    bare.save(tmp_path / "bare.keras")
    assert not io.load_model(tmp_path / "bare.keras").compiled  # no loss: stays uncompiled
    assert resolve(io.load_model(tmp_path / "bare.keras")).source == "inferred"


def test_a_logits_model_keeps_its_compiled_metric_objects_and_says_logits(tmp_path):
    """keras.io's binary classifier: ``Dense(1)`` logits compiled with
    ``BinaryCrossentropy(from_logits=True)`` and ``metrics=[BinaryAccuracy(name="acc")]``.
    The metric object was dropped ("metrics none") and the task line did not say that the
    loss takes logits (the report scores them at 0, not 0.5)."""
    import keras

    from compress import io
    from compress.task import resolve

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)], name="logit")
    model.compile("adam", keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.BinaryAccuracy(name="acc"), "mae"])
    model.save(tmp_path / "logit.keras")
    task = resolve(io.load_model(tmp_path / "logit.keras"))
    assert task.kind == "binary" and task.from_logits
    assert isinstance(task.metrics[0], keras.metrics.BinaryAccuracy) and task.metrics[1] == "mae"
    assert task.describe() == ("binary, loss binary_crossentropy from logits, metrics acc, "
                               "mae (the model's own loss)")
    scores = task.score(np.array([[-0.2], [0.3]], "float32"), np.array([0, 1]))
    assert scores["accuracy"] == 1.0  # logits judged at 0


def test_a_model_compiled_on_one_hot_rows_fine_tunes_on_class_numbers(cli, digits, tmp_path):
    """keras.io's MNIST convnet is compiled with categorical_crossentropy; every
    fine-tuning pass crashed on the class numbers the data gives ("Arguments `target` and
    `output` must have the same rank")."""
    import keras

    from compress import io
    from compress.losses import OnClassNumbers
    from compress.task import resolve

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")], name="cc")
    model.compile("adam", keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
                  metrics=["accuracy"])
    model.fit(digits.x_train, np.eye(10)[digits.y_train], epochs=3, verbose=0)
    model.save(tmp_path / "cc.keras")
    task = resolve(io.load_model(tmp_path / "cc.keras"), y=digits.y_train)
    assert isinstance(task.loss, OnClassNumbers) and task.loss_name == "categorical_crossentropy"
    assert task.describe().endswith("(the model's own loss, on class numbers)")
    y_pred = model.predict(digits.x_test[:32], verbose=0)
    want = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(
        np.eye(10)[digits.y_test[:32]], y_pred)
    assert float(task.loss(digits.y_test[:32], y_pred)) == pytest.approx(float(want), rel=1e-5)
    # one-hot targets keep the loss as compiled
    assert not isinstance(resolve(model, y=np.eye(10)[digits.y_train]).loss, OnClassNumbers)
    # a model compiled with the adapter saves and loads (registered, safe mode)
    net = keras.models.clone_model(model)
    net.compile("adam", task.loss)
    net.save(tmp_path / "adapted.keras")
    assert isinstance(io.load_model(tmp_path / "adapted.keras").loss, OnClassNumbers)
    r = cli("prune", tmp_path / "cc.keras", "-o", tmp_path / "p.keras", "--data", "digits",
            "--sparsity", "0.5", "--epochs", "1", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["after"]["accuracy"] > 0.5


def test_regression_fine_tune_uses_mse_and_the_report_shows_mse(regressor_file, diabetes):
    # Before: fine-tuning used sparse categorical cross-entropy, and the report said
    # "accuracy 100% -> 100%" while the test MSE got worse.
    import compress
    from compress.report import markdown_table, model_report
    from compress.task import resolve

    model = compress.load_model(regressor_file)
    task = resolve(model, y=diabetes.y_test)
    oneshot, _ = compress.prune(model, diabetes, sparsity=0.8)
    tuned, info = compress.prune(model, diabetes, sparsity=0.8, epochs=15,
                                 learning_rate=3e-3)
    assert "mean_squared_error" in info["task"]
    dense = model_report(model, diabetes, latency=False, task=task, name="dense")
    cut = model_report(oneshot, diabetes, latency=False, task=task, name="one-shot")
    after = model_report(tuned, diabetes, latency=False, task=task, name="tuned")
    assert "accuracy" not in after and after["task"] == "regression"
    assert after["mse"] < cut["mse"]  # the fine-tuning learned on the regression loss
    assert after["mse"] < 1.5 * dense["mse"]
    table = markdown_table([dense, after])
    assert "| MSE |" in table and "accuracy" not in table
    # the model's own (or given) metrics beside MSE: here --metrics mape
    own = model_report(tuned, diabetes, latency=False, task=resolve(model, metrics=["mape"]))
    assert own["metrics"]["mape"] > 0 and "| mape |" in markdown_table([dense, own])


@pytest.mark.parametrize("low, high", [(0.1, 0.9), (-3.0, -1.0)])
def test_targets_in_the_unit_interval_or_negative_train_on_their_loss(diabetes, low, high):
    # Before: targets in (0.1, 0.9) trained at loss 0.0000 (cast to class 0) and negative
    # ones crashed inside Keras.
    import compress

    y = diabetes.y_train
    scale = lambda t: low + (high - low) * (t - y.min()) / (y.max() - y.min())
    ds = _dataset(np.concatenate([diabetes.x_test, diabetes.x_val, diabetes.x_train]),
                  scale(np.concatenate([diabetes.y_test, diabetes.y_val, y])))
    model = _regressor()  # uncompiled, linear one-unit output: inferred regression
    tuned, info = compress.prune(model, ds, sparsity=0.5, epochs=3, learning_rate=1e-2)
    assert info["task"].startswith("regression")
    from compress.task import resolve

    before = resolve(model).evaluate(model, ds.x_test, ds.y_test)["mse"]
    after = resolve(tuned).evaluate(tuned, ds.x_test, ds.y_test)["mse"]
    assert after < before / 2  # it learned the targets (an untrained net is far off)


def test_loss_override_and_bad_names_are_one_line(diabetes):
    import compress

    model = _regressor(compile_loss="mse")
    _, info = compress.prune(model, diabetes, sparsity=0.5, epochs=1, loss="huber",
                             metrics=["mse"])
    assert info["task"].startswith("regression, loss huber, metrics mse (given)")
    with pytest.raises(CompressError, match=r"^prune.loss: must be one of .*got 'msee'$"):
        compress.prune(model, diabetes, epochs=1, loss="msee")
    with pytest.raises(CompressError, match=r"^metrics 'nope': not a Keras metric name"):
        compress.prune(model, diabetes, epochs=1, metrics=["nope"])


def test_a_regression_target_given_to_a_classifier_is_refused(diabetes):
    import keras

    import compress

    clf = keras.Sequential([keras.Input((10,)), keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(CompressError, match="a classifier needs integer class labels"):
        compress.prune(clf, diabetes, sparsity=0.5, epochs=1)


def test_one_unit_int8_check_reports_sqnr_and_can_fail(regressor_file, diabetes):
    # Before: "top-1 agreement 100%" for a one-unit output, whatever the int8 model did.
    import dataclasses

    import compress

    model = compress.load_model(regressor_file)
    _, good = compress.quantize(model, diabetes, mode="int8", latency=False)
    assert "top1_agreement" not in good and "accuracy" not in good
    assert good["verified"] and good["sqnr_db"] > 20
    assert good["mse"] <= 1.1 * good["float_mse"]
    # Calibrated on inputs 100x smaller than the real ones: activations saturate.
    bad_data = dataclasses.replace(diabetes, x_train=diabetes.x_train * 0.01)
    _, bad = compress.quantize(model, bad_data, mode="int8", latency=False)
    assert not bad["verified"] and bad["sqnr_db"] < 20
    assert "below 20 dB" in bad["agreement"]


def test_export_of_a_regressor_reports_no_top1(regressor_file, diabetes):
    import compress
    from compress.export import export_artifact

    _, check = export_artifact(compress.load_model(regressor_file), diabetes, format="tflite")
    assert "top1_agreement" not in check and check["sqnr_db"] > 60


# ---- Pruning beside EarlyStopping, and a pipeline of unknown length ----

def _readme_snippet() -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"## Quickstart: Python\n\n```python\n(.*?)```", text, re.DOTALL).group(1)
    return block.split("# Or run the passes")[0]


def _lenet300_file(folder: Path) -> None:
    from compress import training
    from compress.models import build

    training.set_seed(0)
    build("lenet300", input_shape=(784,)).save(folder / "model.h5")


def _sparsity(model) -> float:
    kernels = [np.asarray(w) for w in model.weights if len(w.shape) == 2]
    return 1 - sum(np.count_nonzero(k) for k in kernels) / sum(k.size for k in kernels)


def test_the_readme_callbacks_snippet_ends_at_its_sparsity(tmp_path, monkeypatch):
    # Before: EarlyStopping's restore put back the dense weights: 0.0% on a digits CNN.
    import compress

    _lenet300_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    real = compress.load_data
    monkeypatch.setattr(compress, "load_data", lambda name: real(name).take(1200, 200))
    scope = {}
    exec(compile(_readme_snippet(), "README.md", "exec"), scope)  # noqa: S102
    assert _sparsity(scope["model"]) == pytest.approx(0.9, abs=0.01)


def test_keras_early_stopping_after_pruning_cannot_undo_it(digits):
    import keras

    from compress import training
    from compress.callbacks import Pruning
    from compress.models import build

    training.set_seed(0)
    model = build("lenet300", input_shape=(64,), width=0.25)
    training.compile_classifier(model, learning_rate=3e-3)
    x, y = digits.x_train.reshape(-1, 64), digits.y_train
    prune = Pruning(sparsity=0.8, frequency=5)
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=1, mode="max",
                                         restore_best_weights=True)  # best = first epoch
    from compress.callbacks.pruning import RemaskedWarning

    # the restored weights were denser than the masks: masked again, they are a model the
    # fit never evaluated, and a warning says so (it did not)
    with pytest.warns(RemaskedWarning, match="zeroed to keep .* not the one that was "
                      "evaluated"):
        model.fit(x, y, epochs=4, batch_size=128, verbose=0, callbacks=[prune, stop])
    assert prune.restores >= 1 and stop.stopped_epoch > 0  # stopped early, restored epoch 1
    # the restored (first-epoch) weights carry the masks the schedule had reached
    assert prune.current > 0.5 and _sparsity(model) == pytest.approx(prune.current, abs=0.01)
    before = model.get_weights()  # after the fit, set_weights is the user's own again
    model.set_weights([np.ones_like(w) for w in before])
    assert _sparsity(model) == 0.0


def test_unknown_steps_per_epoch_is_refused_or_given(digits):
    import tensorflow as tf

    from compress import training
    from compress.callbacks import Pruning
    from compress.models import build

    training.set_seed(0)
    model = build("lenet300", input_shape=(64,), width=0.25)
    training.compile_classifier(model, learning_rate=3e-3)
    x, y = digits.x_train.reshape(-1, 64), digits.y_train
    # filter() hides the length: Keras cannot tell the steps per epoch
    pipe = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(64)
    with pytest.raises(CompressError, match=r"^Pruning: this fit's number of steps per "
                                            r"epoch is unknown"):
        model.fit(pipe, epochs=2, verbose=0, callbacks=[Pruning(sparsity=0.8)])
    steps = -(-len(x) // 64)
    prune = Pruning(sparsity=0.8, frequency=4, steps_per_epoch=steps)
    model.fit(pipe, epochs=3, verbose=0, callbacks=[prune])
    assert prune.end_step == 2 * steps  # two thirds of 3 epochs, not one-shot at step 4
    assert len(prune.updates) > 3 and _sparsity(model) == pytest.approx(0.8, abs=0.01)


# ---- label-free mode: inputs only ----

def test_without_labels_fine_tuning_distills_and_reports_fidelity(mlp_file, diabetes,
                                                                   regressor_file):
    # Before: quantize with y=None "worked" and reported accuracy 0.0; distill crashed.
    import dataclasses

    import compress
    from compress.report import model_report

    path, ds = mlp_file
    model = compress.load_model(path)
    bare = dataclasses.replace(ds, y_train=None, y_val=None, y_test=None, num_classes=0)
    cut, _ = compress.prune(model, bare, sparsity=0.9)
    tuned, info = compress.prune(model, bare, sparsity=0.9, epochs=4, learning_rate=2e-3)
    assert "no labels: fine-tuned by distillation from the original" in info["task"]
    one_shot = model_report(cut, bare, latency=False, reference=model)
    after = model_report(tuned, bare, latency=False, reference=model)
    assert "accuracy" not in after and after["task"] == "classification"
    assert after["top1_agreement"] > one_shot["top1_agreement"]
    assert after["rel_l2_error"] < one_shot["rel_l2_error"]
    _, q = compress.quantize(model, bare, mode="int8", latency=False)
    assert "accuracy" not in q and q["top1_agreement"] > 0.9 and q["verified"]
    raw, _ = compress.share(model, bare, factor=0.25)
    hashed, share_info = compress.share(model, bare, factor=0.25, epochs=3)
    assert "accuracy" not in share_info
    assert (model_report(hashed, bare, latency=False, reference=model)["top1_agreement"]
            > model_report(raw, bare, latency=False, reference=model)["top1_agreement"])
    # a regression: MSE to the original's outputs, reported as relative L2 error / PSNR
    reg = compress.load_model(regressor_file)
    plain = dataclasses.replace(diabetes, y_train=None, y_val=None, y_test=None)
    cut, _ = compress.prune(reg, plain, sparsity=0.8)
    tuned, _ = compress.prune(reg, plain, sparsity=0.8, epochs=10, learning_rate=3e-3)
    one_shot = model_report(cut, plain, latency=False, reference=reg)
    after = model_report(tuned, plain, latency=False, reference=reg)
    assert "top1_agreement" not in after and after["psnr_db"] > one_shot["psnr_db"]


def test_the_cli_reports_a_regression_as_mse(regressor_file, diabetes, cli, tmp_path,
                                             monkeypatch):
    # Before: "accuracy 100.00% -> 100.00%" while the test MSE got worse.
    import json

    import compress.data

    monkeypatch.setattr(compress.data, "load_data", lambda name, seed=0, **kw: diabetes)
    out = tmp_path / "pruned.keras"
    result = cli("prune", regressor_file, "-o", out, "--data", "diabetes", "--sparsity",
                 "0.8", "--epochs", "3", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert "accuracy" not in report["before"] and "accuracy" not in report["after"]
    assert report["after"]["task"] == "regression" and report["after"]["mse"] > 0
    assert report["pass"]["task"].startswith("regression, loss mean_squared_error")
    table = cli("prune", regressor_file, "-o", tmp_path / "p2.keras", "--data", "diabetes",
                "--epochs", "1", "--loss", "huber")
    assert table.exit_code == 0, table.output
    assert "MSE" in table.output and "accuracy" not in table.output
    assert "loss huber" in table.output
    bad = cli("prune", regressor_file, "-o", tmp_path / "p3.keras", "--data", "diabetes",
              "--epochs", "1", "--loss", "msee")
    assert bad.exit_code == 1 and not (tmp_path / "p3.keras").exists()
    assert bad.output.startswith("error: --loss: must be one of mean_squared_error, mse")
    assert bad.output.count("\n") == 1 and "got 'msee'" in bad.output


def test_a_sigmoid_binary_classifier_with_0_1_labels_runs_every_data_pass(cli, tmp_path):
    # Before: "labels go up to 1 but the model has only 1 outputs" (quantize, export...)
    # and "data has 2 classes but the model has 1 outputs" (prune), for the most common
    # binary head there is: one sigmoid unit trained on labels 0/1.
    import json

    import keras
    from sklearn.datasets import load_breast_cancer

    from compress import training

    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype("float32")
    np.savez(tmp_path / "bc.npz", x_train=x[:450], y_train=y[:450], x_test=x[450:],
             y_test=y[450:])
    training.set_seed(0)
    model = keras.Sequential([keras.Input((30,)), keras.layers.Dense(16, "relu"),
                              keras.layers.Dense(1, "sigmoid")])
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    model.fit(x[:450], y[:450], epochs=20, verbose=0)
    model.save(tmp_path / "bc.keras")
    data = f"npz:{tmp_path / 'bc.npz'}"
    pruned = cli("prune", tmp_path / "bc.keras", "-o", tmp_path / "p.keras", "--data", data,
                 "--sparsity", "0.5", "--epochs", "1", "--json")
    assert pruned.exit_code == 0, pruned.output
    report = json.loads(pruned.output)
    assert report["after"]["task"] == "binary" and report["after"]["accuracy"] > 0.85
    int8 = cli("quantize", tmp_path / "bc.keras", "-o", tmp_path / "q.tflite", "--data", data,
               "--json", "--no-latency")
    assert int8.exit_code == 0, int8.output
    assert json.loads(int8.output)["accuracy"] > 0.85
    assert cli("prune", tmp_path / "bc.keras", "-o", tmp_path / "x.keras", "--data",
               "digits").exit_code == 1  # ten classes for one unit: still refused
