"""Structured pruning rebuilds smaller plain models with consumers fixed up."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from compress.errors import CompressError
from compress.pruning import prune
from compress.pruning.structured import prune_units


def _kill(layer, units):
    """Zero the outgoing weights (and bias) of ``units``: they then carry nothing."""
    w = layer.get_weights()
    w[0][..., units] = 0.0
    if len(w) > 1:
        w[1][units] = 0.0
    layer.set_weights(w)


def test_removing_dead_units_keeps_outputs_identical_residual_concat_flatten():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inp)
    b = keras.layers.Conv2D(8, 3, padding="same", name="c2")(a)
    b = keras.layers.BatchNormalization(name="bn")(b)
    s = keras.layers.Add(name="add")([a, b])
    s = keras.layers.ReLU()(s)
    c = keras.layers.Conv2D(4, 3, padding="same", name="c3")(s)
    cat = keras.layers.Concatenate(name="cat")([s, c])
    f = keras.layers.Flatten()(cat)
    h = keras.layers.Dense(10, activation="relu", name="fc")(f)
    out = keras.layers.Dense(3, activation="softmax", name="out")(h)
    model = keras.Model(inp, out)
    dead = [1, 4, 6, 7]
    _kill(model.get_layer("c1"), dead)
    _kill(model.get_layer("c2"), dead)  # same channels: the Add group is dead as a whole
    _kill(model.get_layer("c3"), [0, 3])
    _kill(model.get_layer("fc"), [2, 5, 8, 9, 0])
    x = np.random.default_rng(0).normal(size=(5, 6, 6, 3)).astype("float32")
    small, info = prune_units(model, 0.5)
    assert info["units"] == {"c1": [8, 4], "c2": [8, 4], "c3": [4, 2], "fc": [10, 5],
                             "out": [3, 3]}
    np.testing.assert_allclose(small(x).numpy(), model(x).numpy(), atol=1e-5)
    assert info["params_after"] < info["params_before"] / 2


def test_structured_prune_pass_on_cnn_file_saves_plain_smaller_model(cnn_file, tmp_path):
    from compress import io, training

    path, ds = cnn_file
    model = io.load_model(path)
    small, info = prune(model, ds, structured=True, sparsity=0.5, epochs=1)
    assert info["units"]["conv1"] == [8, 4] and info["units"]["conv2"] == [16, 8]
    assert small.count_params() < model.count_params()
    out = tmp_path / "small.keras"
    small.save(out)
    loaded = keras.models.load_model(out)
    assert loaded.get_layer("bn1").gamma.shape == (4,)
    acc = training.accuracy(loaded, ds.x_test, ds.y_test)
    assert acc > 0.3  # still a working classifier (chance is 0.1)


def test_structured_obd_scores_and_sequential_mlp(mlp_file):
    from compress import io

    path, ds = mlp_file
    model = io.load_model(path)
    small, info = prune(model, ds, structured=True, method="obd", sparsity=0.25,
                        calibration=256)
    assert info["units"]["fc1"] == [32, 24] and info["units"]["predictions"] == [10, 10]
    assert small(ds.x_test[:2]).shape == (2, 10)


def test_half_channels_per_conv_and_rebuilt_equals_masked_model_bn_ranking():
    # small-cnn: Conv-BN-ReLU blocks. Pruning half the channels halves every conv (the
    # classifier is an output and keeps its 10 units), and before any fine-tuning the
    # rebuilt model computes exactly what the original does with those channels silenced
    # (conv filter, BN gamma and beta zeroed: the channel's output is 0 after BN).
    from compress.models import build

    keras.utils.set_random_seed(1)
    model = build("small-cnn", input_shape=(12, 12, 1), num_classes=4)
    rng = np.random.default_rng(1)
    for layer in model.layers:  # non-trivial BN statistics
        if type(layer).__name__ == "BatchNormalization":
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.2, 2.0, n), rng.normal(0, 0.3, n),
                               rng.normal(0, 0.3, n), rng.uniform(0.5, 2.0, n)])
    small, info = prune_units(model, 0.5, norm="bn")
    convs = [la.name for la in model.layers if type(la).__name__ == "Conv2D"]
    for name in convs:
        before, after = info["units"][name]
        assert after == before // 2
    assert info["units"]["predictions"] == [4, 4]
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    for i, name in enumerate(convs):
        conv = model.get_layer(name)
        bn = model.get_layer(f"bn{i + 1}")
        scale = np.abs(bn.gamma.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
        score = np.abs(conv.kernel.numpy()).reshape(-1, scale.size).sum(0) * scale
        drop = np.argsort(-score, kind="stable")[scale.size // 2:]
        w = masked.get_layer(name).get_weights()
        w[0][..., drop] = 0.0
        masked.get_layer(name).set_weights(w)
        g, b, mu, var = masked.get_layer(f"bn{i + 1}").get_weights()
        g[drop], b[drop] = 0.0, 0.0
        masked.get_layer(f"bn{i + 1}").set_weights([g, b, mu, var])
    x = rng.normal(size=(6, 12, 12, 1)).astype("float32")
    np.testing.assert_allclose(small(x).numpy(), masked(x).numpy(), rtol=1e-4, atol=1e-5)
    assert small.count_params() < model.count_params() / 2


def _dependency_model():
    """Residual, squeeze-and-excitation, hard-swish ``keras.ops``, depthwise and grouped
    convolutions, Reshape, a Dense on a 4-D tensor with layer scale, and a nested model:
    every kind of channel dependency of MobileNetV3, EfficientNet and ConvNeXt."""
    from keras.src.applications.convnext import LayerScale

    layers = keras.layers
    inner_in = keras.Input((6, 6, 8))
    d = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(inner_in)
    g = layers.Conv2D(8, 3, padding="same", groups=8, use_bias=False, name="gconv")(d)
    se = layers.GlobalAveragePooling2D(name="squeeze_pool")(g)
    se = layers.Reshape((1, 1, 8), name="se_reshape")(se)
    se = layers.Conv2D(4, 1, activation="relu", name="sq")(se)
    se = layers.Conv2D(8, 1, activation="sigmoid", name="ex")(se)
    block = keras.Model(inner_in, layers.Multiply(name="se_mul")([g, se]), name="block")

    inp = keras.Input((6, 6, 3))
    a = layers.Conv2D(8, 1, name="c1")(inp)
    hard_sigmoid = layers.ReLU(6.0)(a + 3.0) * (1.0 / 6.0)  # keras.ops, as MobileNetV3
    a = layers.Multiply(name="hard_swish")([a, hard_sigmoid])
    m = block(a)
    e = layers.Dense(8, name="pw")(m)  # a pointwise Dense on the 4-D tensor (ConvNeXt)
    e = LayerScale(1.0, 8, name="layer_scale")(e)
    r = layers.Add(name="residual")([m, e])
    out = layers.Dense(3, name="out")(layers.GlobalAveragePooling2D(name="pool")(r))
    return keras.Model(inp, out, name="dependencies")


def test_dependency_groups_remove_aligned_channels_exactly():
    # Channels 1, 2, 5, 6 are silenced in every producer of the residual group (c1, ex,
    # pw) and two squeeze units in sq: they carry nothing, so removing them through the
    # hard-swish ops, the nested block's depthwise/grouped convolutions and SE multiply,
    # the 4-D Dense, the layer scale and the residual Add changes no output.
    keras.utils.set_random_seed(0)
    model = _dependency_model()
    dead = [1, 2, 5, 6]
    _kill(model.get_layer("c1"), dead)
    block = model.get_layer("block")
    _kill(block.get_layer("ex"), dead)
    _kill(block.get_layer("sq"), [0, 3])
    _kill(model.get_layer("pw"), dead)
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype("float32")
    small, info = prune_units(model, 0.5)
    assert info["units"] == {"c1": [8, 4], "sq": [4, 2], "ex": [8, 4], "pw": [8, 4],
                             "out": [3, 3]}
    assert info["not_pruned"] == {"reaches the model output": ["out"]}
    np.testing.assert_allclose(small(x).numpy(), model(x).numpy(), atol=1e-5)
    inner = small.get_layer("block")  # nesting kept, inner layers resized
    assert inner.get_layer("gconv").groups == 4 and inner.get_layer("dw").kernel.shape[2] == 4
    assert small.get_layer("layer_scale").gamma.shape == (4,)
    assert small.count_params() < 0.6 * model.count_params()


def test_layers_that_cannot_be_resized_are_named_not_skipped():
    # A UnitNormalization (a layer kind the dependency graph does not resize: every
    # channel's output depends on all of them) keeps the channels feeding it whole, and
    # the report says which producers and why.
    layers = keras.layers
    inp = keras.Input((6, 6, 3))
    a = layers.Conv2D(8, 3, padding="same", name="c1")(inp)
    b = layers.UnitNormalization(name="up")(a)
    c = layers.Conv2D(8, 3, padding="same", name="c2")(b)
    out = layers.Dense(2, name="out")(layers.Flatten()(c))
    small, info = prune_units(keras.Model(inp, out), 0.5)
    assert info["units"]["c2"] == [8, 4] and info["units"]["c1"] == [8, 8]
    assert info["not_pruned"] == {
        "feeds 'up' (UnitNormalization), which structured pruning cannot resize": ["c1"],
        "reaches the model output": ["out"]}
    assert "c1" in info["kept_whole"] and "up" in info["kept_whole"]
    assert small.output.shape == (None, 2)
    # nothing to prune at all: the refusal names the generic RNN layer and why the
    # embedding feeding it stays whole
    text = keras.Sequential([keras.Input((12,), dtype="int32"),
                             layers.Embedding(50, 8, name="emb"),
                             layers.RNN(layers.LSTMCell(8), name="rnn"),
                             layers.Dense(2, name="out")], name="text")
    with pytest.raises(CompressError, match=r"no units that can be removed \(feeds 'rnn' "
                       r"\(RNN\), which structured pruning cannot resize: emb; reaches the "
                       r"model output: out; layers it does not resize: rnn \(RNN\)\)"):
        prune_units(text, 0.5)


def _kill_recurrent(layer, units):
    """Zero every gate's columns of ``units`` (kernel, recurrent kernel, bias) and their
    recurrent rows: such a unit's state stays 0 from its zero start (LSTM: the candidate
    is tanh(0); GRU: tanh(0) mixed with a zero state; SimpleRNN: tanh(0))."""
    gates = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[type(layer).__name__]
    cols = [g * layer.units + j for g in range(gates) for j in units]
    kernel, recurrent, bias = layer.get_weights()
    kernel[:, cols] = 0.0
    recurrent[:, cols] = 0.0
    recurrent[units, :] = 0.0
    bias[..., cols] = 0.0
    layer.set_weights([kernel, recurrent, bias])


def test_recurrent_units_are_removed_exactly(tmp_path):
    """LSTM, GRU and SimpleRNN layers were kept whole ("cannot resize"), so structured
    pruning refused a recurrent model outright. Their units are now removed: in every
    gate of the input and recurrent kernels and the bias, the recurrent kernel's rows,
    and the next layer's inputs. Units that carry nothing go first, and the smaller
    model computes exactly what the original did."""
    layers = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((7, 3))
    h = layers.GRU(8, return_sequences=True, name="gru")(inp)
    h = layers.SimpleRNN(6, return_sequences=True, name="rnn")(h)
    h = layers.LSTM(6, name="lstm")(h)
    model = keras.Model(inp, layers.Dense(2, name="out")(h))
    for name, units in {"gru": [1, 2, 6, 7], "rnn": [0, 4, 5], "lstm": [2, 3, 5]}.items():
        _kill_recurrent(model.get_layer(name), units)
    small, info = prune_units(model, 0.5)
    assert info["units"] == {"gru": [8, 4], "rnn": [6, 3], "lstm": [6, 3], "out": [2, 2]}
    cell = small.get_layer("lstm").cell
    assert cell.kernel.shape == (3, 12) and cell.recurrent_kernel.shape == (3, 12)
    assert small.get_layer("gru").cell.bias.shape == (2, 12)  # reset_after: two rows
    x = np.random.default_rng(0).normal(size=(5, 7, 3)).astype("float32")
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)
    small.save(tmp_path / "small.keras")
    back = keras.models.load_model(tmp_path / "small.keras", safe_mode=True)
    np.testing.assert_allclose(back.predict(x, verbose=0), small.predict(x, verbose=0),
                               atol=1e-6)
    # Bidirectional: concatenated directions lose units apart; summed ones together
    keras.utils.set_random_seed(1)
    inp = keras.Input((7, 3))
    h = layers.Bidirectional(layers.LSTM(6, return_sequences=True), name="bi")(inp)
    h = layers.Bidirectional(layers.GRU(4), merge_mode="sum", name="bs")(h)
    both = keras.Model(inp, layers.Dense(2, name="out")(h))
    _kill_recurrent(both.get_layer("bi").forward_layer, [0, 2, 3])
    _kill_recurrent(both.get_layer("bi").backward_layer, [1, 4, 5])
    for direction in (both.get_layer("bs").forward_layer, both.get_layer("bs").backward_layer):
        _kill_recurrent(direction, [1, 3])
    small, info = prune_units(both, 0.5)
    assert {k: v for k, v in info["units"].items() if k != "out"} == {
        "bi/forward": [6, 3], "bi/backward": [6, 3], "bs/forward": [4, 2],
        "bs/backward": [4, 2]}
    np.testing.assert_allclose(small.predict(x, verbose=0), both.predict(x, verbose=0),
                               atol=1e-5)
    assert small.get_layer("bs").forward_layer.cell.kernel.shape == (6, 6)
    small.save(tmp_path / "bi.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "bi.keras").predict(
        x, verbose=0), small.predict(x, verbose=0), atol=1e-6)

    # Masked sequences (the mask is a second input of the layer, with no channels)
    tokens = keras.Input((9,), dtype="int32")
    h = layers.Embedding(20, 4, mask_zero=True, name="emb")(tokens)
    h = layers.LSTM(6, name="masked")(h)
    masked = keras.Model(tokens, layers.Dense(2, name="out")(h))
    _kill_recurrent(masked.get_layer("masked"), [0, 1, 4])
    table = masked.get_layer("emb").get_weights()[0]
    table[:, [1, 3]] = 0.0  # the embedding's vectors lose their dimensions 1 and 3
    masked.get_layer("emb").set_weights([table])
    smaller, info = prune_units(masked, 0.5)
    assert info["units"]["masked"] == [6, 3] and info["units"]["emb"] == [4, 2]
    assert smaller.get_layer("emb").embeddings.shape == (20, 2)
    assert smaller.get_layer("masked").cell.kernel.shape == (2, 12)
    ids = np.random.default_rng(1).integers(1, 20, (4, 9))
    ids[:, 6:] = 0  # padding
    np.testing.assert_allclose(smaller.predict(ids, verbose=0),
                               masked.predict(ids, verbose=0), atol=1e-5)
    _, info = prune(model, (x, np.zeros(5, "int64")), structured=True, method="obs",
                    sparsity=0.5)  # OBS refits the Dense; an RNN consumer is named
    assert "read by 'rnn' (SimpleRNN), which is not refit" in " ".join(
        info["not_compensated"])


def test_attention_heads_removed_whole_and_the_file_reloads(tmp_path):
    """A Keras MultiHeadAttention loses its lowest-norm heads (here: the zeroed ones, which
    carry nothing), rebuilt from its config with fewer heads: same outputs, reloadable."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((10, 16))
    att = keras.layers.MultiHeadAttention(4, 8, name="mha")
    h = keras.layers.LayerNormalization(name="ln")(keras.layers.Add()([inp, att(inp, inp)]))
    h = keras.layers.Dense(16, name="ffn_out")(keras.layers.Dense(32, activation="relu",
                                                                  name="ffn_in")(h))
    model = keras.Model(inp, keras.layers.Add()([h, inp]))
    dead = [1, 3]
    for dense in (att._query_dense, att._key_dense, att._value_dense):
        w = dense.get_weights()
        w[0][:, dead] = 0.0
        w[1][dead] = 0.0
        dense.set_weights(w)
    w = att._output_dense.get_weights()
    w[0][dead] = 0.0
    att._output_dense.set_weights(w)
    x = np.random.default_rng(0).normal(size=(4, 10, 16)).astype("float32")

    small, info = prune_units(model, 0.5)
    assert info["heads"] == {"mha": [4, 2]} and info["units"]["ffn_in"] == [32, 16]
    path = tmp_path / "small.keras"
    small.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.get_layer("mha").num_heads == 2
    assert loaded.count_params() < 0.7 * model.count_params()
    kept = np.asarray(loaded.get_layer("ffn_in").kernel)
    full = model.get_layer("ffn_in").get_weights()
    gone = [u for u in range(32) if not any(np.array_equal(full[0][:, u], c) for c in kept.T)]
    _kill(model.get_layer("ffn_in"), gone)  # what pruning removed, zeroed in the original
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)


