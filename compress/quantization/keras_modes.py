"""Keras's own low-bit quantizers (``model.quantize``) on Dense/EinsumDense models.

Modes (each writes a ``.keras`` model whose quantized layers Keras runs itself):

- ``keras-int8``: ``model.quantize("int8")``: int8 kernels with per-output-channel scales,
  activations quantized on the fly (Dense, EinsumDense, Embedding).
- ``keras-int4``: ``model.quantize("int4")``: weight-only 4-bit kernels, Keras's default
  grid (one scale and zero point per 128 input rows of each output channel), two codes
  packed per byte.
- ``gptq`` / ``awq``: Keras's ``GPTQConfig`` / ``AWQConfig`` (4-bit, groups of 128) run
  unchanged on the calibration samples. Keras built them for transformers: it casts the
  calibration data to int32 token windows, runs them through ``pre_block_layers`` and then
  through ``sequential_blocks`` one after the other, each fed the previous one's output
  with a leading batch axis of 1 (``quantization_layer_structure``). For a model whose
  layers form one chain, :func:`chain_structure` gives Keras that structure: each "token"
  is the index of a chunk of calibration samples, the pre-block step looks the chunk up,
  and each block is a run of the model's layers ending at a Dense/EinsumDense. Models that
  are not one chain (branches, several inputs) are refused in one line.

Convolutions and every other layer type stay float; the result lists them.

Keras 3.15 workarounds, both outside its quantizers: the GPTQ/AWQ structure (which holds
the blocks) is removed from the config before saving (the layers serialize their config),
and a GPTQ/AWQ Dense's ``kernel_zero`` is written into the file (``save_own_variables``
skips it while ``load_own_variables`` requires it, so the file would not load back).

Example:

>>> from compress.quantization.keras_modes import keras_quantize
>>> quantized, layers = keras_quantize(model, "gptq", x_calibration)   # doctest: +SKIP
>>> layers["quantized"], layers["float"]                              # doctest: +SKIP
({'fc1': 'gptq/4/128', 'fc2': 'gptq/4/128', 'predictions': 'gptq/4/128'}, [])
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np

from compress.errors import CompressError

#: compress mode -> Keras ``model.quantize`` mode.
KERAS_MODES = {"keras-int8": "int8", "keras-int4": "int4", "gptq": "gptq", "awq": "awq"}
#: Modes calibrated on samples (Keras's GPTQ and AWQ).
CALIBRATED = ("gptq", "awq")
#: Samples per calibration "token" (one forward pass of a block).
CHUNK = 32
#: Keras's own default group size of GPTQ and AWQ (its ``group_size=-1``, per channel,
#: fails in Keras 3.15's GPTQ: the scales come out per 128-row block, not one per channel).
GROUP_SIZE = 128


def keras_quantize(model, mode: str, x=None) -> tuple:
    """Quantize a copy of ``model`` with Keras's own ``mode`` (a key of ``KERAS_MODES``).

    Args:
        model: a Keras model (not modified).
        mode: ``keras-int8``, ``keras-int4``, ``gptq`` or ``awq``.
        x: calibration samples (an array shaped like the model's input), needed by
            ``gptq`` and ``awq``.

    Returns:
        ``(quantized_model, layers)``: the new model, and ``{"quantized": {name: Keras
        dtype policy}, "float": [names of layers with weights that stayed float],
        "notes": [how the copy differs from ``model``]}``. A mixed-precision model
        (``mixed_float16``) is quantized through a float32 copy (Keras's int8 refuses a
        float16 compute dtype); a functional wrapper around one subclassed model (what
        :func:`compress.io.with_input_signature` makes) is quantized as a functional
        model of the subclassed model's layers, since the subclass rebuilds its Dense
        layers in float when loaded and the int8 file would not load back. Both are said
        in ``notes``; the caller checks the result against ``model`` itself.

    Raises:
        CompressError: gptq/awq on a model Keras cannot calibrate (one line, why); a
            subclassed model that cannot be traced into layers (one line, what to do).
    """
    notes = []
    source, copy_notes = _float32_source(model)
    notes += copy_notes
    source, flat_notes = _flattened(source, mode)
    notes += flat_notes
    quantized = _copy(source)
    keras_mode, config = KERAS_MODES[mode], None
    if mode in CALIBRATED:
        config = _calibration_config(quantized, mode, x)
    import io

    # Keras warns once per layer it cannot quantize, and GPTQ/AWQ print a progress bar on
    # stdout (it would corrupt the CLI's --json output).
    # TimeDistributed runs its layer's float ``call`` directly, past the quantized call,
    # so an int8 kernel inside one would be read as float (outputs off by 100s): those
    # layers stay float, and the note says so.
    import keras

    wrapped = {id(la.layer): la.name for la in quantized._flatten_layers()
               if isinstance(la, keras.layers.TimeDistributed) and isinstance(
                   la.layer, (keras.layers.Dense, keras.layers.EinsumDense,
                              keras.layers.Embedding))}
    if wrapped:
        notes.append("layers inside TimeDistributed stay float (it runs the wrapped "
                     "layer's float call, which would read an int8 kernel as float): "
                     + ", ".join(wrapped.values()))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            calibration_reaches_layers():
        warnings.simplefilter("ignore", UserWarning)
        # Unbuilt layers hold nothing to quantize, and Keras refuses them (a
        # TextVectorization's inner StringLookup: "Cannot quantize a layer that isn't yet
        # built").
        quantized.quantize(keras_mode, config=config,
                           filters=lambda layer: id(layer) not in wrapped and layer.built)
    if config is not None:  # the blocks are not serializable, and only calibration needs them
        config.quantization_layer_structure = None
        config.dataset = config.tokenizer = None
    # A deployable file: without the copy's optimizer slots (Adam: two float copies of
    # every weight, which would make the 4-bit file larger than the float one). The
    # compile config (loss, metrics) stays.
    if getattr(quantized, "optimizer", None) is not None:
        quantized.optimizer = None
    layers = {**layer_modes(quantized), "notes": notes}
    if not layers["quantized"]:  # an unchanged float copy is no quantized model
        kinds = sorted({type(lay).__name__ for lay in _leaf_layers(quantized) if lay.weights})
        raise CompressError(f"mode {mode}: Keras's model.quantize quantizes Dense, EinsumDense "
                            f"and Embedding layers only, and model '{model.name}' has none "
                            f"(its layers with weights: {', '.join(kinds[:6]) or 'none'}), so "
                            "nothing would be quantized: use --mode int8 or --mode dynamic "
                            "with a .tflite or .onnx output")
    return quantized, layers


def _leaf_layers(model) -> list:
    from compress.report import leaf_layers

    return leaf_layers(model)


def _float32_source(model) -> tuple:
    """``(model, [])``, or for a mixed-precision model (``mixed_float16``) a float32 copy
    (:func:`compress.export.export_copy`, the one the TFLite/ONNX export makes) and the
    note that says so: Keras's int8 refuses a float16 compute dtype ("doesn't work well
    with compute_dtype='float16'")."""
    from compress.export import export_copy
    from compress.report import leaf_layers

    if not any(lay.dtype_policy.compute_dtype != "float32"
               and not lay.dtype_policy.quantization_mode for lay in leaf_layers(model)):
        return model, []
    copy, notes = export_copy(model, "tflite")
    if copy is model:
        return model, []
    return copy, [n.replace("exported through", "quantized through") for n in notes]


def _flattened(model, mode: str) -> tuple:
    """``(model, [])``, or for a functional wrapper around one subclassed model (input,
    then the model) a functional model of that model's own layers, traced through its
    ``call``, and the note that says so.

    Keras saves a quantized Dense as int8 kernel + scale, but a subclassed model's
    ``from_config`` builds its Dense layers in float, so the file does not load back
    ("Layer 'dense' expected 2 variables"). Traced, each layer's int8 policy is in the
    file's config. A subclassed model whose ``call`` cannot be traced is refused in one
    line, before anything is written.
    """
    import keras

    inner = [lay for lay in getattr(model, "layers", [])
             if not isinstance(lay, keras.layers.InputLayer)]
    subclassed = [lay for lay in inner if _is_subclassed(lay) and _has_targets(lay)]
    if not subclassed:
        return model, []
    sub = subclassed[0]
    why = (f"mode {mode}: model '{model.name}' holds the subclassed model '{sub.name}' "
           f"({type(sub).__name__}), whose from_config builds its Dense layers in float, so "
           "the int8 .keras file Keras saves would not load back")
    if len(inner) != 1 or len(model.inputs) != 1:
        raise CompressError(f"{why}; nothing written: use --mode int8 or --mode dynamic "
                            "with a .tflite or .onnx output")
    try:
        inp = keras.Input(tuple(model.inputs[0].shape[1:]), name=model.inputs[0].name)
        flat = keras.Model(inp, sub.call(inp), name=model.name)
    except Exception as exc:  # noqa: BLE001 - its call is not a chain of Keras layers
        raise CompressError(f"{why}, and its call could not be traced into layers "
                            f"({' '.join(str(exc).split())[:120]}); nothing written: use "
                            "--mode int8 or --mode dynamic with a .tflite or .onnx "
                            "output") from None
    note = (f"subclassed model '{sub.name}' ({type(sub).__name__}) saved as a functional "
            f"model of its layers, input shape {tuple(model.inputs[0].shape[1:])}: the file "
            f"loads with plain Keras, without --import (its class would rebuild its Dense "
            f"layers in float, and the {mode} file would not load back)")
    return flat, [note]


def _is_subclassed(layer) -> bool:
    import keras

    return (isinstance(layer, keras.Model) and not isinstance(layer, keras.Sequential)
            and getattr(layer, "_nodes_by_depth", None) is None)


def _has_targets(layer) -> bool:
    import keras

    targets = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding)
    return any(isinstance(sub, targets) for sub in layer._flatten_layers())


