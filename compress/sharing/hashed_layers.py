"""HashedNets layers: Dense and Conv2D whose kernels are hashed into shared buckets.

:class:`HashedDense` and :class:`HashedConv2D` store and train only ``K`` bucket weights
(and the bias); the virtual kernel ``V[i, j] = sign(i, j) * buckets[h(i, j)]`` is rebuilt
in the graph from :func:`compress.sharing.hash_functions.connection_hash` at every call.
Both are registered as ``compress>HashedDense`` / ``compress>HashedConv2D``, so saved
files load by that name with plain ``keras.models.load_model`` once ``compress`` is
imported (``compress.layers.LAYER_MODULES`` names this module).

Two details keep exports small and exact:

- The row and column indices get a zero derived from the runtime batch size added to
  them, so converters cannot constant-fold the ``m x n`` index into a dense-sized table.
- The virtual kernel is built transposed (``units x inputs``) and multiplied with
  ``transpose_b=True``: the TFLite converter lowers that to ``FULLY_CONNECTED``. A plain
  ``x @ W`` with a non-constant ``W`` becomes ``BATCH_MATMUL``, and when no bias add
  follows (zero or absent bias) the converter fuses a following ReLU into it and silently
  drops it (measured with TF 2.21: outputs off by up to 2.8).

Example:

>>> import keras
>>> from compress.sharing.hashed_layers import HashedDense
>>> model = keras.Sequential([keras.Input((784,)),
...                           HashedDense(300, factor=1 / 8, activation="relu"),
...                           HashedDense(10, factor=1 / 8, activation="softmax")])
>>> int(model.layers[0].buckets.shape[0])
29400
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from compress.errors import CompressError
from compress.sharing.hash_functions import (
    connection_hash,
    hash_table,
    layer_seed,
    num_buckets_for,
)


def _gather(table, index):
    """``table[index]``; ``tf.gather`` directly: ``ops.take`` adds negative-index ops."""
    import tensorflow as tf

    return tf.gather(table, index)


def _runtime_zero(inputs):
    """An int32 zero that depends on the runtime batch size, so converters can't fold
    the hash of constant indices into a stored ``m x n`` table."""
    import tensorflow as tf

    batch = tf.shape(inputs)[0]
    return batch // (batch + 1)


class _HashedKernel:
    """Shared machinery: the bucket vector and the in-graph virtual kernel."""

    def _build_buckets(self, m: int, n: int):
        self._m, self._n = int(m), int(n)
        self.num_buckets = num_buckets_for(self._m, self._n, self.factor, self.buckets_arg)
        fan_in, fan_out = self._fans()
        self.buckets = self.add_weight(
            name="buckets", shape=(self.num_buckets,),
            initializer=self.kernel_initializer or _scaled_uniform(fan_in, fan_out),
            trainable=True)

    def virtual_kernel_t(self, zero=0, training=False):
        """The ``(n, m)`` transposed virtual kernel, computed from the buckets.

        In training the hash comes from a table computed once per layer object (never
        saved); otherwise it is recomputed in the graph, which is what exports contain.
        """
        if training:
            index, sign = self._training_table()
            return _gather(self.buckets, index) * sign
        rows = ops.arange(self._m, dtype="int32") + zero
        cols = ops.arange(self._n, dtype="int32") + zero
        index, bit = connection_hash(rows, cols, self.num_buckets, self.hash_seed,
                                     transposed=True)
        sign = 1.0 - 2.0 * ops.cast(bit, self.buckets.dtype)
        return _gather(self.buckets, index) * sign

    def _training_table(self):
        if getattr(self, "_table", None) is None:
            import tensorflow as tf

            index, sign = hash_table(self._m, self._n, self.num_buckets, self.hash_seed)
            # Eager tensors: every traced step captures them by reference. NumPy arrays
            # would be copied into each graph as constants (tens of bytes per weight).
            with tf.init_scope():  # eager even when first asked for inside a trace
                self._table = (tf.constant(index.T.astype(np.int32)),
                               tf.constant(sign.T.astype(np.float32)))
        return self._table

    def virtual_kernel(self) -> np.ndarray:
        """The ``m x n`` virtual kernel as a NumPy array."""
        return np.asarray(ops.convert_to_numpy(self.virtual_kernel_t())).T

    def _init_hashed(self, factor, buckets, activation, use_bias, seed, dropout,
                     kernel_initializer, bias_initializer) -> None:
        """The constructor arguments HashedDense and HashedConv2D share."""
        self.factor = None if factor is None else float(factor)
        self.buckets_arg = None if buckets is None else int(buckets)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.hash_seed = int(seed)
        self._init_dropout(dropout)
        self.kernel_initializer = (keras.initializers.get(kernel_initializer)
                                   if kernel_initializer is not None else None)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def _init_dropout(self, dropout) -> None:
        self.dropout = float(dropout or 0.0)
        if not 0.0 <= self.dropout < 1.0:
            raise CompressError(f"dropout: must be in [0, 1), got {dropout}")
        self._dropout_seed = (keras.random.SeedGenerator(self.hash_seed)
                              if self.dropout else None)

    def _dropout_inputs(self, inputs, training):
        """Inputs with ``dropout`` applied in training (a no-op at inference and export)."""
        if training and self.dropout:
            return keras.random.dropout(inputs, self.dropout, seed=self._dropout_seed)
        return inputs

    def _hash_config(self) -> dict:
        return {"factor": self.factor, "buckets": self.buckets_arg, "seed": self.hash_seed,
                "dropout": self.dropout,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)
                if self.kernel_initializer is not None else None}


def _scaled_uniform(fan_in: int, fan_out: int):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return keras.initializers.RandomUniform(-limit, limit)


@keras.saving.register_keras_serializable(package="compress")
class HashedDense(_HashedKernel, keras.layers.Layer):
    """A Dense layer whose ``inputs x units`` kernel is hashed into ``K`` shared buckets.

    Only the buckets (and the bias) are stored and trained; ``factor = K / (inputs * units)``.

    Example:

    >>> layer = HashedDense(100, factor=1 / 8, activation="relu", seed=3)
    >>> y = layer(np.zeros((2, 300), "float32"))
    >>> layer.num_buckets, tuple(y.shape)
    (3750, (2, 100))

    Args:
        units: int, output size.
        factor: float, default 0.125. Stored buckets per virtual weight, in ``(0, 1]``.
        buckets: int or None, default None. The number of buckets (overrides ``factor``).
        activation: activation name or callable, default None.
        use_bias: bool, default True.
        seed: int, default 0. The hash seed (same seed, same sharing, on any machine).
        kernel_initializer: initializer of the buckets, default a Glorot-style uniform
            scaled to the virtual kernel's fans.
        bias_initializer: default ``"zeros"``.
        dropout: float, default 0.0. Dropout rate on the layer's inputs during training
            (HashedNets are trained with dropout, Chen et al. 2015); nothing at inference.
    """

    def __init__(self, units, factor=0.125, buckets=None, activation=None, use_bias=True,
                 seed=0, kernel_initializer=None, bias_initializer="zeros", dropout=0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self._init_hashed(factor, buckets, activation, use_bias, seed, dropout,
                          kernel_initializer, bias_initializer)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def _fans(self):
        return self._m, self._n

    def build(self, input_shape):
        self._build_buckets(input_shape[-1], self.units)
        self.bias = (self.add_weight(name="bias", shape=(self.units,),
                                     initializer=self.bias_initializer)
                     if self.use_bias else None)

    def call(self, inputs, training=False):
        import tensorflow as tf

        x = ops.reshape(self._dropout_inputs(inputs, training), (-1, self._m))
        kernel_t = self.virtual_kernel_t(_runtime_zero(x), training=bool(training))
        y = tf.linalg.matmul(x, kernel_t, transpose_b=True)  # FULLY_CONNECTED in TFLite
        if self.use_bias:
            y = y + self.bias
        y = self.activation(y)
        if len(inputs.shape) != 2:
            y = ops.reshape(y, tuple(ops.shape(inputs)[:-1]) + (self.units,))
        return y

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "activation": keras.activations.serialize(
            self.activation), "use_bias": self.use_bias,
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            **self._hash_config()})
        return config


@keras.saving.register_keras_serializable(package="compress")
class HashedConv2D(_HashedKernel, keras.layers.Layer):
    """A Conv2D layer whose ``(kh * kw * in_channels) x filters`` kernel is hashed into
    ``K`` shared buckets (channels-last).

    Example:

    >>> layer = HashedConv2D(16, 3, factor=1 / 4, padding="same", activation="relu")
    >>> tuple(layer(np.zeros((1, 8, 8, 8), "float32")).shape), layer.num_buckets
    ((1, 8, 8, 16), 288)

    Args:
        filters: int, output channels.
        kernel_size: int or pair of ints.
        strides: int or pair, default 1.
        padding: ``"valid"`` (default) or ``"same"``.
        dilation_rate: int or pair, default 1.
        factor, buckets, activation, use_bias, seed, kernel_initializer,
        bias_initializer, dropout: as in :class:`HashedDense`.
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation_rate=1,
                 factor=0.125, buckets=None, activation=None, use_bias=True, seed=0,
                 kernel_initializer=None, bias_initializer="zeros", dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size)
        self.strides = _pair(strides)
        self.dilation_rate = _pair(dilation_rate)
        self.padding = str(padding).lower()
        self._init_hashed(factor, buckets, activation, use_bias, seed, dropout,
                          kernel_initializer, bias_initializer)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def _fans(self):
        area = self.kernel_size[0] * self.kernel_size[1]
        return self._m, area * self.filters

    def build(self, input_shape):
        self.in_channels = int(input_shape[-1])
        self._build_buckets(self.kernel_size[0] * self.kernel_size[1] * self.in_channels,
                            self.filters)
        self.bias = (self.add_weight(name="bias", shape=(self.filters,),
                                     initializer=self.bias_initializer)
                     if self.use_bias else None)

    def call(self, inputs, training=False):
        kernel_t = self.virtual_kernel_t(_runtime_zero(inputs), training=bool(training))
        kernel = ops.reshape(ops.transpose(kernel_t),
                             self.kernel_size + (self.in_channels, self.filters))
        y = ops.conv(self._dropout_inputs(inputs, training), kernel, strides=self.strides,
                     padding=self.padding, dilation_rate=self.dilation_rate)
        if self.use_bias:
            y = y + self.bias
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        out = keras.layers.Conv2D(self.filters, self.kernel_size, strides=self.strides,
                                  padding=self.padding, dilation_rate=self.dilation_rate)
        return out.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "kernel_size": self.kernel_size,
                       "strides": self.strides, "padding": self.padding,
                       "dilation_rate": self.dilation_rate,
                       "activation": keras.activations.serialize(self.activation),
                       "use_bias": self.use_bias,
                       "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                       **self._hash_config()})
        return config


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return tuple(int(v) for v in value)


def hashed_like(layer, factor: float, seed: int, dropout: float = 0.0):
    """A :class:`HashedDense` / :class:`HashedConv2D` configured like ``layer``."""
    common = {"factor": factor, "activation": layer.activation, "use_bias": layer.use_bias,
              "seed": layer_seed(seed, layer.name), "name": layer.name, "dropout": dropout}
    if isinstance(layer, keras.layers.Conv2D):
        return HashedConv2D(layer.filters, layer.kernel_size, strides=layer.strides,
                            padding=layer.padding, dilation_rate=layer.dilation_rate, **common)
    return HashedDense(layer.units, **common)
