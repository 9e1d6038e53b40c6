"""Fixes found by the zoo's new columns (bench/cases/zoo.py, issue 19), on tiny models.

- OBD with its default (backprop) Hessian estimator on models with two inputs or two
  outputs: the layer Hessians (the output-curvature estimators take one input and one
  output), not a TypeError.
- Hash sharing of a model whose Dense layers sit inside a nested model: a refusal that
  names the nested model and the pass that reaches it.
- Distillation on data without labels (the zoo's photographs): the teacher's top-1
  classes stand in for the labels instead of a Keras AttributeError.

Each model is saved to a ``.keras`` file and loaded back, as a user's file.
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from compress import io
from compress.errors import CompressError

N = 96


def _saved(model, tmp_path, name):
    path = tmp_path / f"{name}.keras"
    model.save(path)
    return io.load_model(path)


def _npz(tmp_path, name, **arrays):
    from compress.data import load_data

    path = tmp_path / f"{name}.npz"
    np.savez(path, **arrays)
    return load_data(f"npz:{path}", seed=0)


def _two_io(tmp_path):
    """A two-input and a two-output model (8 features each) and their data."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(N, 8)).astype("float32"), rng.normal(size=(N, 8)).astype("float32")
    label = (a[:, 0] + b[:, 1] > 0).astype("int64")
    keras.utils.set_random_seed(0)
    ia, ib = keras.Input((8,), name="a"), keras.Input((8,), name="b")
    h = keras.layers.Dense(16, activation="relu", name="hidden")(
        keras.layers.Concatenate()([ia, ib]))
    two_in = keras.Model([ia, ib], keras.layers.Dense(2, activation="softmax", name="cls")(h))
    two_in.compile("adam", "sparse_categorical_crossentropy")
    ix = keras.Input((8,), name="x")
    h = keras.layers.Dense(16, activation="relu", name="hidden")(ix)
    two_out = keras.Model(ix, {"cls": keras.layers.Dense(2, activation="softmax",
                                                         name="cls")(h),
                               "score": keras.layers.Dense(1, name="score")(h)})
    two_out.compile("adam", loss={"cls": "sparse_categorical_crossentropy", "score": "mse"})
    return [(_saved(two_in, tmp_path, "two_in"),
             _npz(tmp_path, "two_in", **{"x_train/a": a, "x_train/b": b, "y_train": label})),
            (_saved(two_out, tmp_path, "two_out"),
             _npz(tmp_path, "two_out", **{"x_train": a, "y_train/cls": label,
                                          "y_train/score": b[:, 0]}))]


def test_obd_default_estimator_prunes_two_input_and_two_output_models(tmp_path):
    from compress.data import prepare
    from compress.pruning import prune

    for model, raw in _two_io(tmp_path):
        ds = prepare(model, raw)
        pruned, info = prune(model, ds, method="obd", sparsity=0.5, calibration=32)
        assert info["sparsity_reached"] == pytest.approx(0.5, abs=0.02)
        kernel = np.asarray(pruned.get_layer("hidden").kernel)
        assert 0.45 <= float((kernel == 0).mean()) <= 0.55
        # OBD, not magnitude: the kept weights are not simply the largest ones
        assert not np.array_equal(kernel != 0, np.abs(np.asarray(
            model.get_layer("hidden").kernel)) >= np.median(np.abs(np.asarray(
                model.get_layer("hidden").kernel))))


def test_hash_and_kmeans_reach_the_dense_layers_of_a_nested_model(tmp_path):
    """Hashing refused a model whose Dense layers all sat in a nested model (it rebuilt
    the top-level graph only); it rebuilds the nested model with them hashed now."""
    from compress.sharing import share

    inner_in = keras.Input((8,))
    inner = keras.Model(inner_in, keras.layers.Dense(4, activation="softmax")(
        keras.layers.Dense(16, activation="relu")(inner_in)), name="body")
    inp = keras.Input((8,))
    model = _saved(keras.Model(inp, inner(inp), name="outer"), tmp_path, "nest")
    hashed, info = share(model, None, method="hash")
    assert len(info["layers"]) == 2 and "not_reached" not in info
    assert [type(la).__name__ for la in hashed.get_layer("body").layers[1:]] == \
        ["HashedDense", "HashedDense"]
    clustered, _ = share(model, None, method="kmeans", clusters=4)
    kernel = np.asarray(clustered.get_layer("body").layers[1].kernel)
    assert len(np.unique(kernel)) <= 4


def test_distill_on_unlabelled_data_learns_the_teachers_top1(tmp_path):
    from compress.data import prepare
    from compress.distillation import distill
    from compress.training import predict

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3 * N, 8)).astype("float32")
    keras.utils.set_random_seed(1)
    inp = keras.Input((8,))
    teacher = _saved(keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp)),
                     tmp_path, "teacher")  # linear decisions: a small student can learn them
    student_in = keras.Input((8,))
    student = keras.Model(student_in, keras.layers.Dense(3, activation="softmax")(
        keras.layers.Dense(16, activation="relu")(student_in)))
    ds = prepare(teacher, _npz(tmp_path, "unlabelled", x_train=x[:2 * N], x_test=x[2 * N:]))
    assert not ds.labelled
    before = np.mean(predict(student, x[2 * N:]).argmax(-1) ==
                     predict(teacher, x[2 * N:]).argmax(-1))
    trained, info = distill(teacher, student, ds, epochs=15, batch_size=32,
                            learning_rate=1e-2)
    after = np.mean(predict(trained, x[2 * N:]).argmax(-1) ==
                    predict(teacher, x[2 * N:]).argmax(-1))
    assert info["epochs_run"] == 15 and after >= 0.8 and after > before


@pytest.mark.parametrize("method", ["magnitude", "obs"])
def test_two_four_leaves_a_three_channel_first_conv_dense_and_names_it(tmp_path, method):
    """2:4 on a CNN: the first convolution (3 input channels, no group of 4) stays dense
    and is named in the report; every other kernel holds the 2:4 pattern exactly. OBS
    refused the whole model for that one layer; it now leaves it dense as magnitude does."""
    from compress.pruning import prune

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, name="stem")(inp)
    # a depthwise kernel's units see 9 taps each: magnitude grouped 4 channels at a tap
    # (no N:M pattern) where OBS left it dense, so the two methods' runs differed
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.Conv2D(8, 3, name="body")(h)
    out = keras.layers.Dense(4, name="head")(keras.layers.Flatten()(h))
    model = _saved(keras.Model(inp, out), tmp_path, "cnn")
    x = np.random.default_rng(0).random((64, 8, 8, 3)).astype("float32")
    data = {"data": x} if method == "obs" else {}
    pruned, info = prune(model, two_four=True, method=method, **data)
    assert info["two_four_left_dense"] == ["stem/kernel", "dw/kernel"]
    for name in ("stem", "dw"):
        np.testing.assert_array_equal(pruned.get_layer(name).kernel.numpy(),
                                      model.get_layer(name).kernel.numpy())
    for name in ("body", "head"):
        k = pruned.get_layer(name).kernel.numpy()
        moved = np.moveaxis(k, -2, -1)
        groups = (moved.reshape(moved.shape[:-1] + (-1, 4)) != 0).sum(-1)
        assert (groups <= 2).all() and groups.mean() == 2, name

    only_stem = keras.Model(inp, keras.layers.Conv2D(8, 3, name="only")(inp))
    with pytest.raises(CompressError, match="no prunable layer has an input dimension"):
        prune(_saved(only_stem, tmp_path, "stem"), two_four=True, method=method, **data)
