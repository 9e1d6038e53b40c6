"""Quantization passes on zoo-shaped models (#19): branching graphs, unlabelled data,
models Keras's int8 cannot quantize, QAT ranges matched to ops by layer name."""

from types import SimpleNamespace

import numpy as np
import pytest


def _branching(tmp_path):
    """A trained residual model with a SeparableConv2D (a layer QAT leaves float), saved
    and loaded back, and unlabelled digits (inputs only) prepared for it."""
    import keras

    from compress import io, training
    from compress.data import load_data, prepare

    training.set_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inp)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    y = keras.layers.Conv2D(8, 1, use_bias=False, name="branch")(x)
    y = keras.layers.BatchNormalization(name="branch_bn")(y)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.SeparableConv2D(8, 3, padding="same", name="sep")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(10, activation="softmax", name="head")(x)
    model = keras.Model(inp, out)
    labelled = load_data("digits", 0)
    ds = prepare(model, labelled)
    training.compile_classifier(model, learning_rate=3e-3)
    training.fit(model, ds, epochs=8, verbose=0)
    model.save(tmp_path / "res.keras")
    npz = tmp_path / "inputs.npz"
    np.savez(npz, x_train=ds.x_train[:512], x_test=ds.x_test[:128])
    model = io.load_model(tmp_path / "res.keras")
    return model, prepare(model, load_data(f"npz:{npz}", 0))


def test_qat_runs_on_a_branching_model_without_labels(tmp_path):
    from compress.quantization import quantize

    model, ds = _branching(tmp_path)
    assert not ds.labelled
    before = [w.copy() for w in model.get_weights()]
    content, info = quantize(model, ds, qat=True, epochs=1, learning_rate=1e-4,
                             latency=False, calibration_samples=64)
    qat = info["qat"]
    assert "float model" in qat["trained_on"]  # fidelity to the float model, not labels
    assert qat["folded_batchnorm"] == 2
    assert qat["fake_quantized_layers"] == 4  # stem, branch, separable, head
    assert qat["float_layers"] == []  # the separable convolution trained in float before
    # The learned ranges reach the right ops: the int8 file agrees with the float model.
    assert info["verified"] and info["top1_agreement"] >= 0.9, info["agreement"]
    assert info["bytes"] == len(content)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_qat_ranges_are_matched_by_layer_name_with_or_without_scope_suffixes():
    from compress.errors import CompressError
    from compress.quantization.tflite import _ranges_by_name

    def ops(*names):
        return [SimpleNamespace(name=n.encode()) for n in names]

    ranges = {"conv": (0.0, 1.0), "conv_1": (0.0, 2.0)}
    # TensorFlow made every scope unique (conv -> conv_1, conv_1 -> conv_1_1), out of order;
    # the op of a float SeparableConv2D keeps its calibrated range (None).
    got = _ranges_by_name(ops("m_1/conv_1_1/BiasAdd;m_1/relu_1/Relu",
                              "m_1/sep_1/separable_conv2d/depthwise",
                              "m_1/conv_1/Conv2D"), ranges)
    assert got == [(0.0, 2.0), None, (0.0, 1.0)]
    assert _ranges_by_name(ops("m/conv/Conv2D", "m/conv_1/Conv2D"), ranges) == \
        [(0.0, 1.0), (0.0, 2.0)]
    # a model output's tensor carries the signature's name, not the layer's
    assert _ranges_by_name(ops("m/conv/Conv2D", "StatefulPartitionedCall_1:0"), ranges) == \
        [(0.0, 1.0), (0.0, 2.0)]
    with pytest.raises(CompressError, match="QAT ranges do not match"):
        _ranges_by_name(ops("m/conv/Conv2D"), ranges)  # conv_1 has no op


def test_keras_int8_refuses_a_model_without_dense_layers(tmp_path):
    import keras

    from compress import io
    from compress.errors import CompressError
    from compress.quantization import quantize

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(10, 3),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Softmax()], name="convs")
    model.save(tmp_path / "convs.keras")
    with pytest.raises(CompressError, match=r"model 'convs' has none \(its layers with "
                       r"weights: Conv2D\).*use --mode int8 or --mode dynamic") as err:
        quantize(io.load_model(tmp_path / "convs.keras"), None, mode="keras-int8")
    assert "\n" not in str(err.value)
