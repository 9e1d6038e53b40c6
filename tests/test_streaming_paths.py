"""Streams stay streams (issue 18): reports, sensitivity, augmentation, cascade and task
inference read a tf.data pipeline batch by batch or a bounded head, never the whole of it;
cascade and OBD train and measure on the model's own task (a regressor: MSE, no accuracy).

The materialising accessors of :class:`compress.data.StreamDataset` (``split`` and
``targets``: what ``x_test``/``y_test`` read) are made to fail, so any path that still
reads a whole split into memory fails the test.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from compress import training
from compress.data import StreamDataset, as_dataset
from compress.errors import CompressError


@pytest.fixture
def no_materialising(monkeypatch):
    def refuse(self, name):
        raise AssertionError(f"the {name} split of a stream was read into memory")

    monkeypatch.setattr(StreamDataset, "split", refuse)
    monkeypatch.setattr(StreamDataset, "targets", refuse)


def _regression(n=384, features=6, seed=0):
    """make_regression-like data: a noisy linear target of standard normal features."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype("float32")
    w = rng.standard_normal(features).astype("float32")
    y = (x @ w + 0.1 * rng.standard_normal(n)).astype("float32")
    return x, y


def _regressor(features=6, file=None, tmp_path=None, train=None):
    training.set_seed(0)
    model = keras.Sequential([keras.Input((features,)),
                              keras.layers.Dense(16, activation="relu", name="fc1"),
                              keras.layers.Dense(8, activation="relu", name="fc2"),
                              keras.layers.Dense(1, name="out")], name="regressor")
    if train is not None:
        model.compile(keras.optimizers.Adam(1e-2), "mse")
        model.fit(*train, epochs=15, batch_size=64, verbose=0)
    if tmp_path is not None:  # saved and loaded back, as users hand it over
        path = tmp_path / "regressor.keras"
        model.save(path)
        model = keras.models.load_model(path)
    return model


def _mse(model, x, y):
    return float(np.mean((np.asarray(model(x, training=False))[:, 0] - y) ** 2))


def test_task_inference_reads_a_bounded_head_of_a_stream_and_says_so():
    from compress.task import SAMPLE_TARGETS, resolve, sample_targets

    n, pulled = 3000, [0]
    rng = np.random.default_rng(0)
    x, y = rng.random((n, 4), dtype=np.float32), rng.integers(0, 3, n)

    def samples():
        for i in range(n):
            pulled[0] += 1
            yield x[i], y[i]

    stream = tf.data.Dataset.from_generator(samples, output_signature=(
        tf.TensorSpec((4,), tf.float32), tf.TensorSpec((), tf.int64)))
    logits = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    data = as_dataset(stream, logits)
    task = resolve(logits, y=sample_targets(data))
    assert task.kind == "classification"
    assert f"first {SAMPLE_TARGETS} targets" in task.describe()
    assert pulled[0] < 2 * SAMPLE_TARGETS < n  # the head only (the checks, then the sample)