def _copy(model):
    """A copy to quantize. A KerasHub backbone is copied through a file: an in-memory
    clone's layer paths differ from the ones a loaded model gets, and the backbone keys
    the quantized layers' policies by path, so Keras's int8 file of such a clone did not
    load back ("expected 2 variables"). (A KerasHub task model, which holds its backbone,
    needs the in-memory clone: through a file its head did not load back.)"""
    from compress.training import copy_model

    if not any(c.__name__ == "Backbone" and c.__module__.startswith("keras_hub")
               for c in type(model).__mro__):
        return copy_model(model)
    import tempfile
    from pathlib import Path

    from compress import io
    from compress.training import check_finite

    check_finite(model)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "copy.keras"
        model.save(path)
        return io.load_model(path, unsafe=io.loaded_unsafely(model))


def layer_modes(model) -> dict:
    """Which leaf layers Keras quantized (their dtype policy) and which kept float weights.

    Layers inside custom layers (a KerasHub transformer block's Dense and EinsumDense) are
    looked at one by one, named by their path.

    >>> layer_modes(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))  # doctest: +SKIP
    {'quantized': {}, 'float': ['dense']}
    """
    from compress.report import leaf_layers

    quantized, float_layers = {}, []

    def visit(layer, top: bool):
        name = layer.name if top else getattr(layer, "path", layer.name)
        subs = [] if getattr(layer, "quantization_mode", None) else list(
            layer._flatten_layers(include_self=False, recursive=False))
        own = not subs or getattr(layer, "_trainable_variables", None) \
            or getattr(layer, "_non_trainable_variables", None)
        if getattr(layer, "quantization_mode", None):
            quantized[name] = layer.dtype_policy.name
        elif own and layer.weights and name not in float_layers:  # a shared layer: once
            float_layers.append(name)
        for sub in subs:
            visit(sub, False)

    for layer in leaf_layers(model):
        visit(layer, True)
    return {"quantized": quantized, "float": float_layers}