def test_transposed_convolutions_are_resized_on_both_sides():
    # an autoencoder / U-Net decoder: Conv2DTranspose kernels are (kh, kw, filters, inputs),
    # the other way round from Conv2D's; such layers were kept whole ("cannot resize")
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    e = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="enc")(inp)
    d = keras.layers.Conv2DTranspose(6, 3, strides=2, padding="same", activation="relu",
                                     name="dec")(e)
    d = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="mix")(d)
    out = keras.layers.Conv2DTranspose(1, 3, padding="same", name="out")(d)
    model = keras.Model(inp, out)
    _kill(model.get_layer("enc"), [0, 3, 5, 6])
    w = model.get_layer("dec").get_weights()  # dead output channels: axis -2, and the bias
    w[0][..., [1, 4, 5], :] = 0.0
    w[1][[1, 4, 5]] = 0.0
    model.get_layer("dec").set_weights(w)
    _kill(model.get_layer("mix"), [2, 3])
    small, info = prune_units(model, 0.5)
    assert info["units"] == {"enc": [8, 4], "dec": [6, 3], "mix": [4, 2], "out": [1, 1]}
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)
    assert small.get_layer("dec").kernel.shape == (3, 3, 3, 4)


def test_channels_first_convolutions_are_named_in_the_refusal():
    # they were left out silently: the refusal named only the output layer
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((3, 8, 8)),
        layers.Conv2D(4, 3, data_format="channels_first", name="c1"),
        layers.Conv2D(4, 3, data_format="channels_first", name="c2"),
        layers.GlobalAveragePooling2D(data_format="channels_first"),
        layers.Dense(2, name="out")])
    with pytest.raises(CompressError, match=r"no units that can be removed \(not resized: "
                       r"channels_first data \(only channels_last layers are resized\): "
                       r"c1, c2; reaches the model output: out\)"):
        prune_units(model, 0.5)


