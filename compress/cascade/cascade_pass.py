"""Deep Cascade Learning (Marquez, Hare and Niranjan, 2018): the cascade training pass.

Algorithm 2 of the seed review: for each block l = 1..L, connect an output block to it,
train block l (and the output block) for ``epochs + k * l`` epochs with the learning rate
divided by 10 when the validation loss plateaus, freeze it, discard the output block and
forward-propagate the data once through the frozen block: the cached *pseudo-inputs* are
the next stage's training data, so frozen blocks are never run again while training.
Streamed data (a ``tf.data`` pipeline, an image folder, or ``cache="stream"``) is instead
mapped batch by batch through the frozen blocks, so no split is ever held in memory.

Each stage trains on the model's own task (:mod:`compress.task`); without labels, on the
fidelity to the input model (its outputs are the targets).

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
    from compress.data.arrays import is_text

    block = keras.Sequential([keras.Input(x.shape[1:], dtype="string" if is_text(x) else None)]
                             + list(layers))
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


# -- the stage data -----------------------------------------------------------------------
class _StageData:
    """The training, validation and test data of the current stage: pseudo-inputs (the
    inputs through the frozen blocks) and targets (labels, or the original model's outputs
    without labels).

    Arrays in memory are cached once per stage (``cache`` ``memory`` or ``disk``); a
    stream (or ``cache`` ``stream``) is mapped batch by batch through the frozen blocks and
    never held.
    """

    def __init__(self, dataset, task, teacher, batch_size: int, cache: str, dtype=None):
        self.dataset, self.task, self.teacher = dataset, task, teacher
        self.batch_size = batch_size
        self.labelled = dataset.labelled
        self.streamed = getattr(dataset, "streaming", False) or cache == "stream"
        self.cache_dir = tempfile.TemporaryDirectory(prefix="cascade-") \
            if cache == "disk" and not self.streamed else None
        self.frozen: list = []  # the frozen layers, in order
        self.dtype = dtype  # the model's input dtype (strings for a text model)
        self._fidelity = None if self.labelled else task.fidelity_loss()
        if not self.streamed:
            self.feats = {k: dataset.split(k)[0] for k in ("train", "val", "test")}
            self.targets = {k: self._targets(k) for k in self.feats}

    def _targets(self, split):
        if self.labelled:
            return self.dataset.split(split)[1]
        from compress.training import predict

        return np.asarray(self._fidelity[1](predict(self.teacher, self.dataset.split(split)
                                                    [0])))

    @property
    def input_shape(self) -> tuple:
        if not self.streamed:
            return tuple(self.feats["train"].shape[1:])
        shape = tuple(self.dataset.sample_shape)
        if self.frozen:
            block = keras.Sequential([keras.Input(shape, dtype=self.dtype)] + self.frozen)
            shape = tuple(block.outputs[0].shape[1:])
        return shape

    def freeze(self, block: list) -> None:
        """``block`` is trained: the next stages read its outputs."""
        for layer in block:
            layer.trainable = False  # freeze layer l
        if self.streamed:
            self.frozen = self.frozen + list(block)
            return
        where = self.cache_dir.name if self.cache_dir else None
        self.feats = {k: _forward(block, v, 512, where) for k, v in self.feats.items()}

    def stream(self, split: str, shuffle: bool = False):
        """A ``tf.data.Dataset`` of ``(pseudo-inputs, targets)`` batches of a split."""
        import tensorflow as tf

        base = self.dataset.batches(split, self.batch_size, shuffle=shuffle)
        prefix = keras.Sequential([keras.Input(self.dataset.sample_shape, dtype=self.dtype)]
                                  + self.frozen) \
            if self.frozen else None
        teacher, labelled = self.teacher, self.labelled
        fidelity = self._fidelity

        def pseudo(x):
            return prefix(x, training=False) if prefix is not None else x

        if labelled:
            def to_stage(*e):
                return pseudo(e[0]), e[1]
        else:
            def to_stage(x):
                return pseudo(x), fidelity[1](teacher(x, training=False))
        return base.map(to_stage).prefetch(tf.data.AUTOTUNE)

    def fit_args(self) -> dict:
        if self.streamed:
            return {"x": self.stream("train", shuffle=True), "y": None, "batch_size": None,
                    "validation_data": self.stream("val"), "shuffle": False}
        return {"x": self.feats["train"], "y": self.targets["train"],
                "batch_size": self.batch_size,
                "validation_data": (self.feats["val"], self.targets["val"]), "shuffle": True}

    def batches(self, split: str):
        """``(pseudo-inputs, targets)`` NumPy batches of a split."""
        if self.streamed:
            yield from self.stream(split).as_numpy_iterator()
            return
        x, y = self.feats[split], self.targets[split]
        for start in range(0, len(x), 512):
            yield x[start:start + 512], y[start:start + 512]

    def scores(self, model, split: str) -> dict:
        """``model``'s scores on a split: the task's (accuracy; MSE and MAE for a
        regression) with labels, the fidelity to the original without."""
        from compress.training import predict

        if self.labelled:
            return self.task.score_batches((predict(model, x), y)
                                           for x, y in self.batches(split))
        if self.task.is_classifier:  # agreement with the original's top-1 class
            scores = self.task.score_batches((predict(model, x), np.argmax(y, -1))
                                             for x, y in self.batches(split))
            return {"top1_agreement": scores["accuracy"]}
        scores = self.task.score_batches((predict(model, x), y)
                                         for x, y in self.batches(split))
        return {"mse_to_original": scores["mse"]} if "mse" in scores else scores

    def compile(self, model, optimizer) -> None:
        from compress.task import _fresh

        if self.labelled:
            model.compile(optimizer, _fresh(self.task.loss), metrics=list(self.task.metrics))
        else:
            model.compile(optimizer, _fresh(self._fidelity[0]))

    def cleanup(self) -> None:
        if self.cache_dir is not None:
            self.cache_dir.cleanup()


def _prefixed(prefix: str, scores: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in scores.items() if k != "metrics"}


# -- the driver --------------------------------------------------------------------------
def cascade_train(model_or_specs, data, *, verbose: int | str = 0, callbacks=None,
                  **options):
    """Train a model layer-wise by Deep Cascade Learning (Algorithm 2); a pass.

    Each stage trains on the model's own task (:mod:`compress.task`: its loss and
    metrics, ``loss``/``metrics`` to override; a regression on mean squared error, and
    its temporary output blocks linear). Without labels each stage learns to reproduce
    the input model's outputs (KL divergence for a classifier, mean squared error
    otherwise), and the scores are its fidelity to it. Streamed data (a ``tf.data``
    pipeline, an image folder) is read batch by batch, each batch through the frozen
    blocks (nothing is cached); arrays in memory cache the pseudo-inputs (``cache``).

    Example:

    >>> model, info = cascade_train(build("cnn4"), "animals", epochs=2, k=1)   # doctest: +SKIP
    >>> info["stages"][0]["epochs"], info["total_epochs"]                        # doctest: +SKIP
    (3, 18)

    Args:
        model_or_specs: a ``keras.Sequential`` or functional chain (not modified; a copy is
            trained), or a list of layer specs: each item a ``keras.layers.Layer``, its
            config dict, or a list of those forming one block (a default head is added).
        data: any data :func:`compress.data.as_dataset` takes (a dataset name, a
            ``compress.data.Dataset``, a ``tf.data.Dataset``, arrays, an image folder).
        verbose: Keras ``verbose`` for each stage's ``fit``, default 0.
        callbacks: list or None, default None. Extra callbacks for every stage's ``fit``
            (their ``model`` is the stage model: block l and its output block).
        **options: see :data:`CASCADE_OPTIONS`: ``epochs`` (2), ``k`` (1),
            ``learning_rate`` (1e-3), ``optimizer`` ("adam"), ``batch_size`` (64),
            ``output_block`` ("auto"), ``plateau_patience`` (1), ``fine_tune_epochs`` (0),
            ``fine_tune_lr`` (learning_rate/10), ``cache`` ("memory", "disk" or
            "stream"), ``seed`` (0: initialisation and shuffling), ``loss``, ``metrics``.

    Returns:
        ``(model, info)``: the trained plain Keras model (same layers as the input, all
        trainable again) and a JSON-ready dict with ``task``, ``stages`` (per stage:
        layers, epochs, ``val_*``/``test_*`` scores: ``accuracy`` for a classifier,
        ``mse``/``mae`` for a regression, ``top1_agreement``/``mse_to_original`` without
        labels; seconds, seconds per epoch, estimated training memory, trainable
        parameters, learning-rate reductions) and the final ``test_*`` scores.

    Raises:
        CompressError: bad options or data, a model that is not a chain, a NaN stage;
            unlabelled data with layer specs (no trained model to learn from); a model
            Keras already quantized; a ``Pruning`` callback among ``callbacks``.
    """
    from compress import training
    from compress.callbacks.plateau import PlateauSchedule
    from compress.data import as_dataset
    from compress.task import output_activation, resolve, sample_targets

    opts = CASCADE_OPTIONS.validate(options)
    from compress.callbacks.pruning import Pruning

    if any(isinstance(cb, Pruning) for cb in callbacks or []):
        # One instance would follow every stage's fit: its schedule ends in the first,
        # and the later stages' layers got masks of ones (0.8 asked, stage 2 at 0.0).
        raise CompressError("cascade: a Pruning callback cannot follow the stages (each is "
                            "a fit of its own layers); prune the cascade's result instead "
                            "(compress.prune, or a Pruning callback in a fit of the model)")
    training.set_seed(opts["seed"])
    dataset = as_dataset(data, seed=opts["seed"]) if not hasattr(data, "labelled") else data
    teacher = None
    if isinstance(model_or_specs, keras.Model):
        from compress.runtime import refuse_keras_quantized

        refuse_keras_quantized(model_or_specs)  # its int8 kernels cannot train
        teacher = model_or_specs
        model = training.copy_model(model_or_specs)
        blocks, head = split_blocks(model)
    elif isinstance(model_or_specs, (list, tuple)):
        if not dataset.labelled:
            raise CompressError("cascade: the data has no labels and layer specs give no "
                                "trained model to learn from; give labelled data, or a "
                                "trained model (label-free cascade reproduces its outputs)")
        model, blocks, head = model_from_specs(model_or_specs, dataset.sample_shape,
                                               dataset.num_classes, opts["output_block"])
    else:
        raise CompressError("cascade: pass a Keras model or a list of layer specs")
    dataset = as_dataset(dataset, model)
    task = resolve(model, opts["loss"], opts["metrics"], y=sample_targets(dataset))
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise CompressError(f"cascade: model '{model.name}' output shape "
                            f"{tuple(model.outputs[0].shape)}: temporary output blocks give "
                            "one vector per sample (batch, units)")
    activation = "softmax" if task.kind == "classification" and not task.from_logits \
        else output_activation(model)
    was_trainable = {id(la): la.trainable for la in model.layers}
    stage_data = _StageData(dataset, task, teacher, opts["batch_size"], opts["cache"],
                            dtype=model.inputs[0].dtype)
    stages = []
    try:
        for index, block in enumerate(blocks, start=1):
            last = index == len(blocks)
            shape = stage_data.input_shape
            # the first stage takes the model's inputs (strings for a text model), the
            # next ones the frozen blocks' outputs, or pseudo-inputs cached as float32
            inp = keras.Input(shape, dtype=None if stage_data.frozen or (
                index > 1 and not stage_data.streamed) else model.inputs[0].dtype)
            h = inp
            for layer in block:
                h = layer(h)
            out_layers = head if last else output_block(
                opts["output_block"], tuple(h.shape[1:]), task.units, index, activation)
            for layer in out_layers:
                h = layer(h)
            stage_model = keras.Model(inp, h, name=f"cascade_stage{index}")
            stage_data.compile(stage_model, _optimizer(opts["optimizer"],
                                                       opts["learning_rate"]))
            n_epochs = opts["epochs"] + opts["k"] * index
            timer = EpochTimer()
            plateau = PlateauSchedule(monitor="val_loss", factor=0.1,
                                      patience=opts["plateau_patience"], min_delta=0.0)
            started = time.perf_counter()
            args = stage_data.fit_args()
            training.fit_model(stage_model, args["x"], args["y"], epochs=n_epochs,
                               batch_size=args["batch_size"],
                               validation_data=args["validation_data"],
                               callbacks=[timer, plateau, *(callbacks or [])],
                               verbose=verbose, shuffle=args["shuffle"],
                               advice=f"cascade stage {index}: lower the learning rate or "
                                      "check the data")
            seconds = time.perf_counter() - started
            stages.append({
                "stage": index, "layers": [la.name for la in block],
                "output_block": [la.name for la in out_layers], "epochs": n_epochs,
                **_prefixed("val", stage_data.scores(stage_model, "val")),
                **_prefixed("test", stage_data.scores(stage_model, "test")),
                "seconds": seconds, "seconds_per_epoch": timer.per_epoch(),
                "train_memory_bytes": training_memory_bytes(stage_model, opts["batch_size"]),
                "trainable_params": int(sum(np.prod(w.shape)
                                            for w in stage_model.trainable_weights)),
                "lr_reductions": [e for e, _ in plateau.reductions],
                "input_shape": list(shape),
            })
            if not last:
                stage_data.freeze(block)
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
            end_to_end = _StageData(dataset, task, teacher, opts["batch_size"],
                                    "stream" if stage_data.streamed else "memory")
            end_to_end.compile(model, _optimizer(opts["optimizer"], lr))
            timer = EpochTimer()
            started = time.perf_counter()
            args = end_to_end.fit_args()
            training.fit_model(model, args["x"], args["y"], epochs=opts["fine_tune_epochs"],
                               batch_size=args["batch_size"],
                               validation_data=args["validation_data"],
                               callbacks=[timer], verbose=verbose, shuffle=args["shuffle"],
                               advice="cascade fine-tune: lower fine_tune_lr or check the data")
            for layer in model.layers:
                layer.trainable = was_trainable.get(id(layer), True)
            fine_tune = {"epochs": opts["fine_tune_epochs"], "learning_rate": lr,
                         "seconds": time.perf_counter() - started,
                         "seconds_per_epoch": timer.per_epoch(),
                         "train_memory_bytes": training_memory_bytes(model,
                                                                     opts["batch_size"])}
        final = _StageData(dataset, task, teacher, opts["batch_size"], "stream")
        test_scores = _prefixed("test", final.scores(model, "test"))
    finally:
        stage_data.cleanup()
    info = {
        "method": "cascade", "options": opts, "task": task.describe()
        + ("" if dataset.labelled else "; no labels: each stage reproduces the input "
           "model's outputs"), "blocks": len(blocks), "stages": stages,
        "fine_tune": fine_tune,
        "total_epochs": sum(s["epochs"] for s in stages) + opts["fine_tune_epochs"],
        "seconds": sum(s["seconds"] for s in stages) + (fine_tune or {}).get("seconds", 0.0),
        **test_scores,
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
