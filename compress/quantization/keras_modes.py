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
        dtype policy}, "float": [names of layers with weights that stayed float]}``.

    Raises:
        CompressError: gptq/awq on a model Keras cannot calibrate (one line, why).
    """
    from compress.training import copy_model

    quantized = copy_model(model)
    keras_mode, config = KERAS_MODES[mode], None
    if mode in CALIBRATED:
        config = _calibration_config(quantized, mode, x)
    import io

    # Keras warns once per layer it cannot quantize, and GPTQ/AWQ print a progress bar on
    # stdout (it would corrupt the CLI's --json output).
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", UserWarning)
        quantized.quantize(keras_mode, config=config)
    if config is not None:  # the blocks are not serializable, and only calibration needs them
        config.quantization_layer_structure = None
        config.dataset = config.tokenizer = None
    # A deployable file: without the copy's optimizer slots (Adam: two float copies of
    # every weight, which would make the 4-bit file larger than the float one). The
    # compile config (loss, metrics) stays.
    if getattr(quantized, "optimizer", None) is not None:
        quantized.optimizer = None
    return quantized, layer_modes(quantized)


def layer_modes(model) -> dict:
    """Which leaf layers Keras quantized (their dtype policy) and which kept float weights.

    >>> layer_modes(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))  # doctest: +SKIP
    {'quantized': {}, 'float': ['dense']}
    """
    from compress.report import leaf_layers

    quantized, float_layers = {}, []
    for layer in leaf_layers(model):
        if getattr(layer, "quantization_mode", None):
            quantized[layer.name] = layer.dtype_policy.name
        elif layer.weights:
            float_layers.append(layer.name)
    return {"quantized": quantized, "float": float_layers}


@contextlib.contextmanager
def complete_save(model):
    """While saving, write each GPTQ/AWQ Dense/EinsumDense's ``kernel_zero`` too.

    Keras 3.15's ``save_own_variables`` stores ``kernel_zero`` only when its LoRA merge
    returns one, which it never does for gptq/awq, while ``load_own_variables`` expects
    it: without this the file fails to load ("expected 6 variables, but received 5").
    """
    from compress.report import leaf_layers

    patched = []
    for layer in leaf_layers(model):
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
    if isinstance(x, dict):
        raise CompressError(f"mode {mode}: Keras's {mode.upper()} feeds one input tensor; "
                            f"model '{model.name}' has several inputs")
    structure, n = chain_structure(model, x, mode)
    # The "tokens" are chunk indices; they are numbers already, so the tokenizer Keras
    # requires (it only tokenizes strings) is never called.
    config = (GPTQConfig if mode == "gptq" else AWQConfig)(
        dataset=np.arange(n), tokenizer=_no_tokenizer, weight_bits=4, num_samples=n,
        sequence_length=1, group_size=GROUP_SIZE, quantization_layer_structure=structure)
    return config


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
