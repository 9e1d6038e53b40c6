"""Deep Cascade Learning (Marquez, Hare and Niranjan, 2018): the cascade training pass.

Algorithm 2 of the seed review: for each block l = 1..L, connect an output block to it,
train block l (and the output block) for ``epochs + k * l`` epochs with the learning rate
divided by 10 when the validation loss plateaus, freeze it, discard the output block and
forward-propagate the data once through the frozen block: the cached *pseudo-inputs* are
the next stage's training data, so frozen blocks are never run again while training.

Every stage and the fine-tune are fits of ``compress.training.fit_model``, so a training
context's backups (``--checkpoint-dir``: one ``fitN`` folder per stage), last good weights
and strategy apply to each.

Example:

>>> from compress.cascade.cascade_pass import cascade_train             # doctest: +SKIP
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

from compress.cascade.blocks import model_from_specs, output_block, split_blocks
from compress.cascade.costs import EpochTimer, training_memory_bytes
from compress.cascade.options import CASCADE_OPTIONS
from compress.errors import CompressError


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
def cascade_train(model_or_specs, data, *, verbose: int | str = 0, callbacks=None,
                  **options):
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
        verbose: Keras ``verbose`` for each stage's ``fit``, default 0.
        callbacks: list or None, default None. Extra callbacks for every stage's ``fit``
            (their ``model`` is the stage model: block l and its output block).
        **options: see :data:`CASCADE_OPTIONS`: ``epochs`` (2), ``k`` (1),
            ``learning_rate`` (1e-3), ``optimizer`` ("adam"), ``batch_size`` (64),
            ``output_block`` ("auto"), ``plateau_patience`` (1), ``fine_tune_epochs`` (0),
            ``fine_tune_lr`` (learning_rate/10), ``cache`` ("memory" or "disk"),
            ``seed`` (0: initialisation and shuffling).

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
    training.set_seed(opts["seed"])
    dataset = load_data(data, opts["seed"]) if isinstance(data, str) else data
    if not isinstance(dataset, Dataset):
        raise CompressError("cascade: data must be a dataset name or a compress.data.Dataset")
    if isinstance(model_or_specs, keras.Model):
        model = training.copy_model(model_or_specs)
        blocks, head = split_blocks(model)
        dataset = prepare(model, dataset)
    elif isinstance(model_or_specs, (list, tuple)):
        model, blocks, head = model_from_specs(model_or_specs, dataset.sample_shape,
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
            out_layers = head if last else output_block(
                opts["output_block"], tuple(h.shape[1:]), dataset.num_classes, index)
            for layer in out_layers:
                h = layer(h)
            stage_model = keras.Model(inp, h, name=f"cascade_stage{index}")
            stage_model.compile(_optimizer(opts["optimizer"], opts["learning_rate"]),
                                "sparse_categorical_crossentropy", metrics=["accuracy"])
            n_epochs = opts["epochs"] + opts["k"] * index
            timer = EpochTimer()
            plateau = PlateauSchedule(monitor="val_loss", factor=0.1,
                                      patience=opts["plateau_patience"], min_delta=0.0)
            started = time.perf_counter()
            training.fit_model(stage_model, feats["train"], dataset.y_train, epochs=n_epochs,
                               batch_size=opts["batch_size"],
                               validation_data=(feats["val"], dataset.y_val),
                               callbacks=[timer, plateau, *(callbacks or [])],
                               verbose=verbose, shuffle=True,
                               advice=f"cascade stage {index}: lower the learning rate or "
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
            timer = EpochTimer()
            started = time.perf_counter()
            training.fit_model(model, dataset.x_train, dataset.y_train,
                               epochs=opts["fine_tune_epochs"], batch_size=opts["batch_size"],
                               validation_data=(dataset.x_val, dataset.y_val),
                               callbacks=[timer], verbose=verbose, shuffle=True,
                               advice="cascade fine-tune: lower fine_tune_lr or check the data")
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
        verbose: Keras ``verbose`` for the stages, default 0.
        **options: see :data:`CASCADE_OPTIONS` (validated here), ``seed`` included.
    """

    def __init__(self, verbose: int | str = 0, **options):
        self.options = CASCADE_OPTIONS.validate(options)
        self.verbose = verbose
        self.info = None

    def fit(self, model_or_specs, data):
        """Run the cascade; return ``(model, info)`` and keep ``info`` on ``self.info``."""
        model, self.info = cascade_train(model_or_specs, data, verbose=self.verbose,
                                         **self.options)
        return model, self.info

    def get_config(self) -> dict:
        return {"verbose": self.verbose, **self.options}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def stage_epochs(epochs: int, k: int, blocks: int) -> list[int]:
    """Epochs of each stage, ``epochs + k * l`` for l = 1..blocks."""
    return [epochs + k * index for index in range(1, blocks + 1)]