@contextlib.contextmanager
def complete_save(model):
    """While saving, write each GPTQ/AWQ Dense/EinsumDense's ``kernel_zero`` too.

    Keras 3.15's ``save_own_variables`` stores ``kernel_zero`` only when its LoRA merge
    returns one, which it never does for gptq/awq, while ``load_own_variables`` expects
    it: without this the file fails to load ("expected 6 variables, but received 5").
    """
    from compress.layer_state import all_layers

    patched = []
    for layer in all_layers(model):  # a KerasHub decoder's Dense layers too
        if (getattr(layer, "quantization_mode", None) in CALIBRATED
                and hasattr(layer, "kernel_zero")
                and hasattr(layer, "_get_kernel_with_merged_lora")):
            original = layer._get_kernel_with_merged_lora

            def merged(original=original, layer=layer):
                kernel, scale, zero = original()
                return kernel, scale, layer.kernel_zero if zero is None else zero
            layer._get_kernel_with_merged_lora = merged
            patched.append((layer, original))
    try:
        yield
    finally:
        for layer, original in patched:
            layer._get_kernel_with_merged_lora = original


@contextlib.contextmanager
def calibration_reaches_layers():
    """While Keras's GPTQ/AWQ calibrate, let their hooks see the layers' inputs.

    Keras 3.15 first turns every layer to its gptq/awq dtype policy, after which
    ``Operation.__call__`` runs the layer's ``quantized_call``; the calibration hooks are
    put on ``layer.call``, which then never runs. GPTQ's Hessians stay zero (it rounds to
    nearest) and AWQ's activation statistics stay zero (every scale 1): Keras's own
    results equal round-to-nearest, without a word (fixed upstream, keras-team/keras
    pull request 23512, after 3.15.1). Inside this context, each hooked layer's
    ``quantized_call`` is sent to the hook for the duration of the hook (its float call,
    which a layer not yet calibrated runs anyway). A Keras that hooks ``quantized_call``
    itself, or no longer hooks ``call``, is left alone.
    """
    from keras.src.quantizers import awq_core, gptq_core

    def routed(stream):
        @contextlib.contextmanager
        def hooked(layers_map, objects):
            with stream(layers_map, objects):
                sent = [layer for layer in layers_map.values()
                        if "call" in vars(layer) and "quantized_call" not in vars(layer)]
                for layer in sent:
                    object.__setattr__(layer, "quantized_call", vars(layer)["call"])
                try:
                    yield
                finally:
                    for layer in sent:
                        vars(layer).pop("quantized_call", None)
        return hooked

    patched = [(module, name, getattr(module, name)) for module, name in (
        (gptq_core, "stream_hessians"), (awq_core, "stream_activations"))
        if hasattr(module, name)]
    for module, name, original in patched:
        setattr(module, name, routed(original))
    try:
        yield
    finally:
        for module, name, original in patched:
            setattr(module, name, original)


