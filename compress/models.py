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


def build(name: str, input_shape=(28, 28, 1), num_classes=10, width=1.0):
    """Build a named model (``lenet300``, ``lenet5``, ``small-cnn``)."""
    if name not in BUILDERS:
        raise CompressError(f"model '{name}': unknown builder (use one of {', '.join(BUILDERS)})")
    return BUILDERS[name](input_shape=input_shape, num_classes=num_classes, width=width)