def test_group_normalization_loses_whole_groups():
    # GroupNormalization was a wall ("cannot resize"): channels now go a group at a time,
    # the groups chosen by their summed scores, and the layer keeps its group size
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inp = keras.Input((6, 6, 3))
    a = layers.Conv2D(8, 3, padding="same", name="c1")(inp)
    g = layers.GroupNormalization(4, name="gn")(a)  # 4 groups of 2 channels
    b = layers.Conv2D(4, 3, padding="same", name="c2")(layers.ReLU()(g))
    out = layers.Dense(3, name="out")(layers.GlobalAveragePooling2D()(b))
    model = keras.Model(inp, out)
    _kill(model.get_layer("c1"), [2, 3, 6, 7])  # groups 1 and 3 carry nothing
    _kill(model.get_layer("c2"), [1, 2])
    small, info = prune_units(model, 0.5)
    assert info["units"] == {"c1": [8, 4], "c2": [4, 2], "out": [3, 3]}
    gn = small.get_layer("gn")
    assert gn.groups == 2 and small.get_layer("c1").kernel.shape[-1] == 4
    kept = [c for c in range(8) if any(np.array_equal(
        np.asarray(model.get_layer("c1").kernel)[..., c], np.asarray(
            small.get_layer("c1").kernel)[..., j]) for j in range(4))]
    assert kept == [0, 1, 4, 5]  # groups 0 and 2, whole
    np.testing.assert_allclose(np.asarray(gn.gamma),
                               np.asarray(model.get_layer("gn").gamma)[kept])
    # a dead group normalizes to its beta (0, the default): removing it changes nothing
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-4)