def test_report_sensitivity_augment_and_cascade_read_a_stream_batch_by_batch(
        no_materialising, tmp_path):
    from compress.distillation.augment import augmented_batches
    from compress.pruning import prune
    from compress.report import model_report

    x, y = _regression()
    model = _regressor(tmp_path=tmp_path, train=(x[:256], y[:256]))
    stream = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    held = tf.data.Dataset.from_tensor_slices((x[256:], y[256:])).batch(32)
    data = as_dataset(stream, model, validation=held)
    # the report scores the stream batch by batch: MSE and MAE, never an accuracy
    report = model_report(model, data, latency=False)
    assert "accuracy" not in report and report["task"] == "regression"
    assert report["mse"] == pytest.approx(_mse(model, x[256:], y[256:]), rel=1e-4)
    # label-free: fidelity to the original, batch by batch
    unlabelled = as_dataset(tf.data.Dataset.from_tensor_slices(x).batch(32), model)
    same = model_report(model, unlabelled, latency=False, reference=model)
    assert same["rel_l2_error"] == 0.0 and "accuracy" not in same
    # sensitivity: the model's own loss (MSE) on a bounded held-out head
    pruned, _ = prune(model, data, sparsity=0.5, scope="sensitivity")
    kernels = [np.asarray(la.kernel) for la in pruned.layers]
    zeros = sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)
    assert zeros == pytest.approx(0.5, abs=0.02)
    # cascade from the stream, on the model's own task (MSE): stages scored as MSE
    trained, cinfo = training_cascade(model, data)
    assert "mean_squared_error" in cinfo["task"]
    assert all("val_mse" in s and not any("accuracy" in k for k in s)
               for s in cinfo["stages"])
    assert "test_mse" in cinfo and "test_accuracy" not in cinfo
    assert cinfo["test_mse"] == pytest.approx(_mse(trained, x[256:], y[256:]), rel=1e-3)
    # augment shift as a tf.data map over the stream (images only, no labels)
    images = np.zeros((40, 7, 7, 1), "float32")
    images[:, 3, 3, 0] = np.arange(1, 41)
    cnn = keras.Sequential([keras.Input((7, 7, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(2)])
    image_stream = as_dataset(tf.data.Dataset.from_tensor_slices(images).batch(8), cnn)
    seen = []
    for batch in augmented_batches(image_stream, None, "shift", shift=1, batch_size=8,
                                   seed=0):
        for image in batch.numpy():
            (r, c, _), = np.argwhere(image)
            assert abs(r - 3) <= 1 and abs(c - 3) <= 1
            seen.append(float(image[r, c, 0]))
    assert sorted(seen) == list(range(1, 41))  # every image once, moved at most 1 pixel


def training_cascade(model, data):
    from compress.cascade.cascade_pass import cascade_train

    return cascade_train(model, data, epochs=1, k=0, learning_rate=3e-3)


def test_cascade_of_a_regressor_trains_on_mse_and_label_free_reproduces_the_model(tmp_path):
    from compress.cascade.cascade_pass import cascade_train

    x, y = _regression(512)
    data = as_dataset((x[:384], y[:384]), validation=(x[384:], y[384:]))
    start = _regressor()
    before = _mse(start, x[384:], y[384:])
    trained, info = cascade_train(start, data, epochs=3, k=1, learning_rate=1e-2)
    assert info["stages"][0]["output_block"] == ["cascade_out1_linear"]
    assert [k for k in info if k.startswith("test_")] == ["test_mse", "test_mae"]
    assert info["test_mse"] == pytest.approx(_mse(trained, x[384:], y[384:]), rel=1e-3)
    assert info["test_mse"] < 0.5 * before  # fine-tuned on MSE: it went down
    # inputs only: each stage learns the input model's outputs (MSE to them)
    teacher = _regressor(tmp_path=tmp_path, train=(x, y))
    _, free = cascade_train(teacher, as_dataset(x), epochs=2, k=0, learning_rate=3e-3,
                            cache="stream")
    out = np.asarray(teacher(x))
    assert "no labels" in free["task"] and "test_mse_to_original" in free
    assert free["test_mse_to_original"] < 0.1 * float(np.var(out))
    with pytest.raises(CompressError, match="no labels and layer specs"):
        cascade_train([keras.layers.Dense(4)], as_dataset(x))


def test_obd_uses_the_regressors_own_loss_and_label_free_gauss_newton(tmp_path):
    from compress.pruning import prune
    from compress.pruning.obd import hessian_diagonal

    x, y = _regression(256)
    model = _regressor(tmp_path=tmp_path, train=(x, y))
    last = model.get_layer("out").kernel
    # Fisher at the true targets of the MSE loss: mean over samples of (2 (f - y) a)^2
    fisher, = hessian_diagonal(model, x, y, [last], estimator="fisher")
    a = np.asarray(keras.Model(model.inputs, model.get_layer("fc2").output)(x))
    residual = np.asarray(model(x))[:, 0] - y
    want = np.mean((2 * residual[:, None] * a) ** 2, axis=0)[:, None]
    np.testing.assert_allclose(fisher, want, rtol=1e-3, atol=1e-6)
    # Gauss-Newton of the MSE needs no targets: LeCun's backprop equals exact GN (2 a^2)
    gn, = hessian_diagonal(model, x, None, [last], estimator="gauss_newton", exact=True)
    bp, = hessian_diagonal(model, x, None, [last], estimator="backprop")
    np.testing.assert_allclose(gn, np.mean(2 * a ** 2, axis=0)[:, None], rtol=1e-4)
    np.testing.assert_allclose(bp, gn, rtol=1e-4)
    with pytest.raises(CompressError, match="estimator 'fisher' needs labels"):
        hessian_diagonal(model, x, None, [last], estimator="fisher")
    # prune by OBD with fine-tuning on the model's own loss: MSE goes down, no accuracy
    cut, _ = prune(model, (x, y), method="obd", sparsity=0.8)
    tuned, info = prune(model, (x, y), method="obd", sparsity=0.8, epochs=3,
                        learning_rate=3e-3)
    assert "mean_squared_error" in info["task"]
    assert not any("accuracy" in k for k in info)
    assert _mse(tuned, x, y) < _mse(cut, x, y)
    free, _ = prune(model, x, method="obd", sparsity=0.5)  # label-free OBD: GN diagonal
    assert 0.45 < 1 - np.count_nonzero(free.get_layer("fc1").kernel) / 96 < 0.55
