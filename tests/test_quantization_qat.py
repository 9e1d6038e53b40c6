"""BatchNorm folding and quantization-aware fine-tuning."""

import numpy as np


def _bn_model():
    import keras

    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(6, 3, use_bias=False, name="conv"),
        keras.layers.BatchNormalization(name="bn"), keras.layers.ReLU(name="relu"),
        keras.layers.DepthwiseConv2D(3, name="dw"), keras.layers.BatchNormalization(name="bn2"),
        keras.layers.Flatten(name="flat"), keras.layers.Dense(10, name="fc"),
        keras.layers.BatchNormalization(name="bn3"),
        keras.layers.Activation("softmax", name="soft")])


def test_fold_batchnorm_matches_outputs(digits):
    from compress import training
    from compress.data import prepare
    from compress.quantization.qat import fold_batchnorm

    model = _bn_model()
    ds = prepare(model, digits)
    training.compile_classifier(model, learning_rate=3e-3)
    training.fit(model, ds, epochs=1, verbose=0)
    folded, n = fold_batchnorm(model)
    assert n == 3
    assert not any("BatchNormalization" in type(lay).__name__ for lay in folded.layers)
    x = ds.x_test[:64]
    np.testing.assert_allclose(training.predict(folded, x), training.predict(model, x),
                               atol=1e-5)


def test_qat_trains_plain_folded_model_without_touching_input(cnn_file):
    from compress import io
    from compress.quantization.qat import qat_finetune

    path, ds = cnn_file
    model = io.load_model(path)
    before = [w.copy() for w in model.get_weights()]
    folded, info = qat_finetune(model, ds, epochs=1, learning_rate=1e-3)
    assert info["folded_batchnorm"] == 1 and info["fake_quantized_layers"] == 3
    modules = {type(lay).__module__ for lay in folded.layers}
    assert not any(m.startswith("compress") for m in modules), modules  # no QAT wrappers
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # training moved the weights away from the folded starting point
    from compress.quantization.qat import fold_batchnorm

    start, _ = fold_batchnorm(model)
    assert any(not np.allclose(a, b) for a, b in zip(start.get_weights(), folded.get_weights()))


def test_qat_then_int8_tflite(cnn_file):
    from compress import io, runtime
    from compress.quantization import quantize

    path, ds = cnn_file
    content, info = quantize(io.load_model(path), ds, qat=True, epochs=1, learning_rate=1e-3,
                             latency=False)
    assert info["qat"]["epochs"] == 1
    assert info["accuracy"] >= info["float_accuracy"] - 0.05
    assert runtime.artifact_accuracy(content, ds.x_test, ds.y_test) == info["accuracy"]


def test_qat_int8_litert_matches_fake_quant_keras():
    """The int8 file reproduces the fake-quantized Keras model (learned ranges carried)."""
    import keras

    from compress import training
    from compress.data import load_data, prepare
    from compress.quantization import quantize

    training.set_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.Conv2D(16, 1), keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, activation="softmax")])
    ds = prepare(model, load_data("digits", 0))
    training.compile_classifier(model, learning_rate=3e-3)
    training.fit(model, ds, epochs=20, verbose=0)
    _, info = quantize(model, ds, qat=True, epochs=3, learning_rate=1e-3, latency=False)
    fake_quant = info["qat"]["test_accuracy"]
    assert fake_quant > 0.5
    assert abs(info["accuracy"] - fake_quant) <= 0.02, (info["accuracy"], fake_quant)