def chain_layers(model, mode: str) -> list:
    """The model's layers in order when they form one chain, else a one-line refusal."""
    why = (f"mode {mode}: Keras's {mode.upper()} feeds a model's blocks one after the other, "
           "each the previous block's output")
    graph = getattr(model, "_functional", None) or model  # Sequential keeps a Functional
    by_depth = getattr(graph, "_nodes_by_depth", None)
    if not by_depth or len(model.inputs) != 1 or len(model.outputs) != 1:
        raise CompressError(f"{why}; model '{model.name}' has {len(model.inputs)} inputs and "
                            f"{len(model.outputs)} outputs, not one chain from one input: "
                            "use --mode keras-int4 or --mode int4 --rounding gptq")
    chain = []
    for depth in sorted(by_depth, reverse=True):
        nodes = [n for n in by_depth[depth] if not n.is_input]
        names = [n.operation.name for n in nodes]
        if len(nodes) > 1 or any(len(n.input_tensors) != 1 for n in nodes) \
                or any(n.operation in chain for n in nodes):
            raise CompressError(f"{why}; model '{model.name}' branches at "
                                f"{', '.join(repr(n) for n in names)} (not one chain): use "
                                "--mode keras-int4 or --mode int4 --rounding gptq")
        chain += [n.operation for n in nodes]
    return chain