def test_layers_called_twice_lose_the_same_units_in_every_call(tmp_path):
    """A Siamese model (a nested encoder and a head, each called on both inputs) was
    refused ("no units that can be removed"): a shared layer's units are now one group in
    all its calls, and every call's input channels go with the first call's. Units that
    carry nothing go first, and the smaller model computes what the original did."""
    layers = keras.layers
    keras.utils.set_random_seed(0)
    encoder = keras.Sequential([keras.Input((6,)), layers.Dense(8, activation="relu",
                                                                name="e1")], name="enc")
    ia, ib = keras.Input((6,)), keras.Input((6,))
    head = layers.Dense(4, activation="relu", name="head")
    diff = layers.Subtract()([encoder(ia), encoder(ib)])
    h = layers.Concatenate()([head(diff), head(layers.Multiply()([diff, diff]))])
    model = keras.Model([ia, ib], layers.Dense(2, name="out")(h), name="siamese")
    for layer, dead in ((encoder.get_layer("e1"), [0, 3, 4, 7]), (head, [1, 2])):
        kernel, bias = layer.get_weights()
        kernel[:, dead], bias[dead] = 0.0, 0.0
        layer.set_weights([kernel, bias])
    small, info = prune_units(model, 0.5)
    assert info["units"] == {"e1": [8, 4], "head": [4, 2], "out": [2, 2]}
    assert small.get_layer("head").kernel.shape == (4, 2)
    x = [np.random.default_rng(i).normal(size=(5, 6)).astype("float32") for i in (1, 2)]
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)
    small.save(tmp_path / "small.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "small.keras").predict(
        x, verbose=0), small.predict(x, verbose=0), atol=1e-6)
    # one call reads the model input, the other a Dense's units: those units stay
    inp = keras.Input((6,))
    shared = layers.Dense(4, name="shared")
    h = layers.Add()([shared(inp), shared(layers.Dense(6, name="pre")(inp))])
    _, info = prune_units(keras.Model(inp, layers.Dense(2, name="out")(h)), 0.5)
    assert info["units"]["shared"] == [4, 2] and info["units"]["pre"] == [6, 6]
    assert info["not_pruned"]["read by 'shared', a shared layer whose other call reads "
                              "channels that stay"] == ["pre"]


