"""Attention heads and feed-forward units: the transformer part of structured pruning.

A transformer block keeps its hidden width (every residual add is tied to it), but two
kinds of units inside it can go: whole attention **heads** (a head's slices of the
query, key and value kernels, ``(hidden, heads, head_dim)``, and of the output kernel,
``(heads, head_dim, hidden)``) and the **intermediate units** of the feed-forward pair
(columns of the first ``Dense``, rows of the second). Each is scored by the norm of all
its weights (L2 by default, L1 with ``norm="l1"``) and the lowest-scoring fraction is
removed, at least one kept per layer.

Handled: ``keras.layers.MultiHeadAttention`` (and KerasHub's ``CachedMultiHeadAttention``)
called in a functional graph, rebuilt from its config with fewer heads (``key_dim`` and
``value_dim`` are in the config, so the file reloads); KerasHub's ``TransformerEncoder``
(BERT), ``TransformerDecoder`` without cross-attention (GPT-2) and ``ViTEncoder``
(ViT), whose head size is derived from ``hidden_dim // num_heads`` when they are
built, so fewer heads cannot be expressed in their config: they are rebuilt as the same
computation in plain Keras layers (``LayerNormalization``, ``MultiHeadAttention`` with
the padding and causal masks as ``value_mask`` / ``use_causal_mask``, ``Dense``,
``Dropout``, ``Add``), named after the block, which saves and reloads with no custom
class. Anything else (cross-attention, a cache, an explicit attention mask) is kept
whole and named.

Example:

>>> from compress.pruning.structured import prune_units
>>> small, info = prune_units(bert, 0.5)              # doctest: +SKIP
>>> info["heads"], info["ffn_units"]                  # doctest: +SKIP
({'transformer_layer_0': [4, 2], 'transformer_layer_1': [4, 2]},
 {'transformer_layer_0': [64, 32], 'transformer_layer_1': [64, 32]})
"""

from __future__ import annotations

import numpy as np

ATTENTION = ("MultiHeadAttention", "CachedMultiHeadAttention")
BLOCKS = ("TransformerEncoder", "TransformerDecoder", "ViTEncoder")
# KerasHub layers whose get_config does not rebuild them (ViT's patch embedding writes
# num_patches, which its constructor refuses): rebuilt in plain layers, unchanged in size.
REWRITTEN = ("ViTPatchingAndEmbedding",)


def is_transformer(op) -> bool:
    """True for an attention layer or transformer block this module can shrink."""
    return type(op).__name__ in ATTENTION + BLOCKS or config_ffn(op) is not None


def config_ffn(op):
    """``(producers, consumer)``: the feed-forward of a transformer block whose width is a
    constructor argument, ``intermediate_dim`` (KerasHub's Llama, Mistral, Qwen, Phi-3
    decoders: a gated pair of ``Dense`` layers into it, one out of it), or None.

    Such a block is rebuilt as its own class with fewer intermediate units and the
    matching slices of those three kernels; its attention keeps its heads (their size is
    ``hidden_dim // num_query_heads`` there, not a constructor argument).

    Example:

    >>> producers, consumer = config_ffn(llama.get_layer("transformer_layer_0"))  # doctest: +SKIP
    >>> [p.name for p in producers], consumer.name                               # doctest: +SKIP
    (['feedforward_intermediate_dense', 'feedforward_gate_dense'], 'feedforward_output_dense')
    """
    import keras

    inter = getattr(op, "intermediate_dim", None)
    if type(op).__name__ in ATTENTION + BLOCKS or isinstance(op, keras.Model) or \
            not isinstance(inter, int) or isinstance(inter, bool) or \
            not getattr(op, "built", False):
        return None
    subs = [la for la in op._flatten_layers(include_self=False, recursive=True)
            if type(la).__name__ in ("Dense", "EinsumDense")
            and len(getattr(getattr(la, "kernel", None), "shape", ())) == 2]
    producers = [la for la in subs if la.kernel.shape[1] == inter]
    consumers = [la for la in subs if la.kernel.shape[0] == inter]
    hidden = {int(la.kernel.shape[0]) for la in producers}
    if not producers or len(consumers) != 1 or inter in hidden or len(hidden) != 1 or \
            any(la in consumers for la in producers) or \
            consumers[0].kernel.shape[1] not in hidden:
        return None
    from compress.layer_state import read_config

    try:
        config, _ = read_config(op)
    except ValueError:
        return None
    return (producers, consumers[0]) if config.get("intermediate_dim") == inter else None


