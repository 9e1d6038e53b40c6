"""The Pruning callback follows the prune pass's rules (attention kernels ranked as the
matrices they are, OBD's leave-out rule), OBD reports the estimator it used, and layer
selection by path goes through compress.layers.select_layers."""

import keras
import numpy as np
import pytest
from _models import attention_classifier

from compress import io
from compress.callbacks import Pruning
from compress.errors import CompressError
from compress.layers import select_layers
from compress.pruning import prune


def _saved(model, tmp_path, name):
    path = tmp_path / f"{name}.keras"
    model.save(path)
    return io.load_model(path)


def _attention_model(tmp_path):
    model, x, y = attention_classifier()
    return _saved(model, tmp_path, "attention"), x, y


def _kernels(model):
    mha = model.get_layer("mha")
    return {n: np.asarray(getattr(mha, f"_{n}_dense").kernel)
            for n in ("query", "key", "value", "output")}


def _assert_balanced_per_output(model):
    """Each kernel, as its (inputs, outputs) matrix (8, 8), keeps half of every output
    unit's inputs: the per-output groups of the flattened view."""
    for name, kernel in _kernels(model).items():
        matrix = kernel.reshape(8, 8)
        assert np.all(np.sum(matrix == 0, axis=0) == 4), name


@pytest.mark.parametrize("method", ["magnitude", "obd"])
def test_callback_prunes_attention_kernels_as_the_pass_does(tmp_path, method):
    model, x, y = _attention_model(tmp_path)
    pruned, info = prune(model, (x, y), method=method, sparsity=0.5, balance=True)
    _assert_balanced_per_output(pruned)
    by_pass = {r["weight"]: r["sparsity"] for r in info["layers"]}
    model.compile("adam", "sparse_categorical_crossentropy")
    cb = Pruning(sparsity=0.5, schedule="constant", frequency=1, method=method, balance=True,
                 calibration=(x[:16], y[:16]) if method == "obd" else None)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb])
    assert cb.left_out == {} and cb.updates == [(0, 0.5)]
    _assert_balanced_per_output(model)
    for name, kernel in _kernels(model).items():
        assert by_pass[f"mha/{name if name != 'output' else 'attention_output'}/kernel"] == \
            pytest.approx(np.mean(kernel == 0)) == 0.5


def _embedding_model(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,), dtype="int32")
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 8, name="emb")(inp))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="head")(h))
    rng = np.random.default_rng(0)
    return (_saved(model, tmp_path, "embedding"), rng.integers(0, 20, (32, 6)),
            rng.integers(0, 3, 32))


def test_callback_leaves_out_what_has_no_layer_hessian_as_the_pass_does(tmp_path):
    model, x, y = _embedding_model(tmp_path)
    _, info = prune(model, (x, y), method="obd", estimator="layer", sparsity=0.5)
    model.compile("adam", "sparse_categorical_crossentropy")
    # Inputs alone are calibration enough (a bare array was read as a pair (x, y));
    # a user's own fit gets a warning naming what stays dense, as the pass reports it.
    cb = Pruning(sparsity=0.5, schedule="constant", frequency=1, method="obd",
                 estimator="layer", calibration=x)
    from compress.callbacks.pruning import LeftDenseWarning

    with pytest.warns(LeftDenseWarning, match="leaves emb/embeddings dense: no layer Hessian"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb])
    assert set(cb.left_out) == set(info["left_out"]) == {"emb/embeddings"}
    assert "Embedding" in cb.left_out["emb/embeddings"]
    assert np.all(np.asarray(model.get_layer("emb").embeddings) != 0)  # left dense
    assert np.mean(np.asarray(model.get_layer("head").kernel) == 0) == pytest.approx(0.5)
    with pytest.raises(CompressError, match="calibration: give inputs x .* got str"):
        Pruning(sparsity=0.5, method="obs", calibration="cal.npz")
    # Selected by the user: refused in one line, as the pass refuses it.
    cb = Pruning(sparsity=0.5, schedule="constant", method="obd", estimator="layer",
                 calibration=(x, y), layers=["emb", "head"])
    with pytest.raises(CompressError, match="layer 'emb' \\(Embedding\\)"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb])


def test_obd_on_a_two_input_model_reports_the_layer_estimator(tmp_path):
    keras.utils.set_random_seed(0)
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    h = keras.layers.Dense(8, activation="relu", name="fc")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], keras.layers.Dense(2, activation="softmax", name="out")(h))
    model = _saved(model, tmp_path, "two_input")
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 3)).astype("float32")]
    _, info = prune(model, (x, rng.integers(0, 2, 32)), method="obd", sparsity=0.5)
    assert info["estimator"] == "layer"  # what ranked the weights, not the default backprop
    assert info["sparsity_reached"] == pytest.approx(0.5, abs=0.02)


class _Layer:
    def __init__(self, name):
        self.name = name


def test_select_layers_matches_the_given_paths_and_lists_them_in_errors():
    fc1, fc2, head = _Layer("fc1"), _Layer("fc1"), _Layer("head")
    paths = ["block_0/fc1", "block_1/fc1", "head"]
    assert select_layers([fc1, fc2, head], ["block_1/fc1"], "prunable", names=paths) == [fc2]
    assert select_layers([fc1, fc2, head], ["block_.*"], "prunable", names=paths) == [fc1, fc2]
    assert select_layers([fc1, fc2, head], ["fc1"], "prunable", names=paths) == [fc1, fc2]
    with pytest.raises(CompressError) as err:
        select_layers([fc1, fc2, head], ["block"], "prunable", "m", names=paths)
    assert str(err.value) == ("layers 'block': matches no prunable layer of model 'm' "
                              "(prunable: block_0/fc1, block_1/fc1, head)")
