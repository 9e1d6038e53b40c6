"""compress.cascade.cascade_pass: epochs + k*l, frozen blocks, cached inputs, plain result."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from compress.cascade.cascade_pass import CascadeTraining, cascade_train, stage_epochs
from compress.cascade.options import CASCADE_OPTIONS
from compress.errors import CompressError
from compress.models import build


def test_cascade_trains_each_block_for_epochs_plus_k_l_and_freezes_it(digits, cnn_file):
    path, _ = cnn_file
    model = keras.models.load_model(path, compile=False)
    before = [w.copy() for w in model.get_weights()]
    trained, info = cascade_train(model, digits, epochs=1, k=1, learning_rate=3e-3)
    assert [s["epochs"] for s in info["stages"]] == [2, 3]
    assert info["total_epochs"] == 5
    # input untouched; result is a plain Keras model with the same layers, all trainable
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert [la.name for la in trained.layers] == [la.name for la in model.layers]
    assert all(la.trainable for la in trained.layers)
    # the last stage's accuracy is the final model's: the model is the stages stacked
    assert info["test_accuracy"] == pytest.approx(info["stages"][-1]["test_accuracy"])
    assert info["test_accuracy"] > 0.5
    # stage 2 trains on cached pseudo-inputs: smaller input, no conv1 in its graph
    assert info["stages"][1]["input_shape"] == [4, 4, 8]
    assert info["stages"][1]["trainable_params"] < trained.count_params()
    # block 1 was frozen during stage 2: unchanged from the end of stage 1 means conv1 of
    # the result reproduces stage 1's features, checked through the stage-1 accuracy rule
    assert info["stages"][0]["output_block"] == ["cascade_out1_gap", "cascade_out1_softmax"]


def test_frozen_block_is_not_changed_by_later_stages_and_disk_cache_matches(digits):
    model = build("small-cnn", input_shape=(8, 8, 1), width=0.25)

    class KeepConv1(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            names = [la.name for la in self.model.layers]
            if "conv1" in names:
                self.weights = self.model.get_layer("conv1").get_weights()[0].copy()

    keep = KeepConv1()
    trained, info = cascade_train(model, digits, epochs=1, k=0, cache="disk", callbacks=[keep])
    assert len(info["stages"]) == 3
    # conv1 after stages 2 and 3 equals conv1 at the end of stage 1: frozen, never re-run
    np.testing.assert_array_equal(trained.get_layer("conv1").get_weights()[0], keep.weights)
    _, info2 = cascade_train(model, digits, epochs=1, k=0, cache="memory")
    assert info2["test_accuracy"] == pytest.approx(info["test_accuracy"])


def test_layer_specs_and_fine_tune(digits):
    specs = [[{"class_name": "Conv2D", "config": {"filters": 8, "kernel_size": 3,
                                                  "padding": "same", "activation": "relu"}},
              keras.layers.MaxPooling2D()],
             keras.layers.Conv2D(16, 3, padding="same", activation="relu")]
    trained, info = cascade_train(specs, digits, epochs=1, k=0, fine_tune_epochs=1)
    assert len(info["stages"]) == 2 and info["fine_tune"]["epochs"] == 1
    assert info["total_epochs"] == 3
    x = digits.x_test[:5]
    probs = np.asarray(trained(x))
    assert probs.shape == (5, 10) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_options_are_validated_by_the_schema_and_round_trip():
    with pytest.raises(CompressError, match="cascade.k"):
        CASCADE_OPTIONS.validate({"k": -1})
    with pytest.raises(CompressError, match="cascade.k"):
        CascadeTraining(k=-1)
    cascade = CascadeTraining(epochs=3, k=2)
    assert CascadeTraining.from_config(cascade.get_config()).options == cascade.options
    assert stage_epochs(3, 2, 3) == [5, 7, 9]


def test_a_nan_stage_stops_the_cascade_with_one_line(digits, cnn_file):
    import copy

    path, _ = cnn_file
    model = keras.models.load_model(path, compile=False)
    bad = copy.copy(digits)
    bad.x_train = digits.x_train.copy()
    bad.x_train[7] = np.inf
    with pytest.raises(CompressError, match="NaN or infinite.*cascade stage 1"):
        cascade_train(model, bad, epochs=1, k=0)


def test_a_pruning_callback_is_refused_in_one_line(digits):
    # One instance followed every stage's fit: its schedule ended in the first stage and
    # the later stages' layers were never pruned (0.8 asked, stage 2 at 0.0), unsaid.
    from compress.callbacks import Pruning

    with pytest.raises(CompressError, match="a Pruning callback cannot follow the stages"):
        cascade_train(build("cnn4", input_shape=(8, 8, 1), num_classes=10), digits,
                      epochs=1, callbacks=[Pruning(sparsity=0.8)])