def test_qat_ranges_follow_the_kernels_when_scope_names_collide(tmp_path):
    """Layers named ``dense`` and ``dense_1`` (Keras's defaults): TensorFlow scopes the
    first as ``dense_1/`` in the converted graph, so a name reading gives the output op the
    hidden layer's ReLU range and clips a regressor's output; matched by kernel, the int8
    file reproduces the QAT model."""
    import keras

    from compress import io, training
    from compress.data import load_data, prepare
    from compress.quantization import quantize

    training.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8)).astype("float32")
    y = (x @ rng.normal(size=8)).astype("float32")  # targets within about [-7, 7]
    np.savez(tmp_path / "reg.npz", x_train=x[:500], y_train=y[:500], x_test=x[500:],
             y_test=y[500:])
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, "relu", name="dense"),
                              keras.layers.Dense(1, name="dense_1")])
    model.compile("adam", "mse")
    model.fit(x[:500], y[:500], epochs=30, verbose=0)
    model.save(tmp_path / "reg.keras")
    model = io.load_model(tmp_path / "reg.keras")
    ds = prepare(model, load_data(f"npz:{tmp_path / 'reg.npz'}", 0))
    _, info = quantize(model, ds, qat=True, epochs=2, latency=False)
    assert info["qat"]["trained_float_sqnr_db"] >= 20.0, info["qat"]
    assert info["sqnr_db"] >= 20.0 and "accuracy" not in info


def test_qat_warns_when_most_weights_train_in_float(cli, tmp_path):
    """An LSTM classifier: QAT fake-quantized the Dense head only (1 of 3 weighted
    layers, 2% of the matrices) and reported "fake_quantized_layers 1" as if the model
    had been taught int8. The report now warns, naming what trained in float; a CNN
    whose layers are all fake-quantized gets no such line."""
    import keras

    from compress.quantization.qat import qat_finetune

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6, 3)).astype("float32")
    y = (x[:, :, 0].sum(1) > 0).astype("int64")
    model = keras.Sequential([keras.Input((6, 3)), keras.layers.LSTM(8, name="lstm"),
                              keras.layers.Dense(2, activation="softmax", name="head")])
    path = tmp_path / "lstm.keras"
    model.save(path)
    np.savez(tmp_path / "d.npz", x_train=x[:64], y_train=y[:64], x_test=x[64:],
             y_test=y[64:])
    r = cli("quantize", path, "-o", tmp_path / "q.tflite", "--data", f"npz:{tmp_path}/d.npz",
            "--qat", "--epochs", "1")
    assert r.exit_code == 0, r.output
    assert "warning: 'lstm' (352 of the 368 weight-matrix values) trained in float" in \
        " ".join(r.output.split())
    from compress.data import as_dataset

    cnn = _bn_model()
    data = as_dataset((rng.random((32, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 32)),
                      cnn)
    _, info = qat_finetune(cnn, data, epochs=1)
    assert "float_note" not in info


def test_qat_fake_quantizes_conv1d_and_the_int8_file_follows(tmp_path):
    """A forecaster of causal, dilated Conv1D layers (a TCN; one with a BatchNorm folded
    into it) trained in float under QAT (only its Dense layers were fake-quantized);
    Conv1D layers now are. TFLite runs them as CONV_2D ops; a dilated one as
    SpaceToBatchND, CONV_2D, BatchToSpaceND with its bias and ReLU after, so its learned
    (post-ReLU) range must not go to the CONV_2D output: it did, clipped the negative
    values, and the int8 file was 16 dB from the QAT model, its MSE twice the float's."""
    import keras

    from compress import training
    from compress.data import as_dataset
    from compress.quantization import quantize
    from compress.quantization.qat import qat_finetune

    training.set_seed(0)
    rng = np.random.default_rng(0)
    t = np.arange(1400, dtype="float64")
    wave = np.sin(t / 7.0) + 0.6 * np.sin(t / 3.1 + 1.0) + 0.1 * rng.normal(size=t.size)
    x = np.stack([wave[i:i + 32] for i in range(1360)])[..., None].astype("float32")
    y = wave[32:1392, None].astype("float32")
    L = keras.layers
    model = keras.Sequential([
        keras.Input((32, 1)), L.Conv1D(16, 3, padding="causal", use_bias=False, name="c1"),
        L.BatchNormalization(name="bn"), L.ReLU(),
        L.Conv1D(16, 3, padding="causal", dilation_rate=2, activation="relu", name="c2"),
        L.Conv1D(16, 3, padding="causal", dilation_rate=4, activation="relu", name="c3"),
        L.GlobalAveragePooling1D(), L.Dense(16, activation="relu", name="fc"),
        L.Dense(1, name="out")])
    model.compile(keras.optimizers.Adam(3e-3), "mse")
    model.fit(x[:1000], y[:1000], epochs=10, batch_size=32, verbose=0)
    data = as_dataset((x[:1000], y[:1000]), model, validation=(x[1000:], y[1000:]))
    _, info = qat_finetune(model, data, epochs=1, learning_rate=1e-4)
    assert info["folded_batchnorm"] == 1 and info["fake_quantized_layers"] == 5
    assert "float_note" not in info
    _, info = quantize(model, data, qat=True, epochs=2, learning_rate=1e-4, latency=False)
    assert info["qat"]["trained_float_sqnr_db"] >= 22.0, info["qat"]  # 16 dB with the bug


def test_qat_of_a_layer_called_twice_puts_its_range_on_both_ops(tmp_path):
    """A Siamese head (one Dense called on two branches) becomes two FULLY_CONNECTED ops
    with one kernel: QAT refused the model ("QAT ranges do not match the converted
    graph"); both ops now take the layer's one learned range."""
    import keras

    from compress import training
    from compress.quantization import quantize

    training.set_seed(0)
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=(400, 8)).astype("float32") for _ in range(2))
    y = (np.abs(a - b).sum(axis=1) > np.median(np.abs(a - b).sum(axis=1))).astype("int64")
    ia, ib = keras.Input((8,), name="left"), keras.Input((8,), name="right")
    head = keras.layers.Dense(16, activation="relu", name="shared")
    h = keras.layers.Subtract(name="diff")([head(ia), head(ib)])
    model = keras.Model([ia, ib], keras.layers.Dense(2, activation="softmax", name="cls")(
        keras.layers.Dense(16, activation="relu", name="mix")(h)), name="siamese")
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit({"left": a, "right": b}, y, epochs=5, verbose=0)
    data = ({"left": a, "right": b}, y)
    _, info = quantize(model, data, qat=True, epochs=1, latency=False)
    assert info["qat"]["fake_quantized_layers"] == 3
    assert info["sqnr_db"] >= 20.0 and info["top1_agreement"] >= 0.95, info


