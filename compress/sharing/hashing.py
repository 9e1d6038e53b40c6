"""HashedNets layers: weights shared through a seeded hash of each connection.

Chen et al. 2015 ("Compressing Neural Networks with the Hashing Trick") store only ``K``
bucket weights per layer. The virtual weight of connection ``(i, j)`` is
``V[i, j] = sign(i, j) * buckets[h(i, j)]``; the hash is recomputed in the graph, so the
saved file (and an exported ONNX or TFLite file) holds the buckets, never an index table.

Input ids ``i`` and output ids ``j + 2**30`` go through one four-round keyed Feistel
permutation in base ``P = 46337`` (a prime with ``P * P < 2**31``; round function
``a * (r * r mod P) + c``), giving per-row values ``R, R2`` and per-column values
``C, C2``. The connection hash is ``h = (R + C + t) mod K`` with ``t = R2 * C2 mod P``, and
the sign is ``t mod 2``: only these few operations run on all ``m x n`` connections,
which keeps the per-call cost of exports low. Every product is of two numbers below
``P``, so all arithmetic stays inside int32 and every runtime (TensorFlow, LiteRT,
onnxruntime) computes the same integers. Round keys come from the layer's seed through
pure-Python integer arithmetic: the same seed gives the same model on any machine.

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
>>> from compress.sharing.hashing import HashedDense
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

PRIME = 46337  # largest prime with PRIME**2 < 2**31: products of residues fit in int32
MAX_ID = 2 ** 30  # row ids are below it, column ids are offset by it (both < PRIME**2)
ROUNDS = 4
_MASK64 = (1 << 64) - 1


def round_keys(seed: int, rounds: int = ROUNDS) -> list[tuple[int, int]]:
    """Per-round ``(a, c)`` keys in ``[1, PRIME)`` from ``seed`` (splitmix64, exact ints)."""
    state = (int(seed) * 0x9E3779B97F4A7C15 + 0x2545F4914F6CDD1D) & _MASK64
    keys = []
    for _ in range(rounds):
        pair = []
        for _ in range(2):
            state = (state + 0x9E3779B97F4A7C15) & _MASK64
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
            z ^= z >> 31
            pair.append(1 + z % (PRIME - 1))
        keys.append(tuple(pair))
    return keys


def feistel(t, keys):
    """A keyed permutation of ``[0, PRIME**2)`` (int32-safe); returns ``(left, right)``.

    Round function ``(a * (r * r mod P) + c) mod P``: at most ``P**2 + P < 2**31``.
    """
    left, right = t // PRIME, t % PRIME
    for a, c in keys:
        left, right = right, (left + ((right * right) % PRIME * a + c) % PRIME) % PRIME
    return left, right


def connection_hash(rows, cols, num_buckets: int, seed: int, transposed: bool = False):
    """Bucket index and sign bit of every connection ``(rows[i], cols[j])``.

    The ids ``rows`` and ``cols + MAX_ID`` go through one keyed Feistel permutation (one
    vector of ``m + n`` values: cheap), giving per-row ``R, R2`` and per-column ``C, C2``.
    The ``m x n`` part is only ``t = R2 * C2 mod P``, ``index = (R + C + t) mod K`` and
    ``sign_bit = t mod 2``; the bilinear ``t`` breaks the shift structure that ``R + C``
    alone would have. Works on NumPy arrays and backend tensors alike (``keras.ops``).

    Args:
        rows: 1-D int32 input indices ``i`` (``m`` of them), each below ``MAX_ID``.
        cols: 1-D int32 output indices ``j`` (``n`` of them), each below ``MAX_ID``.
        num_buckets: int, ``K`` (at most ``2**30``): indices fall in ``[0, K)``.
        seed: int, the layer's hash seed.
        transposed: bool, default False. Return ``(n, m)`` arrays instead of ``(m, n)``.

    Returns:
        ``(index, sign_bit)``: int32 arrays; the sign is ``1 - 2 * sign_bit``.
    """
    # NumPy in, NumPy out (also inside a traced train step); tensors go through keras.ops
    xp = np if isinstance(rows, np.ndarray) and isinstance(cols, np.ndarray) else ops
    m = rows.shape[0]
    left, right = feistel(xp.concatenate([rows, cols + MAX_ID]), round_keys(seed))
    bucket = (left * PRIME + right) % num_buckets
    mult = 1 + right % (PRIME - 1)  # in [1, P): t is never 0, signs stay balanced
    r_bucket, c_bucket = bucket[:m], bucket[m:]
    r_mult, c_mult = mult[:m], mult[m:]
    if transposed:
        t = (xp.reshape(c_mult, (-1, 1)) * xp.reshape(r_mult, (1, -1))) % PRIME
        index = (xp.reshape(c_bucket, (-1, 1)) + xp.reshape(r_bucket, (1, -1)) + t)
    else:
        t = (xp.reshape(r_mult, (-1, 1)) * xp.reshape(c_mult, (1, -1))) % PRIME
        index = (xp.reshape(r_bucket, (-1, 1)) + xp.reshape(c_bucket, (1, -1)) + t)
    return index % num_buckets, t % 2  # index sum < 2K + P < 2**31


def hash_table(m: int, n: int, num_buckets: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """NumPy ``(index, sign)`` arrays of shape ``(m, n)``; sign in ``{-1.0, +1.0}``."""
    rows = np.arange(m, dtype=np.int32)
    cols = np.arange(n, dtype=np.int32)
    index, bit = connection_hash(rows, cols, num_buckets, seed)
    index = np.asarray(ops.convert_to_numpy(index)).astype(np.int64)
    sign = 1.0 - 2.0 * np.asarray(ops.convert_to_numpy(bit)).astype(np.float32)
    return index, sign


def num_buckets_for(m: int, n: int, factor: float | None, buckets: int | None) -> int:
    """``K`` for an ``m x n`` kernel: ``buckets`` if given, else ``round(factor * m * n)``."""
    if buckets is None:
        if factor is None or not 0.0 < factor <= 1.0:
            raise CompressError(f"factor: must be in (0, 1], got {factor}")
        buckets = max(1, round(factor * m * n))
    if not 1 <= int(buckets) <= min(m * n, 2 ** 30):
        raise CompressError(f"buckets: must be in [1, {min(m * n, 2 ** 30)}], got {buckets}")
    return int(buckets)


def bucket_means(kernel: np.ndarray, num_buckets: int, seed: int) -> np.ndarray:
    """Bucket weights that best reproduce ``kernel`` (``m x n``): the mean of
    ``sign * w`` over the connections hashed to each bucket (0 for an empty bucket)."""
    m, n = kernel.shape
    index, sign = hash_table(m, n, num_buckets, seed)
    total = np.bincount(index.ravel(), weights=(sign * kernel).ravel(), minlength=num_buckets)
    count = np.bincount(index.ravel(), minlength=num_buckets)
    return (total / np.maximum(count, 1)).astype(np.float32)


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
            index, sign = hash_table(self._m, self._n, self.num_buckets, self.hash_seed)
            self._table = (index.T.astype(np.int32), sign.T.astype(np.float32))
        return self._table

    def virtual_kernel(self) -> np.ndarray:
        """The ``m x n`` virtual kernel as a NumPy array."""
        return np.asarray(ops.convert_to_numpy(self.virtual_kernel_t())).T

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
        self.factor = None if factor is None else float(factor)
        self.buckets_arg = None if buckets is None else int(buckets)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.hash_seed = int(seed)
        self._init_dropout(dropout)
        self.kernel_initializer = (keras.initializers.get(kernel_initializer)
                                   if kernel_initializer is not None else None)
        self.bias_initializer = keras.initializers.get(bias_initializer)
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
        self.factor = None if factor is None else float(factor)
        self.buckets_arg = None if buckets is None else int(buckets)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.hash_seed = int(seed)
        self._init_dropout(dropout)
        self.kernel_initializer = (keras.initializers.get(kernel_initializer)
                                   if kernel_initializer is not None else None)
        self.bias_initializer = keras.initializers.get(bias_initializer)
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
        y = ops.conv(self._dropout_inputs(inputs, training), kernel, strides=self.strides, padding=self.padding,
                     dilation_rate=self.dilation_rate)
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


def layer_seed(seed: int, name: str) -> int:
    """The hash seed of layer ``name`` in a model converted with ``seed``."""
    import zlib

    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 31)


def hashed_like(layer, factor: float, seed: int, dropout: float = 0.0):
    """A :class:`HashedDense` / :class:`HashedConv2D` configured like ``layer``."""
    common = {"factor": factor, "activation": layer.activation, "use_bias": layer.use_bias,
              "seed": layer_seed(seed, layer.name), "name": layer.name, "dropout": dropout}
    if isinstance(layer, keras.layers.Conv2D):
        return HashedConv2D(layer.filters, layer.kernel_size, strides=layer.strides,
                            padding=layer.padding, dilation_rate=layer.dilation_rate, **common)
    return HashedDense(layer.units, **common)


def hash_model(model, data=None, *, factor: float = 0.125, layers: str | None = None,
               epochs: int = 0, seed: int = 0, learning_rate: float | None = None,
               batch_size: int = 64, verbose=0, init: str = "dense", dropout: float = 0.0):
    """Convert a model's Dense/Conv2D layers into hashed layers, then fine-tune.

    Each converted layer keeps ``round(factor * m * n)`` buckets, initialised to the mean
    of ``sign * w`` over the trained weights hashed to each bucket (``init="dense"``), or
    freshly (``init="scratch"``: Glorot-style buckets, zero biases, the layout of the model
    only). The input model is not modified.

    With about ``1 / factor`` random-sign weights per bucket, the signed means keep little
    of the trained function (a 1/8-hashed LeNet-300-100 starts near chance), so the
    conversion is mostly an initialisation; Chen et al. (2015) train hashed nets from
    scratch with dropout, which ``init="scratch", dropout=0.25, epochs=30`` follows (it
    beat the conversion in our benchmark, see BENCHMARKS.md).

    Example:

    >>> hashed, info = hash_model(model, ds, factor=1 / 8, epochs=3)  # doctest: +SKIP
    >>> info["bits_per_weight"]                                        # doctest: +SKIP
    4.0

    Args:
        model: a Keras model (Sequential or functional).
        data: a :class:`compress.data.Dataset` prepared for the model; needed when
            ``epochs > 0``.
        factor: float, default 0.125. Buckets per virtual weight, in ``(0, 1]``.
        layers: str or None, default None (every Dense/Conv2D). A regular expression on
            layer names.
        epochs: int, default 0. Fine-tuning epochs after conversion.
        seed: int, default 0. Hash and training seed.
        learning_rate: float or None, default None (1e-3). Adam learning rate.
        batch_size: int, default 64.
        verbose: Keras ``verbose`` for the fit, default 0.
        init: str, default ``"dense"``. ``"dense"`` (buckets from the trained weights) or
            ``"scratch"`` (fresh buckets and biases).
        dropout: float, default 0.0. Training-time dropout on the inputs of every
            converted layer but the first (dropout on hidden units, as HashedNets are
            trained); a no-op at inference and in exports. In ``[0, 1)``.

    Returns:
        ``(new_model, info)``; ``info`` has stored and virtual parameters, bits per
        virtual weight and per-layer factors.
    """
    from compress import training
    from compress.sharing.layer_selection import finetune, select_layers

    if not 0.0 < float(factor) <= 1.0:
        raise CompressError(f"factor: must be in (0, 1], got {factor}")
    if init not in ("dense", "scratch"):
        raise CompressError(f"init '{init}': must be dense or scratch")
    if not 0.0 <= float(dropout) < 1.0:
        raise CompressError(f"dropout: must be in [0, 1), got {dropout}")
    chosen = {layer.name: layer for layer in select_layers(model, layers, "hashed")}
    first = next(iter(chosen), None)
    training.set_seed(seed)

    def clone(layer):
        if layer.name in chosen:
            return hashed_like(layer, factor, seed,
                               dropout=0.0 if layer.name == first else float(dropout))
        return layer.__class__.from_config(layer.get_config())

    try:
        new = keras.models.clone_model(model, clone_function=clone)
    except CompressError:
        raise
    except Exception as exc:
        raise CompressError(f"cannot rebuild the model with hashed layers ({exc})") from exc
    rows = []
    for layer in new.layers:
        source = model.get_layer(layer.name)
        if layer.name not in chosen:
            layer.set_weights(source.get_weights())
            continue
        kernel = np.asarray(source.kernel)
        flat = kernel.reshape(-1, kernel.shape[-1])
        if init == "dense":
            layer.buckets.assign(bucket_means(flat, layer.num_buckets, layer.hash_seed))
            if layer.use_bias:
                layer.bias.assign(np.asarray(source.bias))
        rows.append({"layer": layer.name, "type": type(layer).__name__,
                     "virtual": int(flat.size), "buckets": layer.num_buckets,
                     "factor": layer.num_buckets / flat.size})
    finetune(new, data, epochs, learning_rate or 1e-3, batch_size, verbose)
    virtual = sum(r["virtual"] for r in rows)
    stored = sum(r["buckets"] for r in rows)
    info = {"method": "hash", "factor": float(factor), "layers": rows,
            "virtual_weights": virtual, "stored_weights": stored,
            "stored_params": int(sum(int(np.prod(w.shape)) for w in new.weights)),
            "dense_params": int(sum(int(np.prod(w.shape)) for w in model.weights)),
            "bits_per_weight": 32.0 * stored / virtual, "epochs": int(epochs),
            "init": init, "dropout": float(dropout)}
    if data is not None:
        info["accuracy"] = training.accuracy(new, data.x_test, data.y_test)
    return new, info


def materialize(model):
    """A plain Keras model with every hashed layer replaced by its dense equivalent.

    The virtual kernels become ordinary Dense/Conv2D kernels: outputs are unchanged, the
    file is dense-sized again, and exported runtimes skip the per-call hash arithmetic
    (use it when latency matters more than size). The input model is not modified.

    Example:

    >>> plain = materialize(hashed)   # doctest: +SKIP

    Args:
        model: a Keras model containing :class:`HashedDense` / :class:`HashedConv2D`.

    Returns:
        The new model.
    """
    def clone(layer):
        if isinstance(layer, HashedDense):
            return keras.layers.Dense(layer.units, activation=layer.activation,
                                      use_bias=layer.use_bias, name=layer.name)
        if isinstance(layer, HashedConv2D):
            return keras.layers.Conv2D(layer.filters, layer.kernel_size, strides=layer.strides,
                                       padding=layer.padding, dilation_rate=layer.dilation_rate,
                                       activation=layer.activation, use_bias=layer.use_bias,
                                       name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    new = keras.models.clone_model(model, clone_function=clone)
    for layer in new.layers:
        source = model.get_layer(layer.name)
        if isinstance(source, _HashedKernel):
            weights = [source.virtual_kernel().reshape(layer.kernel.shape)]
            if source.use_bias:
                weights.append(np.asarray(source.bias))
            layer.set_weights(weights)
        else:
            layer.set_weights(source.get_weights())
    return new
