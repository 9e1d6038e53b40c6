"""The zoo's hand-written cases (#19): model shapes the ``keras.applications`` families
do not cover, each built small, with its data as an npz file.

- ``Subclassed``: a registered ``keras.Model`` subclass (its own ``call``); it has no
  input signature, so the zoo gives it the data's sample shape, as the CLI does.
- ``TransferNest``: ``MobileNetV2(include_top=False)`` used as a layer under a new head.
- ``TwoInput`` / ``TwoOutput``: an image and a feature vector in; a class and a score out.
- ``CustomLayer``: a model with a registered custom layer (``ChannelGain``).
- ``MixedFloat16``: a model built under the ``mixed_float16`` dtype policy.
- ``TextRNN``: token ids through a masked Embedding, a Bidirectional LSTM and a GRU.
- ``Signal1D``: 64 steps of 6 channels through Conv1D, SeparableConv1D and a dilated
  causal Conv1D (an IMU activity classifier's shape).
- ``Video``: frames through TimeDistributed Conv2D/pooling/Dense, then a GRU.
- ``Siamese``: two inputs through one shared encoder and one shared head.
- ``TextVectorize``: sentences (a string input) through ``TextVectorization`` inside the
  model, as the keras.io guide exports its end-to-end text classifier.
- ``Tabular``: a string column through ``StringLookup`` and numeric columns through an
  adapted ``Normalization``, as the structured-data guides build them.

The two registered classes live in bench/zoo_user_layers.py and are loaded the way
``--import bench/zoo_user_layers.py`` loads them (:func:`compress.io.import_modules`); the
saved files load only after that. Data follow the npz key convention of
:func:`compress.data.load_data`: ``x_SPLIT/INPUT`` and ``y_SPLIT/OUTPUT`` for several
inputs or outputs (tests/test_multi_io.py).

Example:

>>> from bench.zoo_models import CASES
>>> model, npz, imports = CASES["TwoInput"][1](Path("/tmp/w"), seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

USER_MODULE = Path(__file__).resolve().parent / "zoo_user_layers.py"
# its registered names (not imported from it: importing would register them)
REGISTERED = ("zoo_bench>ChannelGain", "zoo_bench>SubNet")
N = 240  # samples of the small multi-input/output data (8x8 images, 6 features)


def _user_module():
    from compress import io

    (module,) = io.import_modules([USER_MODULE])  # what --import FILE.py does
    return module


def forget_user_classes() -> None:
    """Unregister the user module's classes: a saved model then needs ``--import`` again."""
    import keras

    for key in REGISTERED:
        keras.saving.get_custom_objects().pop(key, None)


def _small_data(seed: int):
    """``(image, extra, label, score)``: 8x8 images, 6 features, 4 classes, a score."""
    import numpy as np

    rng = np.random.default_rng(seed)
    image = rng.normal(size=(N, 8, 8, 1)).astype("float32")
    extra = rng.normal(size=(N, 6)).astype("float32")
    label = ((image.mean(axis=(1, 2, 3)) * 8 > 0).astype("int64")
             + 2 * (extra[:, 1] > 0).astype("int64"))
    score = (image.mean(axis=(1, 2, 3)) * 8 + extra[:, 2]).astype("float32")
    return image, extra, label, score


def _photos_npz(work: Path, seed: int):
    """32x32 photo patches (bench/cases/zoo.py's) and their npz (no labels)."""
    import numpy as np

    from bench.cases.zoo import SAMPLES, _photos

    x = _photos(32, 3 * SAMPLES, seed)
    npz = work / "photos32.npz"
    if not npz.exists():
        np.savez(npz, x_train=x[:2 * SAMPLES], x_test=x[2 * SAMPLES:])
    return x[:2 * SAMPLES], npz


def subclassed(work: Path, seed: int = 0):
    """A registered ``keras.Model`` subclass trained briefly on the small images."""
    import keras
    import numpy as np

    image, _, label, _ = _small_data(seed)
    keras.utils.set_random_seed(seed)
    model = _user_module().SubNet(classes=4, name="subnet")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(image, label, epochs=2, verbose=0)
    npz = work / "subclassed.npz"
    np.savez(npz, x_train=image, y_train=label)
    return model, npz, [str(USER_MODULE)]


def transfer_nest(work: Path, seed: int = 0):
    """``MobileNetV2(include_top=False, alpha=0.35)`` as a layer, pooled, a Dense head."""
    import keras

    from compress.models import application, recalibrate_batchnorm

    x, npz = _photos_npz(work, seed)
    keras.utils.set_random_seed(seed)
    base = application("MobileNetV2", 32, include_top=False, alpha=0.35)
    inp = keras.Input((32, 32, 3))
    out = keras.layers.Dense(10, activation="softmax", name="head")(
        keras.layers.GlobalAveragePooling2D(name="pool")(base(inp)))
    model = keras.Model(inp, out, name="transfer")
    recalibrate_batchnorm(model, x)
    return model, npz, []