def rewrites(op) -> bool:
    """True for a layer this module rebuilds (transformers, and :data:`REWRITTEN`)."""
    return is_transformer(op) or type(op).__name__ in REWRITTEN


def _keep(scores: np.ndarray, fraction: float) -> np.ndarray:
    n = len(scores)
    k = max(1, n - round(fraction * n))
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def _norm(arrays, axes, norm):
    """Per-unit norm over several arrays, each with its unit axis at ``axes[i]``."""
    total = 0.0
    for a, ax in zip(arrays, axes):
        a = np.moveaxis(np.asarray(a, "float64"), ax, 0).reshape(a.shape[ax], -1)
        total = total + (np.abs(a).sum(1) if norm == "l1" else (a ** 2).sum(1))
    return total if norm == "l1" else np.sqrt(total)


def head_scores(mha, norm: str = "l2") -> np.ndarray:
    """The norm of each head's query, key, value and output weights (biases included)."""
    arrays, axes = [], []
    for dense in (mha._query_dense, mha._key_dense, mha._value_dense):
        arrays.append(dense.kernel)
        axes.append(1)
        if dense.bias is not None:
            arrays.append(dense.bias)
            axes.append(0)
    arrays.append(mha._output_dense.kernel)
    axes.append(0)
    return _norm(arrays, axes, norm)


def ffn_scores(first, second, norm: str = "l2") -> np.ndarray:
    """The norm of each intermediate unit: its column of ``first``, row of ``second``."""
    arrays, axes = [first.kernel, second.kernel], [1, 0]
    if first.bias is not None:
        arrays.append(first.bias)
        axes.append(0)
    return _norm(arrays, axes, norm)


def _mha_weights(mha, keep):
    """``mha``'s weights with heads ``keep`` only, in ``mha.weights`` order."""
    axis = {}
    for dense in (mha._query_dense, mha._key_dense, mha._value_dense):
        axis[id(dense.kernel)] = 1
        if dense.bias is not None:
            axis[id(dense.bias)] = 0
    axis[id(mha._output_dense.kernel)] = 0
    return [np.take(w, keep, axis=axis[id(v)]) if id(v) in axis else w
            for v, w in zip(mha.weights, mha.get_weights())]


def _dense_pair_weights(first, second, keep):
    w1 = [np.take(w, keep, axis=-1) for w in first.get_weights()]
    w2 = second.get_weights()
    w2[0] = np.take(w2[0], keep, axis=0)
    return w1, w2


