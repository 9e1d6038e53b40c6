"""Keras-native int8: ``model.quantize("int8")`` on a copy, saying which layers stayed float.

Keras 3 quantizes ``Dense``, ``EinsumDense`` and ``Embedding`` layers in place (int8
kernels with per-output-channel scales, activations quantized on the fly); convolutions
and everything else keep float weights. The result is still a Keras model, saved as
``.keras`` and loaded back with plain ``keras.models.load_model``. Keras's other modes
(int4, GPTQ, AWQ) are in :mod:`compress.quantization.keras_modes`.

Example:

>>> from compress.quantization.keras_int8 import keras_int8
>>> quantized, float_layers = keras_int8(model)          # doctest: +SKIP
>>> float_layers                                          # doctest: +SKIP
['conv1', 'bn1', 'conv2']
"""

from __future__ import annotations

SUPPORTED = ("Dense", "EinsumDense", "Embedding")


def keras_int8(model):
    """Quantize a copy of ``model`` with Keras's own int8 scheme.

    Args:
        model: a Keras model (not modified).

    Returns:
        ``(quantized_model, float_layers)``: the new model, and the names of the layers
        that own weights but stayed float because Keras cannot quantize their type.
    """
    from compress.quantization.keras_modes import keras_quantize

    quantized, layers = keras_quantize(model, "keras-int8")
    return quantized, layers["float"]
