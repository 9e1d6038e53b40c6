"""Named model builders used by the demo, the recipes and the benchmarks.

Each builder returns an uncompiled ``keras.Sequential`` whose last layer is a softmax
over ``num_classes``, the shape most user models have.

Example:

>>> from compress.models import build
>>> model = build("lenet300", input_shape=(28, 28, 1))
>>> model.count_params()
266610
"""

from __future__ import annotations

from compress.errors import CompressError


def lenet300(input_shape=(28, 28, 1), num_classes=10, width=1.0):
    """LeNet-300-100 (Han et al. 2015): Flatten, Dense 300, Dense 100, Dense classes."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input(input_shape),
        layers.Flatten(name="flatten"),
        layers.Dense(max(1, round(300 * width)), activation="relu", name="fc1"),
        layers.Dense(max(1, round(100 * width)), activation="relu", name="fc2"),
        layers.Dense(num_classes, activation="softmax", name="predictions"),
    ], name="lenet300")


def lenet5(input_shape=(28, 28, 1), num_classes=10, width=1.0):
    """LeNet-5 style CNN: two conv/pool blocks (20, 50 filters), Dense 500, classes."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(max(1, round(20 * width)), 5, padding="same", activation="relu",
                      name="conv1"),
        layers.MaxPooling2D(name="pool1"),
        layers.Conv2D(max(1, round(50 * width)), 5, padding="same", activation="relu",
                      name="conv2"),
        layers.MaxPooling2D(name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dense(max(1, round(500 * width)), activation="relu", name="fc1"),
        layers.Dense(num_classes, activation="softmax", name="predictions"),
    ], name="lenet5")


def small_cnn(input_shape=(28, 28, 1), num_classes=10, width=1.0):
    """A 3-block Conv-BatchNorm-ReLU CNN (32, 64, 64 filters) with global pooling."""
    import keras
    from keras import layers

    blocks = [keras.Input(input_shape)]
    for i, filters in enumerate((32, 64, 64), start=1):
        blocks += [
            layers.Conv2D(max(1, round(filters * width)), 3, padding="same", use_bias=False,
                          name=f"conv{i}"),
            layers.BatchNormalization(name=f"bn{i}"),
            layers.ReLU(name=f"relu{i}"),
        ]
        if i < 3:
            blocks.append(layers.MaxPooling2D(name=f"pool{i}"))
    blocks += [
        layers.GlobalAveragePooling2D(name="gap"),
        layers.Dense(num_classes, activation="softmax", name="predictions"),
    ]
    return keras.Sequential(blocks, name="small_cnn")


def cnn4(input_shape=(28, 28, 1), num_classes=10, width=1.0):
    """A 4-block Conv-BatchNorm-ReLU CNN (32, 64, 64, 128 filters), pooling after blocks 1-3,
    global pooling and a softmax: the cascade-learning benchmark model."""
    import keras
    from keras import layers

    blocks = [keras.Input(input_shape)]
    for i, filters in enumerate((32, 64, 64, 128), start=1):
        blocks += [
            layers.Conv2D(max(1, round(filters * width)), 3, padding="same", use_bias=False,
                          name=f"conv{i}"),
            layers.BatchNormalization(name=f"bn{i}"),
            layers.ReLU(name=f"relu{i}"),
        ]
        if i < 4:
            blocks.append(layers.MaxPooling2D(name=f"pool{i}"))
    blocks += [
        layers.GlobalAveragePooling2D(name="gap"),
        layers.Dense(num_classes, activation="softmax", name="predictions"),
    ]
    return keras.Sequential(blocks, name="cnn4")


BUILDERS = {"lenet300": lenet300, "lenet5": lenet5, "small-cnn": small_cnn, "cnn4": cnn4}

# The smallest member of each keras.applications family (Keras 3.15 ships no RegNet or
# ResNetRS), its smallest input side (Inception 75, Xception 71) and width options.
APPLICATIONS = {
    "ConvNeXtTiny": (32, {}), "DenseNet121": (32, {}), "EfficientNetB0": (32, {}),
    "EfficientNetV2B0": (32, {}), "InceptionResNetV2": (75, {}), "InceptionV3": (75, {}),
    "MobileNet": (32, {"alpha": 0.25}), "MobileNetV2": (32, {"alpha": 0.35}),
    "MobileNetV3Small": (32, {}), "MobileNetV3Large": (32, {}), "NASNetMobile": (32, {}),
    "ResNet50": (32, {}), "ResNet50V2": (32, {}), "VGG16": (32, {}), "Xception": (71, {}),
}


def application(name: str, size: int | None = None, num_classes: int = 10,
                calibration=None, **kwargs):
    """A ``keras.applications`` architecture with random weights (nothing downloaded).

    With ``calibration`` (images shaped like the input), every BatchNormalization's
    moving mean and variance are set to the statistics of that batch: a randomly
    initialised EfficientNet or MobileNetV3 otherwise outputs a softmax uniform to
    1e-7 (every class tied), on which no top-1 comparison means anything.

    Example:

    >>> model = application("MobileNetV3Small", 32)                   # doctest: +SKIP
    >>> model.output.shape                                          # doctest: +SKIP
    (None, 10)

    Args:
        name: str. A key of :data:`APPLICATIONS` or any ``keras.applications`` name.
        size: int or None. Input side; default the family's smallest in ``APPLICATIONS``
            (32 elsewhere).
        num_classes: int, default 10. Classes of the softmax head.
        calibration: array or None. Images ``(n, size, size, 3)`` for the BatchNorm
            statistics.
        **kwargs: further arguments of the application (``alpha``, ``include_top``...).
    """
    import keras

    builder = getattr(keras.applications, name, None)
    if builder is None or not callable(builder):
        raise CompressError(f"model '{name}': not a keras.applications architecture")
    default, options = APPLICATIONS.get(name, (32, {}))
    side = size or default
    top = kwargs.get("include_top", True)
    model = builder(weights=None, input_shape=(side, side, 3),
                    **({"classes": num_classes} if top else {}), **{**options, **kwargs})
    if calibration is not None:
        recalibrate_batchnorm(model, calibration)
    return model