def test_pooling_given_a_mask_passes_channels_through():
    """Masking, an LSTM over every step, then a GlobalAveragePooling1D that averages only
    the unmasked steps (it takes the mask too): the pooling counted as a layer that
    cannot be resized, so the model was refused. It is channel by channel, mask or not."""
    layers = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((7, 3))
    h = layers.LSTM(6, return_sequences=True, name="lstm")(layers.Masking(0.0)(inp))
    model = keras.Model(inp, layers.Dense(2, name="out")(layers.GlobalAveragePooling1D()(h)))
    _kill_recurrent(model.get_layer("lstm"), [0, 2, 5])
    small, info = prune_units(model, 0.5)
    assert info["units"]["lstm"] == [6, 3]
    x = np.random.default_rng(0).normal(size=(4, 7, 3)).astype("float32")
    x[:, 4:] = 0.0  # padding, masked
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)


def test_weights_in_layers_it_cannot_resize_are_counted_in_the_report():
    """keras.io's text transformer keeps 95% of its weights in custom layers: structured
    pruning halved the small Dense head and said nothing of the rest. The report now
    names those layers and how much of the model they hold."""
    layers = keras.layers

    class Mixer(layers.Layer):  # a custom layer with its own weights (unregistered: fine)
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], shape[-1]), name="w")

        def call(self, x):
            return x @ self.w

    inp = keras.Input((32,))
    h = Mixer(name="mixer")(inp)
    model = keras.Model(inp, layers.Dense(2, name="out")(layers.Dense(8, name="fc")(h)))
    _, info = prune_units(model, 0.5)
    assert info["units"]["fc"] == [8, 4]
    assert info["not_resized"] == ("mixer (Mixer): 1,024 of the 1,306 parameters, in layers "
                                   "structured pruning has no rule to resize")
    plain = keras.Sequential([keras.Input((4,)), layers.Dense(8), layers.Dense(2)])
    assert "not_resized" not in prune_units(plain, 0.5)[1]


