"""A NaN loss stops the run with one line and keeps the last good weights (API and CLI)."""

import keras
import numpy as np
import pytest
from conftest import file_digest

from compress import training
from compress.data import prepare
from compress.errors import CompressError
from compress.training_context import TrainingContext


def _exploding_fit(model, ds, **kwargs):
    """Fit 3 epochs: a sane rate for epoch 1, then a rate that blows the loss up."""
    seen = {}
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.setdefault(epoch, model.get_weights()))
    explode = keras.callbacks.LearningRateScheduler(lambda e, lr: 1e-2 if e == 0 else 1e15)
    with pytest.raises(CompressError) as info:
        training.fit(model, ds, epochs=3, verbose=0, callbacks=[explode, record], **kwargs)
    return seen, str(info.value)


def _mlp(digits):
    training.set_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(keras.optimizers.SGD(1e-2), "sparse_categorical_crossentropy")
    return model, prepare(model, digits)


def test_nan_loss_leaves_the_weights_of_the_last_good_epoch(digits):
    model, ds = _mlp(digits)
    seen, message = _exploding_fit(model, ds)
    assert "NaN or infinite" in message and "the weights after epoch 1" in message
    assert "\n" not in message
    # epoch 2 blew up: its end-of-epoch weights are not finite, epoch 1's are kept
    assert list(seen) == [0, 1]
    assert not all(np.isfinite(w).all() for w in seen[1])
    for kept, good in zip(model.get_weights(), seen[0], strict=True):
        assert np.isfinite(kept).all()
        np.testing.assert_array_equal(kept, good)


def test_nan_in_the_first_epoch_restores_the_starting_weights(digits):
    model, ds = _mlp(digits)
    start = model.get_weights()
    ds.x_train = ds.x_train.copy()
    ds.x_train[3] = np.inf
    with pytest.raises(CompressError, match="the model keeps the starting weights"):
        training.fit(model, ds, epochs=2, verbose=0)
    for kept, good in zip(model.get_weights(), start, strict=True):
        np.testing.assert_array_equal(kept, good)


def test_keep_last_good_saves_a_loadable_model(digits, tmp_path):
    model, ds = _mlp(digits)
    target = tmp_path / "last_good.keras"
    with TrainingContext(keep_last_good=target):
        seen, message = _exploding_fit(model, ds)
    assert f"were saved to {target}" in message
    loaded = keras.models.load_model(target)
    for kept, good in zip(loaded.get_weights(), seen[0], strict=True):
        np.testing.assert_array_equal(kept, good)


def test_cli_keep_last_good_writes_it_and_no_output(cli, mlp_file, tmp_path):
    model_path = mlp_file[0]
    before = file_digest(model_path)
    out, last = tmp_path / "pruned.keras", tmp_path / "last.keras"
    result = cli("prune", model_path, "-o", out, "--data", "digits", "--sparsity", "0.5",
                 "--epochs", "2", "--learning-rate", "1e12", "--keep-last-good", last)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "NaN or infinite" in errors[0] and str(last) in errors[0]
    assert not out.exists() and last.exists()
    assert file_digest(model_path) == before
    weights = keras.models.load_model(last).get_weights()
    assert all(np.isfinite(w).all() for w in weights)
    # the pruned model was fine-tuned from its mask: the kept weights are still 50% zero
    kernels = [w for w in weights if w.ndim == 2]
    assert sum((k == 0).sum() for k in kernels) >= 0.45 * sum(k.size for k in kernels)


def test_cli_keep_last_good_is_checked_before_any_work(cli, mlp_file, tmp_path):
    model_path = mlp_file[0]
    out = tmp_path / "pruned.keras"
    taken = tmp_path / "taken.keras"
    taken.write_bytes(b"precious")
    result = cli("prune", model_path, "-o", out, "--data", "digits", "--epochs", "1",
                 "--keep-last-good", taken)
    assert result.exit_code == 1 and "already exists" in result.output
    assert taken.read_bytes() == b"precious" and not out.exists()
    same = cli("prune", model_path, "-o", out, "--data", "digits", "--keep-last-good", out)
    assert same.exit_code == 1 and "must differ from the output" in same.output


def _with_nan(mlp_file):
    from compress.io import load_model

    model = load_model(mlp_file[0])
    kernel = model.get_layer("fc2").kernel
    values = np.asarray(kernel).copy()
    values[1, 2] = np.nan
    values[3, 4] = np.inf
    kernel.assign(values)
    return model, mlp_file[1]


def test_every_pass_refuses_nan_weights_up_front_naming_the_layer(mlp_file):
    from compress import export
    from compress.distillation import distill_step
    from compress.pruning import prune
    from compress.quantization import quantize
    from compress.sharing import cluster_model, hash_model

    model, ds = _with_nan(mlp_file)
    calls = {
        "prune": lambda: prune(model, sparsity=0.5),  # wrote a NaN model, exit 0
        "prune fine-tune": lambda: prune(model, ds, sparsity=0.5, epochs=1),  # blamed the rate
        "kmeans": lambda: cluster_model(model, clusters=4),
        "hash": lambda: hash_model(model, factor=0.5),
        "quantize": lambda: quantize(model, None, mode="dynamic", latency=False),
        "export": lambda: export.export_artifact(model, ds, format="onnx"),
        "distill": lambda: distill_step(model, ds, epochs=1),
    }
    for name, call in calls.items():
        with pytest.raises(CompressError) as refused:
            call()
        role = "teacher" if name == "distill" else "model"
        assert str(refused.value) == (
            f"{role} 'mlp': layer 'fc2' has 2 NaN or infinite weights in fc2/kernel; it cannot "
            "give finite outputs (retrain it or use an earlier file)"), name


def test_keep_last_good_never_saves_nan_weights(mlp_file, tmp_path):
    model, ds = _with_nan(mlp_file)  # fit_model itself does not check its model
    training.compile_classifier(model)
    target = tmp_path / "last.keras"
    with pytest.raises(CompressError) as stopped, TrainingContext(keep_last_good=target):
        training.fit(model, ds, epochs=1, verbose=0)
    assert str(stopped.value) == ("training stopped: the starting weights were already NaN or "
                                  "infinite; nothing was saved")
    assert not target.exists()


def test_accuracy_does_not_count_nan_outputs_as_class_0(mlp_file):
    model, ds = _with_nan(mlp_file)
    zeros = ds.y_test == 0
    assert zeros.any()
    assert training.accuracy(model, ds.x_test[zeros], ds.y_test[zeros]) == 0.0