def two_input(work: Path, seed: int = 0):
    """An image and a feature vector in, 4 classes out (trained 8 epochs)."""
    import keras
    import numpy as np

    image, extra, label, _ = _small_data(seed)
    keras.utils.set_random_seed(seed)
    ia, ib = keras.Input((8, 8, 1), name="image"), keras.Input((6,), name="extra")
    h = keras.layers.Flatten(name="flat")(keras.layers.Conv2D(4, 3, activation="relu",
                                                              name="conv")(ia))
    h = keras.layers.Concatenate(name="concat")(
        [h, keras.layers.Dense(8, activation="relu", name="extra_dense")(ib)])
    h = keras.layers.Dense(16, activation="relu", name="hidden")(h)
    model = keras.Model([ia, ib], keras.layers.Dense(4, activation="softmax", name="cls")(h),
                        name="two_in")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit({"image": image, "extra": extra}, label, epochs=8, verbose=0)
    npz = work / "two_input.npz"
    np.savez(npz, **{"x_train/image": image, "x_train/extra": extra, "y_train": label})
    return model, npz, []


def two_output(work: Path, seed: int = 0):
    """An image in; a 2-class softmax and a regression score out (trained 8 epochs)."""
    import keras
    import numpy as np

    image, _, label, score = _small_data(seed)
    keras.utils.set_random_seed(seed)
    ix = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Flatten(name="flat")(keras.layers.Conv2D(4, 3, activation="relu",
                                                              name="conv")(ix))
    h = keras.layers.Dense(16, activation="relu", name="hidden")(h)
    model = keras.Model(ix, {"cls": keras.layers.Dense(2, activation="softmax",
                                                       name="cls")(h),
                             "score": keras.layers.Dense(1, name="score")(h)},
                        name="two_out")
    model.compile("adam", loss={"cls": "sparse_categorical_crossentropy", "score": "mse"},
                  metrics={"cls": ["accuracy"], "score": ["mae"]})
    cls = label % 2
    model.fit(image, {"cls": cls, "score": score}, epochs=8, verbose=0)
    npz = work / "two_output.npz"
    np.savez(npz, **{"x_train": image, "y_train/cls": cls, "y_train/score": score})
    return model, npz, []


def custom_layer(work: Path, seed: int = 0):
    """Three convolutions with the user's ``ChannelGain`` after the first, a Dense head."""
    import keras

    from compress.models import recalibrate_batchnorm

    x, npz = _photos_npz(work, seed)
    user = _user_module()
    keras.utils.set_random_seed(seed)
    inp = keras.Input((32, 32, 3))
    h = keras.layers.Rescaling(1 / 255.0, name="scale")(inp)
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(h)
    h = user.ChannelGain(name="gain")(h)
    h = keras.layers.Conv2D(16, 3, activation="relu", name="c2")(h)
    h = keras.layers.Conv2D(16, 3, activation="relu", name="c3")(h)
    out = keras.layers.Dense(10, activation="softmax", name="out")(
        keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out, name="custom")
    recalibrate_batchnorm(model, x)
    return model, npz, [str(USER_MODULE)]


def mixed_float16(work: Path, seed: int = 0):
    """Conv, BatchNorm, conv, Dense logits under ``mixed_float16``; a float32 softmax."""
    import keras

    from compress.models import recalibrate_batchnorm

    x, npz = _photos_npz(work, seed)
    keras.utils.set_random_seed(seed)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        inp = keras.Input((32, 32, 3))
        h = keras.layers.Rescaling(1 / 255.0, name="scale")(inp)
        h = keras.layers.Conv2D(16, 3, name="c1")(h)
        h = keras.layers.BatchNormalization(name="bn1")(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.Conv2D(16, 3, activation="relu", name="c2")(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        out = keras.layers.Dense(10, name="logits")(h)
        out = keras.layers.Activation("softmax", dtype="float32", name="probs")(out)
        model = keras.Model(inp, out, name="mixed")
    finally:
        keras.config.set_dtype_policy(policy)
    recalibrate_batchnorm(model, x)
    return model, npz, []


def _sequences(seed: int, n: int = 600):
    """``(tokens, signal, label)``: 20 token ids (0 pads the tails) and 64 steps of 6
    channels, 3 classes the sequences really carry."""
    import numpy as np

    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n)
    tokens = rng.integers(1, 40, (n, 20))
    tokens[np.arange(n), rng.integers(0, 8, n)] = 40 + label  # one telling token
    for i, length in enumerate(rng.integers(12, 21, n)):
        tokens[i, length:] = 0
    t = np.linspace(0, 4 * np.pi, 64)
    signal = rng.normal(scale=0.3, size=(n, 64, 6))
    signal[..., 0] += np.sin(np.outer(label + 1, t))
    return tokens.astype("int32"), signal.astype("float32"), label


def _trained(model, x, y, work: Path, name: str, epochs: int = 20):
    """``(model, npz, [])``: ``model`` compiled as a classifier, trained ``epochs`` on
    ``x`` (an array, or a dict by input name) and ``y``, its data saved as ``NAME.npz``."""
    import numpy as np

    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, verbose=0)
    npz = work / f"{name}.npz"
    arrays = {f"x_train/{k}": v for k, v in x.items()} if isinstance(x, dict) \
        else {"x_train": x}
    np.savez(npz, **arrays, y_train=y)
    return model, npz, []