def test_a_base_model_inside_a_sequential_model_is_resized():
    """``Sequential([Rescaling, base, GlobalAveragePooling2D, Dense])``, the
    transfer-learning pattern of the Keras guides, was refused ("nested model inside a
    Sequential model cannot be rebuilt"); the base is now rebuilt in place, its dead
    channels removed without changing the outputs."""
    keras.utils.set_random_seed(0)
    L = keras.layers
    i = keras.Input((6, 6, 3))
    h = L.BatchNormalization(name="bn")(L.Conv2D(8, 3, padding="same", name="c1")(i))
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="c2")(L.ReLU()(h))
    base = keras.Model(i, h, name="base")
    model = keras.Sequential([keras.Input((6, 6, 3)), L.Rescaling(0.5), base,
                              L.GlobalAveragePooling2D(), L.Dense(3, name="head")])
    _kill(base.get_layer("c1"), [0, 2, 4, 6])
    bn = base.get_layer("bn")  # the BatchNorm gives the silenced channels no offset
    bn.beta.assign(np.where(np.arange(8) % 2 == 0, 0.0, bn.beta.numpy()).astype("float32"))
    _kill(base.get_layer("c2"), [1, 3, 5, 7])
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype("float32")
    small, info = prune_units(model, 0.5)
    assert info["units"]["c1"] == [8, 4] and info["units"]["c2"] == [8, 4], info["units"]
    assert isinstance(small, keras.Sequential)
    assert small.layers[1].get_layer("c2").kernel.shape == (3, 3, 4, 4)
    np.testing.assert_allclose(small(x).numpy(), model(x).numpy(), atol=1e-5)
