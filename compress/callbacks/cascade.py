"""Deep Cascade Learning (Marquez, Hare and Niranjan, 2018): train a network block by block.

Algorithm 2 of the seed review: for each block l = 1..L, connect an output block to it,
train block l (and the output block) for ``epochs + k * l`` epochs with the learning rate
divided by 10 when the validation loss plateaus, freeze it, discard the output block and
forward-propagate the data once through the frozen block: the cached *pseudo-inputs* are
the next stage's training data, so frozen blocks are never run again while training.

This module also holds the option schemas the recipe runner uses to build the training
callbacks from YAML (:data:`CALLBACK_OPTIONS`, :func:`build_callbacks`).

Example:

>>> from compress.callbacks.cascade import cascade_train                # doctest: +SKIP
>>> from compress.models import build                                   # doctest: +SKIP
>>> model, info = cascade_train(build("cnn4"), "animals", epochs=2, k=1)  # doctest: +SKIP
>>> [s["val_accuracy"] for s in info["stages"]]                          # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
import time

import keras
import numpy as np

from compress.callbacks.options import CALLBACK_OPTIONS, CASCADE_OPTIONS
from compress.errors import CompressError


def build_callbacks(mapping: dict | None, path: str = "callbacks") -> list:
    """Build callbacks from a recipe mapping such as ``{"cosine": {"warmup_epochs": 1}}``.

    Keys are ``early_stopping``, ``cosine`` and ``plateau`` (in that order in the result
    list, whatever the mapping's order); values are option mappings checked with
    :data:`CALLBACK_OPTIONS` (a null value means all defaults).

    Args:
        mapping: dict or None. Callback name to options.
        path: str, default ``"callbacks"``. Prefix for error messages.

    Returns:
        A list of Keras callbacks.
    """
    from compress.callbacks.cosine import CosineSchedule
    from compress.callbacks.early_stopping import EarlyStopping
    from compress.callbacks.plateau import PlateauSchedule

    mapping = mapping or {}
    if not isinstance(mapping, dict):
        raise CompressError(f"{path}: must be a mapping of callback names to options")
    unknown = [k for k in mapping if k not in CALLBACK_OPTIONS]
    if unknown:
        raise CompressError(f"{path}.{unknown[0]}: unknown callback "
                            f"(known: {', '.join(CALLBACK_OPTIONS)})")
    classes = {"early_stopping": EarlyStopping, "cosine": CosineSchedule,
               "plateau": PlateauSchedule}
    out = []
    for name, schema in CALLBACK_OPTIONS.items():
        if name in mapping:
            opts = schema.validate(mapping[name] or {}, path=f"{path}.{name}")
            out.append(classes[name](**opts))
    return out


# -- splitting a model into blocks ---------------------------------------------------------
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
        x = np.random.default_rng(0).random((2,) + tuple(model.inputs[0].shape[1:]),
                                            dtype=np.float32)
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


def _output_block(kind: str, features_shape: tuple, num_classes: int, stage: int) -> list:
    layers = []
    if len(features_shape) > 1:
        if kind == "flatten" or (kind == "auto" and len(features_shape) not in (2, 3)):
            layers.append(keras.layers.Flatten(name=f"cascade_out{stage}_flatten"))
        elif len(features_shape) == 3:
            layers.append(keras.layers.GlobalAveragePooling2D(name=f"cascade_out{stage}_gap"))
        else:
            layers.append(keras.layers.GlobalAveragePooling1D(name=f"cascade_out{stage}_gap"))
    layers.append(keras.layers.Dense(num_classes, activation="softmax",
                                     name=f"cascade_out{stage}_softmax"))
    return layers


def _from_specs(specs, input_shape, num_classes, output_block) -> tuple:
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
    head = _output_block(output_block, tuple(h.shape[1:]), num_classes, 0)
    model = keras.Sequential([keras.Input(input_shape)] + [la for b in blocks for la in b]
                             + head, name="cascade")
    return model, blocks, head


# -- memory and time ---------------------------------------------------------------------
def training_memory_bytes(model, batch_size: int, optimizer_slots: int = 2) -> int:
    """Estimated peak memory of one training step of ``model`` (float32).

    Activations kept for the backward pass (every layer's output, for one batch, plus the
    input batch), trainable weights with their gradients and ``optimizer_slots`` moment
    buffers each (2 for Adam), and non-trainable weights.
    """
    acts = int(np.prod(model.inputs[0].shape[1:]))
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        out = layer.output
        acts += int(np.prod(out.shape[1:]))
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return 4 * (batch_size * acts + trainable * (2 + optimizer_slots) + frozen)


class _EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._t)

    def per_epoch(self) -> float:
        # the first epoch includes graph tracing; leave it out when there are others
        s = self.seconds[1:] if len(self.seconds) > 1 else self.seconds
        return float(np.mean(s)) if s else 0.0


def _optimizer(name: str, lr: float):
    return {"adam": keras.optimizers.Adam, "sgd": lambda r: keras.optimizers.SGD(r, 0.9),
            "rmsprop": keras.optimizers.RMSprop}[name](lr)


def _forward(layers, x: np.ndarray, batch_size: int, cache_dir) -> np.ndarray:
    """Pseudo-inputs: ``x`` through the frozen ``layers`` once (inference mode)."""
    block = keras.Sequential([keras.Input(x.shape[1:])] + list(layers))
    out = None
    for start in range(0, len(x), 512):
        y = np.asarray(block(x[start:start + 512], training=False))
        if out is None:
            shape = (len(x),) + y.shape[1:]
            if cache_dir is None:
                out = np.empty(shape, dtype=np.float32)
            else:
                fd, name = tempfile.mkstemp(dir=cache_dir, suffix=".npy")
                os.close(fd)
                out = np.lib.format.open_memmap(name, mode="w+", dtype=np.float32,
                                                shape=shape)
        out[start:start + len(y)] = y
    return out


# -- the driver --------------------------------------------------------------------------
def cascade_train(model_or_specs, data, *, seed: int = 0, verbose: int | str = 0,
                  callbacks=None, **options):
    """Train a model layer-wise by Deep Cascade Learning (Algorithm 2); a pass.

    Example:

    >>> model, info = cascade_train(build("cnn4"), "animals", epochs=2, k=1)   # doctest: +SKIP
    >>> info["stages"][0]["epochs"], info["total_epochs"]                        # doctest: +SKIP
    (3, 18)

    Args:
        model_or_specs: a ``keras.Sequential`` or functional chain (not modified; a copy is
            trained), or a list of layer specs: each item a ``keras.layers.Layer``, its
            config dict, or a list of those forming one block (a default head is added).
        data: a ``compress.data.Dataset`` or a dataset name (``animals``, ``digits``, ...).
        seed: int, default 0. Seeds initialisation and shuffling.
        verbose: Keras ``verbose`` for each stage's ``fit``, default 0.
        callbacks: list or None, default None. Extra callbacks for every stage's ``fit``
            (their ``model`` is the stage model: block l and its output block).
        **options: see :data:`CASCADE_OPTIONS`: ``epochs`` (2), ``k`` (1),
            ``learning_rate`` (1e-3), ``optimizer`` ("adam"), ``batch_size`` (64),
            ``output_block`` ("auto"), ``plateau_patience`` (1), ``fine_tune_epochs`` (0),
            ``fine_tune_lr`` (learning_rate/10), ``cache`` ("memory" or "disk").

    Returns:
        ``(model, info)``: the trained plain Keras model (same layers as the input, all
        trainable again) and a JSON-ready dict with ``stages`` (per stage: layers,
        epochs, val/test accuracy, seconds, seconds per epoch, estimated training memory,
        trainable parameters, learning-rate reductions) and the final test accuracy.
    """
    from compress import training
    from compress.callbacks.plateau import PlateauSchedule
    from compress.data import Dataset, load_data, prepare

    opts = CASCADE_OPTIONS.validate(options)
    training.set_seed(seed)
    dataset = load_data(data, seed) if isinstance(data, str) else data
    if not isinstance(dataset, Dataset):
        raise CompressError("cascade: data must be a dataset name or a compress.data.Dataset")
    if isinstance(model_or_specs, keras.Model):
        model = training.copy_model(model_or_specs)
        blocks, head = split_blocks(model)
        dataset = prepare(model, dataset)
    elif isinstance(model_or_specs, (list, tuple)):
        model, blocks, head = _from_specs(model_or_specs, dataset.sample_shape,
                                          dataset.num_classes, opts["output_block"])
        dataset = prepare(model, dataset)
    else:
        raise CompressError("cascade: pass a Keras model or a list of layer specs")
    was_trainable = {id(la): la.trainable for la in model.layers}
    cache_dir = tempfile.TemporaryDirectory(prefix="cascade-") if opts["cache"] == "disk" \
        else None
    feats = {"train": dataset.x_train, "val": dataset.x_val, "test": dataset.x_test}
    stages = []
    try:
        for index, block in enumerate(blocks, start=1):
            last = index == len(blocks)
            inp = keras.Input(feats["train"].shape[1:])
            h = inp
            for layer in block:
                h = layer(h)
            out_layers = head if last else _output_block(
                opts["output_block"], tuple(h.shape[1:]), dataset.num_classes, index)
            for layer in out_layers:
                h = layer(h)
            stage_model = keras.Model(inp, h, name=f"cascade_stage{index}")
            stage_model.compile(_optimizer(opts["optimizer"], opts["learning_rate"]),
                                "sparse_categorical_crossentropy", metrics=["accuracy"])
            n_epochs = opts["epochs"] + opts["k"] * index
            timer = _EpochTimer()
            plateau = PlateauSchedule(monitor="val_loss", factor=0.1,
                                      patience=opts["plateau_patience"], min_delta=0.0)
            started = time.perf_counter()
            nan_stop = training.StopOnNaN()
            stage_model.fit(feats["train"], dataset.y_train, epochs=n_epochs,
                            batch_size=opts["batch_size"],
                            validation_data=(feats["val"], dataset.y_val),
                            callbacks=[timer, plateau, nan_stop, *(callbacks or [])],
                            verbose=verbose,
                            shuffle=True)
            nan_stop.raise_if_stopped(f"cascade stage {index}: lower the learning rate or "
                                      "check the data")
            seconds = time.perf_counter() - started
            stages.append({
                "stage": index, "layers": [la.name for la in block],
                "output_block": [la.name for la in out_layers], "epochs": n_epochs,
                "val_accuracy": training.accuracy(stage_model, feats["val"], dataset.y_val),
                "test_accuracy": training.accuracy(stage_model, feats["test"],
                                                   dataset.y_test),
                "seconds": seconds, "seconds_per_epoch": timer.per_epoch(),
                "train_memory_bytes": training_memory_bytes(stage_model, opts["batch_size"]),
                "trainable_params": int(sum(np.prod(w.shape)
                                            for w in stage_model.trainable_weights)),
                "lr_reductions": [e for e, _ in plateau.reductions],
                "input_shape": list(feats["train"].shape[1:]),
            })
            if not last:
                for layer in block:
                    layer.trainable = False  # freeze layer l
                where = cache_dir.name if cache_dir else None
                feats = {k: _forward(block, v, 512, where) for k, v in feats.items()}
        for layer in model.layers:
            layer.trainable = was_trainable.get(id(layer), True)
        fine_tune = None
        if opts["fine_tune_epochs"]:
            lr = opts["fine_tune_lr"] or opts["learning_rate"] / 10
            # BatchNorm stays in inference mode (as in Keras's fine-tuning guide): each
            # layer was trained on its stage's statistics, and switching every BN to batch
            # statistics at once undoes the cascade (measured: 95% -> 34% on animals).
            for layer in model.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False
            model.compile(_optimizer(opts["optimizer"], lr), "sparse_categorical_crossentropy",
                          metrics=["accuracy"])
            timer = _EpochTimer()
            started = time.perf_counter()
            nan_stop = training.StopOnNaN()
            model.fit(dataset.x_train, dataset.y_train, epochs=opts["fine_tune_epochs"],
                      batch_size=opts["batch_size"],
                      validation_data=(dataset.x_val, dataset.y_val),
                      callbacks=[timer, nan_stop], verbose=verbose)
            nan_stop.raise_if_stopped("cascade fine-tune: lower fine_tune_lr or check the data")
            for layer in model.layers:
                layer.trainable = was_trainable.get(id(layer), True)
            fine_tune = {"epochs": opts["fine_tune_epochs"], "learning_rate": lr,
                         "seconds": time.perf_counter() - started,
                         "seconds_per_epoch": timer.per_epoch(),
                         "train_memory_bytes": training_memory_bytes(model,
                                                                     opts["batch_size"])}
    finally:
        if cache_dir is not None:
            cache_dir.cleanup()
    info = {
        "method": "cascade", "options": opts, "blocks": len(blocks), "stages": stages,
        "fine_tune": fine_tune,
        "total_epochs": sum(s["epochs"] for s in stages) + opts["fine_tune_epochs"],
        "seconds": sum(s["seconds"] for s in stages) + (fine_tune or {}).get("seconds", 0.0),
        "test_accuracy": training.accuracy(model, dataset.x_test, dataset.y_test),
        "end_to_end_train_memory_bytes": training_memory_bytes(model, opts["batch_size"]),
    }
    return model, info


class CascadeTraining:
    """Deep Cascade Learning as an object: options now, ``fit(model, data)`` later.

    A thin holder of :data:`CASCADE_OPTIONS` around :func:`cascade_train`, for code that
    configures training in one place and runs it in another (and for ``get_config``).

    Example:

    >>> cascade = CascadeTraining(epochs=2, k=1, fine_tune_epochs=1)   # doctest: +SKIP
    >>> model, info = cascade.fit(build("cnn4"), "animals")            # doctest: +SKIP

    Args:
        seed: int, default 0. Seed for :func:`cascade_train`.
        verbose: Keras ``verbose`` for the stages, default 0.
        **options: see :data:`CASCADE_OPTIONS` (validated here).
    """

    def __init__(self, seed: int = 0, verbose: int | str = 0, **options):
        self.options = CASCADE_OPTIONS.validate(options)
        self.seed = seed
        self.verbose = verbose
        self.info = None

    def fit(self, model_or_specs, data):
        """Run the cascade; return ``(model, info)`` and keep ``info`` on ``self.info``."""
        model, self.info = cascade_train(model_or_specs, data, seed=self.seed,
                                         verbose=self.verbose, **self.options)
        return model, self.info

    def get_config(self) -> dict:
        return {"seed": self.seed, "verbose": self.verbose, **self.options}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def stage_epochs(epochs: int, k: int, blocks: int) -> list[int]:
    """Epochs of each stage, ``epochs + k * l`` for l = 1..blocks."""
    return [epochs + k * index for index in range(1, blocks + 1)]


__all__ = [
    "CALLBACK_OPTIONS",
    "CASCADE_OPTIONS",
    "CascadeTraining",
    "build_callbacks",
    "cascade_train",
    "chain_layers",
    "split_blocks",
    "stage_epochs",
    "training_memory_bytes",
]