def recalibrate_batchnorm(model, x) -> None:
    """Set every BatchNormalization's moving statistics (nested models too) to those of
    the batch ``x`` (one forward pass in training mode with momentum 0)."""
    import keras
    import numpy as np

    norms = [la for la in _leaves(model) if isinstance(la, keras.layers.BatchNormalization)]
    momenta = [la.momentum for la in norms]
    for la in norms:
        la.momentum = 0.0
    try:
        model(np.asarray(x, "float32"), training=True)
    finally:
        for la, m in zip(norms, momenta):
            la.momentum = m


def _leaves(model):
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaves(layer)
        else:
            yield layer


def build(name: str, input_shape=(28, 28, 1), num_classes=10, width=1.0):
    """Build a named model (``lenet300``, ``lenet5``, ``small-cnn``)."""
    if name not in BUILDERS:
        raise CompressError(f"model '{name}': unknown builder (use one of {', '.join(BUILDERS)})")
    return BUILDERS[name](input_shape=input_shape, num_classes=num_classes, width=width)


# KerasHub models from small configs (random weights; a preset would download): the
# transformer cases of the zoo. Sizes are keyword arguments of the constructors.
KERASHUB = {
    "BertTextClassifier": {"vocabulary_size": 100, "num_layers": 2, "num_heads": 4,
                           "hidden_dim": 32, "intermediate_dim": 64,
                           "max_sequence_length": 16},
    "GPT2Backbone": {"vocabulary_size": 100, "num_layers": 2, "num_heads": 4,
                     "hidden_dim": 32, "intermediate_dim": 64, "max_sequence_length": 16},
    "ViTImageClassifier": {"image_shape": (32, 32, 3), "patch_size": 8, "num_layers": 2,
                           "num_heads": 4, "hidden_dim": 32, "mlp_dim": 64},
    # grouped-query attention (4 query heads share 2 key/value heads), rotary positions,
    # RMS norms, a gated (SwiGLU) feed-forward, an untied output embedding
    "LlamaBackbone": {"vocabulary_size": 100, "num_layers": 2, "num_query_heads": 4,
                      "num_key_value_heads": 2, "hidden_dim": 32, "intermediate_dim": 64,
                      "max_sequence_length": 16},
}


def kerashub(name: str, num_classes: int = 2, **config):
    """A KerasHub model built from a small config with random weights (nothing downloaded).

    ``BertTextClassifier`` (``preprocessor=None``: it takes ``token_ids``,
    ``segment_ids`` and ``padding_mask``), ``GPT2Backbone`` (``token_ids``,
    ``padding_mask``; outputs the hidden sequence), ``LlamaBackbone`` (the same inputs
    and output) or ``ViTImageClassifier`` (images).

    Example:

    >>> model = kerashub("BertTextClassifier")                     # doctest: +SKIP
    >>> sorted(model.input)                                        # doctest: +SKIP
    ['padding_mask', 'segment_ids', 'token_ids']

    Args:
        name: str. A key of :data:`KERASHUB`.
        num_classes: int, default 2. Classes of a classifier's head.
        **config: backbone arguments replacing those of :data:`KERASHUB`.
    """
    if name not in KERASHUB:
        raise CompressError(f"model '{name}': not a KerasHub zoo model (use one of "
                            f"{', '.join(KERASHUB)})")
    import keras_hub

    config = {**KERASHUB[name], **config}
    if name == "BertTextClassifier":
        backbone = keras_hub.models.BertBackbone(**config)
        return keras_hub.models.BertTextClassifier(backbone, num_classes, preprocessor=None)
    if name == "ViTImageClassifier":
        backbone = keras_hub.models.ViTBackbone(**config)
        return keras_hub.models.ViTImageClassifier(backbone, num_classes, preprocessor=None)
    if name == "LlamaBackbone":
        return keras_hub.models.LlamaBackbone(**config)
    return keras_hub.models.GPT2Backbone(**config)


def kerashub_inputs(model, n: int, seed: int = 0):
    """``n`` random inputs for a :func:`kerashub` model: token ids, segment ids and
    padding masks (the last quarter of each sequence padded) as int32, images in
    [0, 1); a dict keyed by input name, or one array for a single input."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for name, t in zip([x.name for x in model.inputs], model.inputs):
        shape = (n,) + tuple(16 if d is None else int(d) for d in t.shape[1:])
        if name == "token_ids":
            vocab = getattr(getattr(model, "backbone", model), "vocabulary_size", 100)
            out[name] = rng.integers(1, vocab, shape).astype("int32")
        elif name == "padding_mask":
            mask = np.ones(shape, "int32")
            mask[:, shape[1] - shape[1] // 4:] = 0
            out[name] = mask
        elif name == "segment_ids":
            out[name] = np.zeros(shape, "int32")
        else:
            out[name] = rng.random(shape, dtype=np.float32)
    return out if len(out) > 1 else next(iter(out.values()))