def test_qat_reaches_a_base_model_used_as_a_layer():
    """The transfer-learning pattern: a trained base (a Functional model of its own,
    called with ``training=False``) under a new head. QAT fake-quantized the head only,
    so the base, nearly every weight, trained in float (no better than post-training
    int8). Its convolutions are now fake-quantized too (its BatchNorms folded), one that
    cannot fold stays in inference mode as the model asked, and the int8 file follows
    the QAT model through the learned ranges. A base inside a Sequential model is
    reached as well."""
    import keras

    from compress import training
    from compress.data import load_data, prepare
    from compress.quantization import quantize
    from compress.quantization.qat import qat_finetune

    L = keras.layers
    training.set_seed(0)

    def base(name):
        i = keras.Input((8, 8, 1))
        h = L.Conv2D(8, 3, padding="same", use_bias=False, name=f"{name}_c1")(i)
        h = L.ReLU(name=f"{name}_r1")(L.BatchNormalization(name=f"{name}_bn1")(h))
        h = L.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_dw")(h)
        h = L.ReLU(name=f"{name}_r2")(L.BatchNormalization(name=f"{name}_bn2")(h))
        h = L.BatchNormalization(name=f"{name}_bn3")(L.Conv2D(16, 1, activation="relu",
                                                               name=f"{name}_c2")(h))
        return keras.Model(i, h, name=name)

    inp = keras.Input((8, 8, 1))
    h = L.GlobalAveragePooling2D()(base("base")(inp, training=False))
    model = keras.Model(inp, L.Dense(10, activation="softmax", name="head")(h))
    ds = prepare(model, load_data("digits", 0))
    training.compile_classifier(model, learning_rate=3e-3)
    training.fit(model, ds, epochs=20, verbose=0)
    _, info = quantize(model, ds, qat=True, epochs=3, learning_rate=1e-3, latency=False)
    qat = info["qat"]
    assert qat["folded_batchnorm"] == 2 and qat["fake_quantized_layers"] == 4, qat
    assert qat["float_layers"] == ["base_bn3"] and "float_note" not in qat
    assert qat["test_accuracy"] > 0.5
    assert abs(info["accuracy"] - qat["test_accuracy"]) <= 0.02, (info["accuracy"], qat)
    folded, _ = qat_finetune(model, ds, epochs=1, learning_rate=1e-3)
    bn3 = folded.get_layer("base").get_layer("base_bn3")
    np.testing.assert_array_equal(np.asarray(bn3.moving_mean), np.asarray(
        model.get_layer("base").get_layer("base_bn3").moving_mean))  # inference mode kept
    seq = keras.Sequential([keras.Input((8, 8, 1)), base("inner"), L.Flatten(),
                            L.Dense(10, activation="softmax")])
    folded, info = qat_finetune(seq, prepare(seq, load_data("digits", 0)), epochs=1)
    assert info["folded_batchnorm"] == 2 and info["fake_quantized_layers"] == 4, info
    assert [type(la).__name__ for la in folded.layers] == ["Functional", "Flatten", "Dense"]