def chain_structure(model, x, mode: str, chunk: int = CHUNK) -> tuple[dict, int]:
    """Keras's ``quantization_layer_structure`` for a chain model, and the token count.

    Token ``i`` stands for chunk ``i`` of ``x`` (``chunk`` samples); the pre-block step
    turns it into those samples shaped ``(1, chunk, *input_shape)``, and each block (a run
    of the model's layers ending at a Dense/EinsumDense) runs them as one batch and gives
    its output back in that shape.
    """
    import keras
    from keras import ops

    targets = (keras.layers.Dense, keras.layers.EinsumDense)
    blocks, run = [], []
    for layer in chain_layers(model, mode):
        run.append(layer)
        if any(isinstance(sub, targets) for sub in layer._flatten_layers()):
            blocks.append(_block(run))
            run = []
    if not blocks:
        raise CompressError(f"mode {mode}: Keras's {mode.upper()} quantizes Dense and "
                            f"EinsumDense layers only and model '{model.name}' has none")
    x = np.asarray(x)
    chunks = [c[None] for c in np.array_split(x, max(1, -(-len(x) // chunk)))]

    def lookup(tokens):  # int32 (1, 1) token window -> the chunk of samples it stands for
        return ops.convert_to_tensor(chunks[int(ops.convert_to_numpy(tokens).ravel()[0])])
    return {"pre_block_layers": [lookup], "sequential_blocks": blocks}, len(chunks)


def _block(run: list):
    """A run of layers as one Keras layer on ``(1, batch, *features)`` inputs."""
    import keras
    from keras import ops

    class ChainBlock(keras.layers.Layer):
        def __init__(self, run):
            super().__init__()
            self.run = run  # tracked: Keras finds the Dense/EinsumDense layers inside

        def call(self, x):
            y = ops.reshape(x, (-1,) + tuple(x.shape[2:]))
            for layer in self.run:
                y = layer(y)
            return ops.expand_dims(y, 0)
    return ChainBlock(list(run))


def _calibration_config(model, mode: str, x):
    from keras.quantizers import AWQConfig, GPTQConfig

    if x is None or len(x) == 0:
        raise CompressError(f"mode {mode} calibrates Keras's {mode.upper()} on real samples "
                            "and none were given: pass --data NAME")
    blocks = transformer_structure(model)
    if blocks is not None:  # a KerasHub language model: Keras's own structure and data
        tokens = np.asarray(x["token_ids"] if isinstance(x, dict) else x, "int32")
        n = min(len(tokens), MAX_SEQUENCES)
        return (GPTQConfig if mode == "gptq" else AWQConfig)(
            dataset=real_tokens(tokens[:n], x.get("padding_mask") if isinstance(x, dict)
                                else None),
            tokenizer=_no_tokenizer, weight_bits=4, num_samples=n,
            sequence_length=int(tokens.shape[-1]), group_size=GROUP_SIZE,
            quantization_layer_structure=blocks)
    if isinstance(x, dict):
        raise CompressError(f"mode {mode}: Keras's {mode.upper()} feeds one input tensor; "
                            f"model '{model.name}' has several inputs and is no KerasHub "
                            "language model (token embedding, then transformer layers)")
    structure, n = chain_structure(model, x, mode)
    # The "tokens" are chunk indices; they are numbers already, so the tokenizer Keras
    # requires (it only tokenizes strings) is never called.
    config = (GPTQConfig if mode == "gptq" else AWQConfig)(
        dataset=np.arange(n), tokenizer=_no_tokenizer, weight_bits=4, num_samples=n,
        sequence_length=1, group_size=GROUP_SIZE, quantization_layer_structure=structure)
    return config


#: Calibration sequences a language model's GPTQ/AWQ takes at most (Keras's default is 128).
MAX_SEQUENCES = 128


def real_tokens(tokens: np.ndarray, padding_mask=None) -> list:
    """The calibration text of a language model's GPTQ/AWQ: each sequence's tokens where
    ``padding_mask`` is set (all of them without one). Keras joins the pieces into one
    stream and cuts it into windows of the sequence length, as it does with documents,
    so padding never enters the layer statistics.

    Example:

    >>> ids = np.array([[5, 6, 0, 0], [7, 8, 9, 0]])
    >>> [p.tolist() for p in real_tokens(ids, ids != 0)]
    [[5, 6], [7, 8, 9]]
    """
    if padding_mask is None:
        return list(tokens)
    mask = np.asarray(padding_mask)[:len(tokens)].astype(bool)
    pieces = [row[keep] for row, keep in zip(tokens, mask, strict=True) if keep.any()]
    if not pieces:
        raise CompressError("the calibration sequences' padding_mask masks every token: "
                            "pass --data with real text")
    return pieces


def transformer_structure(model) -> dict | None:
    """Keras's GPTQ/AWQ structure of a KerasHub language model, or None: its token
    embedding (``token_embedding`` or ``embedding``) before its ``transformer_layers``, as
    KerasHub's ``CausalLM.get_quantization_layer_structure`` gives it, found for a
    backbone too and for a copy of one (the toolkit's copies are functional models with
    the same layer names). Each block is called on the previous one's output alone, on
    windows of the calibration sequences' real tokens (:func:`real_tokens`: no padding).

    Example:

    >>> transformer_structure(llama)["sequential_blocks"][0].name   # doctest: +SKIP
    'transformer_layer_0'
    """
    from compress.layer_state import all_layers

    layers = {la.name: la for la in all_layers(model)}
    blocks = sorted((la for name, la in layers.items() if _block_index(name) is not None),
                    key=lambda la: _block_index(la.name))
    embedding = layers.get("token_embedding") or layers.get("embedding")
    if not blocks or embedding is None or \
            not type(embedding).__module__.startswith("keras_hub") and \
            type(embedding).__name__ not in ("Embedding", "ReversibleEmbedding"):
        return None
    inputs = [t.name for t in getattr(model, "inputs", None) or []]
    if "token_ids" not in inputs:
        return None
    return {"pre_block_layers": [embedding], "sequential_blocks": blocks}


def _block_index(name: str):
    import re

    found = re.fullmatch(r"(?:transformer_layer|decoder_block|transformer_block)_(\d+)", name)
    return int(found.group(1)) if found else None


def _no_tokenizer(text):
    raise CompressError("internal: the calibration chunks are indices, not text")


def export_outcomes(model, seed: int = 0) -> dict:
    """One line per format: what the project's TFLite and ONNX export does with ``model``.

    ``{"tflite": "works (...)" or "refused: ...", "onnx": ...}``, each export verified in
    its runtime on seeded random inputs (:func:`compress.export.export_artifact`).
    """
    from compress.export import export_artifact

    outcomes = {}
    for fmt in ("tflite", "onnx"):
        try:
            content, check = export_artifact(model, None, format=fmt, seed=seed)
            outcomes[fmt] = (f"works ({len(content)} bytes, max abs diff "
                             f"{check.get('max_abs_diff', float('nan')):.2g} vs Keras)")
        except CompressError as exc:
            outcomes[fmt] = f"refused: {exc}"
        except Exception as exc:  # noqa: BLE001 - any converter failure is the answer
            outcomes[fmt] = f"fails: {' '.join(str(exc).split())[:200]}"
    return outcomes