def text_rnn(work: Path, seed: int = 0):
    """Token ids, ``Embedding(mask_zero=True)``, a Bidirectional LSTM, a GRU, a softmax."""
    import keras

    tokens, _, label = _sequences(seed)
    keras.utils.set_random_seed(seed)
    inp = keras.Input((20,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(44, 16, mask_zero=True, name="embed")(inp)
    h = keras.layers.Bidirectional(keras.layers.LSTM(16, return_sequences=True),
                                   name="bilstm")(h)
    h = keras.layers.GRU(16, name="gru")(h)
    out = keras.layers.Dense(3, activation="softmax", name="cls")(h)
    return _trained(keras.Model(inp, out, name="text_rnn"), tokens, label, work, "text_rnn")


def signal_1d(work: Path, seed: int = 0):
    """64 steps x 6 channels: Conv1D + BatchNorm, SeparableConv1D, a dilated causal
    Conv1D, pooled, a softmax (an IMU activity classifier's shape)."""
    import keras

    _, signal, label = _sequences(seed)
    keras.utils.set_random_seed(seed)
    inp = keras.Input((64, 6), name="signal")
    h = keras.layers.Conv1D(16, 5, name="c1")(inp)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(h))
    h = keras.layers.SeparableConv1D(24, 5, activation="relu", name="sep")(h)
    h = keras.layers.Conv1D(24, 3, padding="causal", dilation_rate=2, activation="relu",
                            name="dilated")(h)
    out = keras.layers.Dense(3, activation="softmax", name="cls")(
        keras.layers.GlobalAveragePooling1D(name="pool")(h))
    return _trained(keras.Model(inp, out, name="signal_1d"), signal, label, work,
                    "signal_1d")


def video(work: Path, seed: int = 0):
    """6 frames of 16x16: a per-frame Conv2D, pooling and Dense (``TimeDistributed``), a GRU
    over the frames, a softmax; the class is where a bright band lies in every frame."""
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, 600)
    frames = rng.normal(size=(600, 6, 16, 16, 1)).astype("float32")
    for i, c in enumerate(label):
        frames[i, :, 4 * c:4 * c + 4] += 2.0
    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input((6, 16, 16, 1), name="frames")
    h = L.TimeDistributed(L.Conv2D(8, 3, activation="relu"), name="td_conv")(inp)
    h = L.TimeDistributed(L.GlobalAveragePooling2D(), name="td_pool")(h)
    h = L.TimeDistributed(L.Dense(16, activation="relu"), name="td_dense")(h)
    out = L.Dense(3, activation="softmax", name="cls")(L.GRU(16, name="gru")(h))
    return _trained(keras.Model(inp, out, name="video"), frames, label, work, "video")


def siamese(work: Path, seed: int = 0):
    """Two 16-feature inputs through one shared encoder (a nested Sequential) and one
    shared Dense head, their difference classified: same pair or not."""
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    left = rng.normal(size=(800, 16)).astype("float32")
    right = rng.normal(size=(800, 16)).astype("float32")
    same = rng.integers(0, 2, 800)
    right[same == 1] = left[same == 1] + 0.3 * rng.normal(size=((same == 1).sum(), 16))
    keras.utils.set_random_seed(seed)
    L = keras.layers
    encoder = keras.Sequential([keras.Input((16,)), L.Dense(32, activation="relu", name="e1"),
                                L.Dense(16, name="e2")], name="encoder")
    ia, ib = keras.Input((16,), name="left"), keras.Input((16,), name="right")
    diff = L.Subtract(name="diff")([encoder(ia), encoder(ib)])
    head = L.Dense(8, activation="relu", name="shared_head")
    h = L.Concatenate(name="both")([head(diff), head(L.Multiply(name="square")([diff, diff]))])
    model = keras.Model([ia, ib], L.Dense(2, activation="softmax", name="cls")(h),
                        name="siamese")
    return _trained(model, {"left": left, "right": right}, same, work, "siamese", epochs=10)