def test_qat_through_quantize_is_seeded(cnn_file):
    """``quantize(qat=True)`` trained from whatever random state the process was in (the
    CLI seeds each command; the Python API did not), so two calls in a row gave two
    different QAT models; it is seeded by ``seed`` now, as the other passes are."""
    from compress import io
    from compress.quantization import quantize

    path, ds = cnn_file
    runs = [quantize(io.load_model(path), ds, qat=True, epochs=1, learning_rate=1e-3,
                     latency=False, seed=seed)[0] for seed in (3, 3, 4)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_qat_fake_quantizes_separable_convolutions_and_the_int8_file_follows():
    """SeparableConv2D (Xception, the Keras guide's image classifier) trained in float
    under QAT. TFLite runs it as a DEPTHWISE_CONV_2D with an int8 output of its own, then
    a 1x1 CONV_2D: the twin fake-quantizes both kernels and both outputs, a BatchNorm
    after it folds into the pointwise kernel, and the int8 file reproduces the QAT
    model."""
    import keras

    from compress import training
    from compress.data import load_data, prepare
    from compress.quantization import quantize
    from compress.quantization.qat import fold_batchnorm

    L = keras.layers
    training.set_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), L.Conv2D(8, 3, padding="same", activation="relu"),
        L.SeparableConv2D(16, 3, padding="same", use_bias=False, name="sep"),
        L.BatchNormalization(name="bn"), L.ReLU(),
        L.SeparableConv2D(16, 3, padding="same", depth_multiplier=2, activation="relu",
                          name="sep2"),
        L.GlobalAveragePooling2D(), L.Dense(10, activation="softmax")])
    ds = prepare(model, load_data("digits", 0))
    training.compile_classifier(model, learning_rate=3e-3)
    training.fit(model, ds, epochs=15, verbose=0)
    folded, n = fold_batchnorm(model)
    assert n == 1
    x = ds.x_test[:64]
    np.testing.assert_allclose(training.predict(folded, x), training.predict(model, x),
                               atol=1e-5)
    _, info = quantize(model, ds, qat=True, epochs=3, learning_rate=1e-3, latency=False)
    qat = info["qat"]
    assert qat["fake_quantized_layers"] == 4 and "float_note" not in qat, qat
    assert qat["test_accuracy"] > 0.5
    assert abs(info["accuracy"] - qat["test_accuracy"]) <= 0.02, (info["accuracy"], qat)


