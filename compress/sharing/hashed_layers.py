"""HashedNets layers: Dense, Conv1D/2D/3D and Embedding whose weights are hashed into
shared buckets.

:class:`HashedDense`, :class:`HashedConv1D`, :class:`HashedConv2D`, :class:`HashedConv3D`
and :class:`HashedEmbedding` store and train only ``K`` bucket weights (and the bias);
the virtual kernel ``V[i, j] = sign(i, j) * buckets[h(i, j)]`` is rebuilt in the graph
from :func:`compress.sharing.hash_functions.connection_hash` at every call (an embedding
hashes only the rows it looks up: the hashing trick for vocabularies). Each is
registered as ``compress>CLASS``, so saved files load by that name with plain
``keras.models.load_model`` once ``compress`` is imported
(``compress.layers.LAYER_MODULES`` names this module).

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
    lookup_hash,
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
        self.buckets = self.add_weight(
            name="buckets", shape=(self.num_buckets,),
            initializer=self.kernel_initializer or self._default_initializer(),
            trainable=True)

    def _default_initializer(self):
        return _scaled_uniform(*self._fans())

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

    def plain(self):
        """The Keras Dense this layer hashes (no weights)."""
        return keras.layers.Dense(self.units, activation=self.activation,
                                  use_bias=self.use_bias, name=self.name)

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "activation": keras.activations.serialize(
            self.activation), "use_bias": self.use_bias,
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            **self._hash_config()})
        return config


class _HashedConv(_HashedKernel, keras.layers.Layer):
    """A convolution of ``rank`` spatial axes whose ``(prod(kernel_size) * in_channels) x
    filters`` kernel is hashed into ``K`` shared buckets (channels-last, ungrouped)."""

    rank = 2

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation_rate=1,
                 factor=0.125, buckets=None, activation=None, use_bias=True, seed=0,
                 kernel_initializer=None, bias_initializer="zeros", dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = _ntuple(kernel_size, self.rank)
        self.strides = _ntuple(strides, self.rank)
        self.dilation_rate = _ntuple(dilation_rate, self.rank)
        self.padding = str(padding).lower()
        allowed = ("valid", "same", "causal") if self.rank == 1 else ("valid", "same")
        if self.padding not in allowed:
            raise CompressError(f"padding: must be one of {', '.join(allowed)}, got {padding!r}")
        self._init_hashed(factor, buckets, activation, use_bias, seed, dropout,
                          kernel_initializer, bias_initializer)
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2)

    def _fans(self):
        return self._m, math.prod(self.kernel_size) * self.filters

    def build(self, input_shape):
        self.in_channels = int(input_shape[-1])
        self._build_buckets(math.prod(self.kernel_size) * self.in_channels, self.filters)
        self.bias = (self.add_weight(name="bias", shape=(self.filters,),
                                     initializer=self.bias_initializer)
                     if self.use_bias else None)

    def call(self, inputs, training=False):
        kernel_t = self.virtual_kernel_t(_runtime_zero(inputs), training=bool(training))
        kernel = ops.reshape(ops.transpose(kernel_t),
                             self.kernel_size + (self.in_channels, self.filters))
        x, padding = self._dropout_inputs(inputs, training), self.padding
        if padding == "causal":  # as keras.layers.Conv1D: pad the past, then "valid"
            left = self.dilation_rate[0] * (self.kernel_size[0] - 1)
            x, padding = ops.pad(x, ((0, 0), (left, 0), (0, 0))), "valid"
        y = ops.conv(x, kernel, strides=self.strides, padding=padding,
                     dilation_rate=self.dilation_rate)
        if self.use_bias:
            y = y + self.bias
        return self.activation(y)

    def plain(self):
        """The Keras convolution this layer hashes (no weights)."""
        return _PLAIN_CONV[self.rank](
            self.filters, self.kernel_size, strides=self.strides, padding=self.padding,
            dilation_rate=self.dilation_rate, activation=self.activation,
            use_bias=self.use_bias, name=self.name)

    def compute_output_shape(self, input_shape):
        return self.plain().compute_output_shape(input_shape)

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


@keras.saving.register_keras_serializable(package="compress")
class HashedConv1D(_HashedConv):
    """A Conv1D layer whose ``(k * in_channels) x filters`` kernel is hashed into ``K``
    shared buckets (channels-last; ``padding="causal"`` too).

    Example:

    >>> layer = HashedConv1D(8, 3, factor=1 / 4, padding="causal", dilation_rate=2)
    >>> tuple(layer(np.zeros((1, 10, 4), "float32")).shape), layer.num_buckets
    ((1, 10, 8), 24)

    Args:
        filters, kernel_size, strides, padding, dilation_rate: as in Conv1D.
        factor, buckets, activation, use_bias, seed, kernel_initializer,
        bias_initializer, dropout: as in :class:`HashedDense`.
    """

    rank = 1


@keras.saving.register_keras_serializable(package="compress")
class HashedConv2D(_HashedConv):
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

    rank = 2


@keras.saving.register_keras_serializable(package="compress")
class HashedConv3D(_HashedConv):
    """A Conv3D layer whose ``(kd * kh * kw * in_channels) x filters`` kernel is hashed
    into ``K`` shared buckets (channels-last).

    Example:

    >>> layer = HashedConv3D(4, 2, factor=1 / 2)
    >>> tuple(layer(np.zeros((1, 4, 4, 4, 3), "float32")).shape), layer.num_buckets
    ((1, 3, 3, 3, 4), 48)
    """

    rank = 3


_PLAIN_CONV = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}
_HASHED_CONV = {keras.layers.Conv1D: HashedConv1D, keras.layers.Conv2D: HashedConv2D,
                keras.layers.Conv3D: HashedConv3D}


@keras.saving.register_keras_serializable(package="compress")
class HashedEmbedding(_HashedKernel, keras.layers.Layer):
    """An Embedding whose ``input_dim x output_dim`` table is hashed into ``K`` shared
    buckets: the vector of token ``i`` is ``sign(i, j) * buckets[h(i, j)]``, computed for
    the looked-up ids only (exports hold the buckets and a few integer ops, never the
    table; the hashing trick of Weinberger et al. 2009, as HashedNets share weights).

    Example:

    >>> layer = HashedEmbedding(1000, 16, factor=1 / 8, mask_zero=True)
    >>> ids = np.array([[3, 7, 0]])
    >>> tuple(layer(ids).shape), layer.num_buckets, layer.compute_mask(ids).numpy().tolist()
    ((1, 3, 16), 2000, [[True, True, False]])

    Args:
        input_dim: int, the vocabulary size (ids below it).
        output_dim: int, the vector size.
        factor, buckets, seed: as in :class:`HashedDense`.
        mask_zero: bool, default False. Id 0 is padding (as in Keras's Embedding).
        embeddings_initializer: initializer of the buckets, default uniform in
            ``[-0.05, 0.05]`` (Keras's Embedding default).
    """

    def __init__(self, input_dim, output_dim, factor=0.125, buckets=None, mask_zero=False,
                 seed=0, embeddings_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero
        self._init_hashed(factor, buckets, None, False, seed, 0.0, embeddings_initializer,
                          "zeros")

    def _default_initializer(self):
        return keras.initializers.RandomUniform(-0.05, 0.05)

    def build(self, input_shape=None):
        self._build_buckets(self.input_dim, self.output_dim)
        self.bias = None

    def call(self, inputs, training=False):
        ids = ops.cast(inputs, "int32")
        index, bit = lookup_hash(ops.reshape(ids, (-1,)), self.output_dim,
                                 self.num_buckets, self.hash_seed)
        sign = 1.0 - 2.0 * ops.cast(bit, self.buckets.dtype)
        vectors = _gather(self.buckets, index) * sign
        return ops.reshape(vectors, tuple(ops.shape(ids)) + (self.output_dim,))

    def compute_mask(self, inputs, mask=None):
        return ops.not_equal(inputs, 0) if self.mask_zero else None

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def plain(self):
        """The Keras Embedding this layer hashes (no weights)."""
        return keras.layers.Embedding(self.input_dim, self.output_dim,
                                      mask_zero=self.mask_zero, name=self.name)

    def get_config(self):
        config = super().get_config()
        hashed = self._hash_config()
        config.update({"input_dim": self.input_dim, "output_dim": self.output_dim,
                       "mask_zero": self.mask_zero, "factor": hashed["factor"],
                       "buckets": hashed["buckets"], "seed": hashed["seed"],
                       "embeddings_initializer": hashed["kernel_initializer"]})
        return config


def _ntuple(value, n: int) -> tuple:
    if isinstance(value, int):
        return (value,) * n
    return tuple(int(v) for v in value)


#: The hashed layer of each Keras layer class hashing replaces.
HASHED = (HashedDense, HashedConv1D, HashedConv2D, HashedConv3D, HashedEmbedding)


def hashed_like(layer, factor: float, seed: int, dropout: float = 0.0):
    """The hashed layer (:data:`HASHED`) configured like ``layer`` (a Dense, Conv1D/2D/3D
    or Embedding; a ``TimeDistributed`` one of those: the same wrapper around it)."""
    if inner_layer(layer) is not layer:  # TimeDistributed: the same layer at every step
        return keras.layers.TimeDistributed(hashed_like(layer.layer, factor, seed, dropout),
                                            name=layer.name)
    if type(layer) is keras.layers.Embedding:  # ids in: no dropout on them
        return HashedEmbedding(layer.input_dim, layer.output_dim, factor=factor,
                               mask_zero=layer.mask_zero, seed=layer_seed(seed, layer.name),
                               name=layer.name)
    common = {"factor": factor, "activation": layer.activation, "use_bias": layer.use_bias,
              "seed": layer_seed(seed, layer.name), "name": layer.name, "dropout": dropout}
    if type(layer) in _HASHED_CONV:
        return _HASHED_CONV[type(layer)](layer.filters, layer.kernel_size,
                                         strides=layer.strides, padding=layer.padding,
                                         dilation_rate=layer.dilation_rate, **common)
    return HashedDense(layer.units, **common)


def inner_layer(layer):
    """The layer a ``TimeDistributed`` wrapper applies at every step, else ``layer``."""
    return layer.layer if isinstance(layer, keras.layers.TimeDistributed) else layer


def source_matrix(layer) -> np.ndarray:
    """The ``m x n`` matrix hashing shares of a Keras layer: a kernel with its spatial
    and input axes flattened into rows, or an embedding table."""
    values = np.asarray(layer.embeddings if type(layer) is keras.layers.Embedding
                        else layer.kernel)
    return values.reshape(-1, values.shape[-1])