def _fit_text(model, x, y, work: Path, name: str, epochs: int):
    """:func:`_trained` for inputs that hold strings: Keras's ``fit`` takes them as
    TensorFlow tensors, not NumPy arrays; the npz keeps the NumPy strings."""
    import numpy as np
    import tensorflow as tf

    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    tensors = {k: tf.constant(v) for k, v in x.items()}
    model.fit(tensors if len(tensors) > 1 else next(iter(tensors.values())), y,
              epochs=epochs, verbose=0)
    npz = work / f"{name}.npz"
    arrays = {f"x_train/{k}": v for k, v in x.items()} if len(x) > 1 else \
        {"x_train": next(iter(x.values()))}
    np.savez(npz, **arrays, y_train=y)
    return model, npz, []


def text_vectorize(work: Path, seed: int = 0):
    """Sentences in (a string input), ``TextVectorization`` adapted on them, Embedding,
    Conv1D, pooling, a softmax: the end-to-end text classifier of the keras.io guide."""
    import keras
    import numpy as np

    tokens, _, label = _sequences(seed)
    words = np.array(["<pad>"] + [f"word{i}" for i in range(1, 40)] +
                     ["good", "bad", "neutral"])
    text = np.array([" ".join(words[t[t > 0]]) for t in tokens])[:, None]
    keras.utils.set_random_seed(seed)
    L = keras.layers
    vectorize = L.TextVectorization(max_tokens=64, output_sequence_length=20,
                                    name="vectorize")
    vectorize.adapt(text[:, 0])
    inp = keras.Input((1,), dtype="string", name="text")
    h = L.Embedding(64, 16, name="embed")(vectorize(inp))
    h = L.Conv1D(16, 3, activation="relu", name="conv")(h)
    out = L.Dense(3, activation="softmax", name="cls")(L.GlobalMaxPooling1D(name="pool")(h))
    return _fit_text(keras.Model(inp, out, name="text_vectorize"), {"text": text}, label,
                     work, "text_vectorize", epochs=15)


def tabular(work: Path, seed: int = 0):
    """A table in: a string column through ``StringLookup`` (one-hot) and two numeric
    columns through an adapted ``Normalization``, two Dense layers, a softmax (the
    structured-data guide's shape)."""
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    n = 600
    city = rng.choice(["paris", "rome", "oslo", "lima", "cairo"], size=(n, 1))
    numbers = np.stack([rng.normal(40, 12, n), rng.normal(3000, 900, n)], 1).astype("float32")
    label = (np.isin(city[:, 0], ["paris", "oslo"]).astype(int)
             + (numbers[:, 0] > 45) + (numbers[:, 1] > 3500)).clip(0, 2)
    keras.utils.set_random_seed(seed)
    L = keras.layers
    lookup = L.StringLookup(output_mode="one_hot", name="city_lookup")
    lookup.adapt(city)
    norm = L.Normalization(name="norm")
    norm.adapt(numbers)
    ic, ix = keras.Input((1,), dtype="string", name="city"), keras.Input((2,), name="numbers")
    h = L.Concatenate(name="features")([L.Flatten(name="flat")(lookup(ic)), norm(ix)])
    h = L.Dense(32, activation="relu", name="d1")(h)
    h = L.Dense(16, activation="relu", name="d2")(h)
    model = keras.Model({"city": ic, "numbers": ix},
                        L.Dense(3, activation="softmax", name="cls")(h), name="tabular")
    return _fit_text(model, {"city": city, "numbers": numbers}, label, work, "tabular",
                     epochs=30)


#: name -> (label in the table, builder ``(work, seed) -> (model, npz, imports)``)
CASES = {
    "Subclassed": ("Subclassed (hand-written: keras.Model subclass, 8x8)", subclassed),
    "TransferNest": ("TransferNest (hand-written: MobileNetV2 base as a layer, 32x32)",
                     transfer_nest),
    "TwoInput": ("TwoInput (hand-written: 8x8 image + 6 features)", two_input),
    "TwoOutput": ("TwoOutput (hand-written: class + score)", two_output),
    "CustomLayer": ("CustomLayer (hand-written: registered layer, --import)", custom_layer),
    "MixedFloat16": ("MixedFloat16 (hand-written: mixed_float16 policy, 32x32)",
                     mixed_float16),
    "TextRNN": ("TextRNN (hand-written: masked Embedding, Bidirectional LSTM, GRU)",
                text_rnn),
    "Signal1D": ("Signal1D (hand-written: Conv1D, SeparableConv1D, dilated causal)",
                 signal_1d),
    "Video": ("Video (hand-written: TimeDistributed Conv2D and Dense, GRU)", video),
    "Siamese": ("Siamese (hand-written: shared encoder and head on two inputs)", siamese),
    "TextVectorize": ("TextVectorize (hand-written: string input, TextVectorization)",
                      text_vectorize),
    "Tabular": ("Tabular (hand-written: StringLookup column, adapted Normalization)",
                tabular),
}