def test_qat_finds_the_first_convolution_after_a_rescaling():
    """``Rescaling(1 / 255)`` in front of the first Conv2D (the Keras guides' models):
    the converter folds the scale into that convolution's filter, whose values then match
    no learned layer, and QAT refused the model ("QAT ranges do not match the converted
    graph"). The one op left with that kernel size is that layer."""
    import keras

    from compress import training
    from compress.data import load_data, prepare
    from compress.quantization import quantize

    L = keras.layers
    training.set_seed(0)
    inp = keras.Input((8, 8, 1))  # the guide "Image classification from scratch", smaller
    x = L.Conv2D(16, 3, strides=2, padding="same")(L.Rescaling(1 / 16)(inp))
    x = L.Activation("relu")(L.BatchNormalization()(x))
    previous = x
    for size in (16, 32):
        x = L.SeparableConv2D(size, 3, padding="same")(L.Activation("relu")(x))
        x = L.Activation("relu")(L.BatchNormalization()(x))
        x = L.BatchNormalization()(L.SeparableConv2D(size, 3, padding="same")(x))
        x = L.MaxPooling2D(3, strides=2, padding="same")(x)
        x = L.add([x, L.Conv2D(size, 1, strides=2, padding="same")(previous)])
        previous = x
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, L.Dense(10, activation="softmax")(L.Dropout(0.25)(x)))
    import dataclasses

    # the digits in their raw 0..16 range, which the Rescaling(1 / 16) expects (as the
    # guide's model takes 0..255 pixels): in [0, 1] the first BatchNorm saw variances of
    # 1e-4 that its moving average had not reached after 15 epochs (validation at 10%)
    ds = prepare(model, load_data("digits", 0))
    ds = dataclasses.replace(ds, **{k: getattr(ds, k) * np.float32(16)
                                    for k in ("x_train", "x_val", "x_test")})
    training.compile_classifier(model, learning_rate=3e-3)
    training.fit(model, ds, epochs=15, verbose=0)
    _, info = quantize(model, ds, qat=True, epochs=2, learning_rate=1e-3, latency=False)
    assert info["qat"]["fake_quantized_layers"] == 8 and info["qat"]["test_accuracy"] > 0.5
    assert abs(info["accuracy"] - info["qat"]["test_accuracy"]) <= 0.02, info


def test_qat_with_per_tensor_weights_writes_per_tensor_weights():
    """``--qat --per-tensor``: QAT trained on per-tensor weight grids, but the quantizer
    that applies the learned ranges was left at its default and wrote per-channel
    weights: not the grid asked for (an NPU that takes per-tensor only would refuse the
    file) nor the one trained on (on MobileNetV2 the int8 file was 6 pts below its QAT
    model). Every weight tensor now has one scale, and the file follows the QAT model."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from compress import training
    from compress.data import load_data, prepare
    from compress.quantization import quantize

    L = keras.layers
    training.set_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), L.Conv2D(8, 3, padding="same", activation="relu"),
        L.DepthwiseConv2D(3, padding="same", activation="relu"), L.Conv2D(16, 1),
        L.ReLU(), L.GlobalAveragePooling2D(), L.Dense(10, activation="softmax")])
    ds = prepare(model, load_data("digits", 0))
    training.compile_classifier(model, learning_rate=3e-3)
    training.fit(model, ds, epochs=15, verbose=0)
    content, info = quantize(model, ds, qat=True, per_channel=False, epochs=2,
                             learning_rate=1e-3, latency=False)
    interp = Interpreter(model_content=content)
    scales = []
    for d in interp.get_tensor_details():
        if d["dtype"] == np.int8 and len(d["shape"]) in (2, 4):
            try:
                interp.get_tensor(d["index"])  # constants only
            except ValueError:
                continue
            scales.append(len(d["quantization_parameters"]["scales"]))
    assert scales and set(scales) == {1}, scales
    assert abs(info["accuracy"] - info["qat"]["test_accuracy"]) <= 0.02, info
