"""Blocks of a chain model for cascade training: where each stage starts and ends.

A block starts at each layer with trainable weights other than a normalization layer and
takes the parameter-free and normalization layers after it; the head is the model's own
output block. Stages that are not the last get a temporary output block.

Example:

>>> from compress.cascade.blocks import split_blocks
>>> from compress.models import build
>>> blocks, head = split_blocks(build("lenet300"))
>>> [[layer.name for layer in block] for block in blocks], [layer.name for layer in head]
([['flatten', 'fc1'], ['fc2']], ['predictions'])
"""

from __future__ import annotations

import keras
import numpy as np

from compress.data.arrays import SAMPLE_TEXT
from compress.errors import CompressError

_NORMALIZATION = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                  keras.layers.GroupNormalization)
_BRIDGE = (keras.layers.Flatten, keras.layers.GlobalAveragePooling2D,
           keras.layers.GlobalMaxPooling2D, keras.layers.GlobalAveragePooling1D,
           keras.layers.GlobalMaxPooling1D, keras.layers.Dropout, keras.layers.Reshape)


def _is_weighted(layer) -> bool:
    return bool(layer.trainable_weights) and not isinstance(layer, _NORMALIZATION)


def chain_layers(model) -> list:
    """The layers of a Sequential model or of a functional chain, in order."""
    layers = [la for la in model.layers if not isinstance(la, keras.layers.InputLayer)]
    if isinstance(model, keras.Sequential):
        return layers
    try:  # a functional model is a chain when running its layers in order reproduces it
        shape = (2,) + tuple(model.inputs[0].shape[1:])
        x = (np.full(shape, SAMPLE_TEXT) if model.inputs[0].dtype == "string"
             else np.random.default_rng(0).random(shape, dtype=np.float32))
        h = x
        for layer in layers:
            h = layer(h, training=False)
        same = np.allclose(np.asarray(h), np.asarray(model(x, training=False)), atol=1e-5)
    except Exception:  # noqa: BLE001  (any failure means: not a plain chain)
        same = False
    if not same or len(model.inputs) != 1:
        raise CompressError(f"model '{model.name}': cascade training needs a Sequential model "
                            "or a functional chain of layers (no branches)")
    return layers


def split_blocks(model) -> tuple[list[list], list]:
    """Split a chain into blocks and a head.

    A block starts at each layer with trainable weights other than a normalization layer
    (Conv, Dense, ...) and takes the parameter-free and normalization layers after it. The
    head is the last weighted layer with the pooling/flatten/dropout layers just before it:
    the model's own output block, trained with the last block.

    Returns:
        ``(blocks, head)``: a list of layer lists, and the head's layers.
    """
    layers = chain_layers(model)
    weighted = [i for i, la in enumerate(layers) if _is_weighted(la)]
    if len(weighted) < 2:
        raise CompressError(f"model '{model.name}': cascade training needs at least two "
                            "layers with weights (one block and the output layer)")
    start = weighted[-1]
    while start > 0 and isinstance(layers[start - 1], _BRIDGE):
        start -= 1
    head = layers[start:]
    blocks, current = [], []
    for layer in layers[:start]:
        if _is_weighted(layer) and any(_is_weighted(la) for la in current):
            blocks.append(current)
            current = []
        current.append(layer)
    if current:
        blocks.append(current)
    return blocks, head


def output_block(kind: str, features_shape: tuple, num_classes: int, stage: int,
                 activation: str = "softmax") -> list:
    """The temporary output block of a stage: pooling or flatten, then a Dense layer
    shaped like the model's output (softmax for a classifier; the model's own output
    activation otherwise: linear for a regression, sigmoid for multi-label).

    Args:
        kind: str. ``"auto"`` (global average pooling for 1-D/2-D feature maps, else
            flatten), ``"gap"`` or ``"flatten"``.
        features_shape: tuple. The block's output shape, without the batch axis.
        num_classes: int. Units of the Dense layer (classes, or output values).
        stage: int. Stage number, for the layer names (``cascade_out{stage}_...``).
        activation: str, default ``"softmax"``. The Dense layer's activation.
    """
    layers = []
    if len(features_shape) > 1:
        if kind == "flatten" or (kind == "auto" and len(features_shape) not in (2, 3)):
            layers.append(keras.layers.Flatten(name=f"cascade_out{stage}_flatten"))
        elif len(features_shape) == 3:
            layers.append(keras.layers.GlobalAveragePooling2D(name=f"cascade_out{stage}_gap"))
        else:
            layers.append(keras.layers.GlobalAveragePooling1D(name=f"cascade_out{stage}_gap"))
    layers.append(keras.layers.Dense(num_classes, activation=activation,
                                     name=f"cascade_out{stage}_{activation}"))
    return layers


def model_from_specs(specs, input_shape, num_classes, output_kind) -> tuple:
    """A model built from layer specs, its blocks and its head.

    Args:
        specs: list. Each item a ``keras.layers.Layer``, its config dict, or a list of
            those forming one block.
        input_shape: tuple. One sample's shape.
        num_classes: int.
        output_kind: str. The head's kind, see :func:`output_block`.

    Returns:
        ``(model, blocks, head)``.
    """
    blocks = []
    for item in specs:
        items = item if isinstance(item, (list, tuple)) else [item]
        block = []
        for spec in items:
            if isinstance(spec, dict):
                cls = getattr(keras.layers, str(spec.get("class_name")), None)
                spec = cls.from_config(spec.get("config", {})) if "module" not in spec and \
                    cls is not None else keras.layers.deserialize(spec)
            if not isinstance(spec, keras.layers.Layer):
                raise CompressError(f"cascade: layer spec must be a Keras layer or its config "
                                    f"dict, got {type(spec).__name__}")
            block.append(spec)
        blocks.append(block)
    if not blocks:
        raise CompressError("cascade: no layer specs given")
    h = keras.Input(input_shape)
    for layer in (la for b in blocks for la in b):
        h = layer(h)
    head = output_block(output_kind, tuple(h.shape[1:]), num_classes, 0)
    model = keras.Sequential([keras.Input(input_shape)] + [la for b in blocks for la in b]
                             + head, name="cascade")
    return model, blocks, head