class Plan:
    """How one attention layer or block is rebuilt: ``heads`` and ``ffn_units`` as
    ``{name: [before, after]}``; :meth:`make` returns the replacement (a layer, or a
    function building plain layers on the call's tensors), :meth:`load` sets its
    weights once the new model is built."""

    def __init__(self, op, fraction, norm):
        self.op, self.fraction, self.norm = op, fraction, norm
        self.heads, self.ffn_units, self._pending = {}, {}, []

    # -- one attention layer ---------------------------------------------------------
    def _attention(self, mha, label, **overrides):
        import keras

        keep = _keep(head_scores(mha, self.norm), self.fraction)
        self.heads[label] = [int(mha.num_heads), len(keep)]
        config = mha.get_config()
        config.update(num_heads=len(keep), **overrides)
        # inside a block: a plain Keras layer (KerasHub's cached variant adds only the
        # cache, which a block rebuilt here is never called with)
        cls = keras.layers.MultiHeadAttention if overrides else mha.__class__
        new = cls.from_config(config)
        self._pending.append((new, _mha_weights(mha, keep)))
        return new

    def _ffn(self, first, second, name, activation, prefix):
        import keras

        keep = _keep(ffn_scores(first, second, self.norm), self.fraction)
        self.ffn_units[name] = [int(first.units), len(keep)]
        a = keras.layers.Dense(len(keep), activation=activation, use_bias=first.use_bias,
                               dtype=self.op.dtype_policy, name=f"{prefix}_intermediate")
        b = keras.layers.Dense(second.units, use_bias=second.use_bias,
                               dtype=self.op.dtype_policy, name=f"{prefix}_output")
        w1, w2 = _dense_pair_weights(first, second, keep)
        self._pending += [(a, w1), (b, w2)]
        return a, b

    def _copy(self, layer, name):
        config = layer.get_config()
        config["name"] = name
        new = layer.__class__.from_config(config)
        self._pending.append((new, layer.get_weights()))
        return new

    def _dropout(self, rate, name):
        import keras

        return keras.layers.Dropout(rate, dtype=self.op.dtype_policy, name=name)

    # -- the replacement -------------------------------------------------------------
    def make(self):
        kind = type(self.op).__name__
        if kind in ATTENTION:
            return self._attention(self.op, self.op.name)
        if kind not in BLOCKS + REWRITTEN:
            return self._config_ffn()
        return getattr(self, f"_{kind}")()

    def _config_ffn(self):
        """The block as its own class with fewer ``intermediate_dim`` units (see
        :func:`config_ffn`); its weights are the old ones, the feed-forward kernels (and
        biases) sliced to the kept units."""
        from compress.layer_state import keep_config, read_config

        op = self.op
        producers, consumer = config_ffn(op)
        arrays = [p.kernel for p in producers] + [consumer.kernel]
        axes = [1] * len(producers) + [0]
        for p in producers:
            if getattr(p, "bias", None) is not None:
                arrays.append(p.bias)
                axes.append(0)
        keep = _keep(_norm(arrays, axes, self.norm), self.fraction)
        self.ffn_units[op.name] = [int(op.intermediate_dim), len(keep)]
        axis = {id(v): a for v, a in zip(arrays, axes)}
        config, own = read_config(op)
        config = {**config, "intermediate_dim": len(keep)}
        new = type(op).from_config(dict(config))
        if not own:
            keep_config(new, config)
        self._pending.append((new, [np.take(w, keep, axis=axis[id(v)]) if id(v) in axis
                                    else w for v, w in zip(op.weights, op.get_weights())]))
        return new

    def load(self):
        for layer, weights in self._pending:
            layer.set_weights(weights)

    def _TransformerEncoder(self):
        import keras

        op, name = self.op, self.op.name
        mha = self._attention(op._self_attention_layer, name,
                              name=f"{name}_self_attention")
        ln1 = self._copy(op._self_attention_layer_norm, f"{name}_self_attention_layer_norm")
        ln2 = self._copy(op._feedforward_layer_norm, f"{name}_feedforward_layer_norm")
        dense_a, dense_b = self._ffn(op._feedforward_intermediate_dense,
                                     op._feedforward_output_dense, name, op.activation,
                                     f"{name}_feedforward")

        def block(x, padding_mask=None, **_):
            residual = x
            if op.normalize_first:
                x = ln1(x)
            x = mha(x, x, value_mask=padding_mask)
            x = self._dropout(op.dropout, f"{name}_self_attention_dropout")(x)
            x = keras.layers.Add(name=f"{name}_self_attention_residual")([x, residual])
            if not op.normalize_first:
                x = ln1(x)
            residual = x
            if op.normalize_first:
                x = ln2(x)
            x = dense_b(dense_a(x))
            x = self._dropout(op.dropout, f"{name}_feedforward_dropout")(x)
            x = keras.layers.Add(name=f"{name}_feedforward_residual")([x, residual])
            if not op.normalize_first:
                x = ln2(x)
            return x
        return block

    def _TransformerDecoder(self):
        import keras

        op, name = self.op, self.op.name
        mha = self._attention(op._self_attention_layer, name,
                              name=f"{name}_self_attention")
        ln1 = self._copy(op._self_attention_layer_norm, f"{name}_self_attention_layer_norm")
        ln2 = self._copy(op._feedforward_layer_norm, f"{name}_feedforward_layer_norm")
        dense_a, dense_b = self._ffn(op._feedforward_intermediate_dense,
                                     op._feedforward_output_dense, name, op.activation,
                                     f"{name}_feedforward")

        def block(x, decoder_padding_mask=None, use_causal_mask=True, **_):
            residual = x
            if op.normalize_first:
                x = ln1(x)
            x = mha(x, x, value_mask=decoder_padding_mask, use_causal_mask=use_causal_mask)
            x = self._dropout(op.dropout, f"{name}_self_attention_dropout")(x)
            x = keras.layers.Add(name=f"{name}_self_attention_residual")([x, residual])
            if not op.normalize_first:
                x = ln1(x)
            residual = x
            if op.normalize_first:
                x = ln2(x)
            x = dense_b(dense_a(x))
            x = self._dropout(op.dropout, f"{name}_feedforward_dropout")(x)
            x = keras.layers.Add(name=f"{name}_feedforward_residual")([x, residual])
            if not op.normalize_first:
                x = ln2(x)
            return x
        return block

    def _ViTPatchingAndEmbedding(self):
        """Patches, class token and positions: ``Conv2D``, ``Reshape``, a zero slot for
        the class token (``ZeroPadding1D``) and KerasHub's ``PositionEmbedding``, whose
        row 0 holds position 0 plus the class token (the same sums)."""
        import keras
        from keras_hub.layers import PositionEmbedding

        op, name = self.op, self.op.name
        conv = self._copy(op.patch_embedding, f"{name}_patch_embedding")
        table = np.array(op.position_embedding.get_weights()[0])
        if op.use_class_token:
            table[0] = table[0] + np.asarray(op.class_token)[0, 0]
        positions = PositionEmbedding(sequence_length=op.num_positions,
                                      dtype=op.dtype_policy, name=f"{name}_positions")
        self._pending.append((positions, [table]))

        def embed(x, **_):
            h = keras.layers.Reshape((op.num_patches, op.hidden_dim),
                                     name=f"{name}_patches")(conv(x))
            if op.use_class_token:
                h = keras.layers.ZeroPadding1D((1, 0), name=f"{name}_class_slot")(h)
            return keras.layers.Add(name=f"{name}_add")([h, positions(h)])
        return embed

    def _ViTEncoder(self):
        import keras

        op, name = self.op, self.op.name
        parts = []
        for blk in op.encoder_layers:
            bname = f"{name}_{blk.name}"
            mha = self._attention(blk.mha, f"{name}/{blk.name}", name=f"{bname}_mha")
            ln1 = self._copy(blk.layer_norm_1, f"{bname}_ln_1")
            ln2 = self._copy(blk.layer_norm_2, f"{bname}_ln_2")
            dense_a, dense_b = self._ffn(blk.mlp.dense_1, blk.mlp.dense_2,
                                         f"{name}/{blk.name}", "gelu", f"{bname}_mlp")
            parts.append((bname, blk, mha, ln1, ln2, dense_a, dense_b))
        final = self._copy(op.layer_norm, f"{name}_ln")

        def encoder(x, **_):
            x = self._dropout(op.dropout_rate, f"{name}_dropout")(x)
            for bname, blk, mha, ln1, ln2, dense_a, dense_b in parts:
                y = ln1(x)
                y = mha(y, y)
                y = self._dropout(blk.dropout_rate, f"{bname}_dropout")(y)
                x = keras.layers.Add(name=f"{bname}_attention_residual")([y, x])
                z = ln2(x)
                z = dense_a(z)
                z = self._dropout(blk.dropout_rate, f"{bname}_mlp_dropout_1")(z)
                z = dense_b(z)
                z = self._dropout(blk.dropout_rate, f"{bname}_mlp_dropout_2")(z)
                x = keras.layers.Add(name=f"{bname}_mlp_residual")([x, z])
            return final(x)
        return encoder


def why_whole(step) -> str | None:
    """Why the attention layer or block of ``step`` is kept whole (None: it can shrink)."""
    op, kind = step.op, type(step.op).__name__
    given = {k for k, v in step.kwargs.items() if v is not None and v is not False}
    if kind not in ATTENTION + BLOCKS + REWRITTEN:  # config_ffn: its own class, called alike
        return None
    if kind in ATTENTION:
        if not getattr(op, "built", False):
            return "not built"
        if "cache" in given or "return_attention_scores" in given:
            return "called with a cache or returning attention scores"
        return None
    if kind in REWRITTEN:
        return "channels_first" if getattr(op, "data_format", "") == "channels_first" \
            else None
    if kind == "TransformerEncoder":
        extra = given - {"padding_mask", "training"}
    elif kind == "TransformerDecoder":
        if getattr(op, "_cross_attention_layer", None) is not None or len(step.args) > 1:
            return "has cross-attention"
        extra = given - {"decoder_padding_mask", "training", "use_causal_mask"}
    else:
        extra = given - {"training"}
        if not hasattr(op, "encoder_layers"):
            return "not built"
    if extra:
        return f"called with {', '.join(sorted(extra))}"
    return None
