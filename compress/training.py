"""Training helpers shared by the passes: seeding, copying, compiling, fitting, scoring.

Example:

>>> from compress import training
>>> from compress.data import load_data, prepare
>>> from compress.models import build
>>> training.set_seed(0)
>>> model = build("lenet300", input_shape=(8, 8, 1))
>>> ds = prepare(model, load_data("digits"))
>>> training.compile_classifier(model, learning_rate=1e-3)
>>> _ = training.fit(model, ds, epochs=1, verbose=0)
>>> 0.0 <= training.accuracy(model, ds.x_test, ds.y_test) <= 1.0
True
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np

from compress.errors import CompressError


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow's ops deterministic."""
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # noqa: BLE001, S110 - already enabled, or not on this build
        pass


def copy_model(model):
    """A new model with the same architecture and weights: passes never mutate their input."""
    from compress.layers import register_layers

    register_layers()
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def outputs_probabilities(model) -> bool:
    """True when the model's last layer ends in a softmax (outputs probabilities)."""
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return True
    act = getattr(last, "activation", None)
    return act is not None and getattr(act, "__name__", "") == "softmax"


def compile_classifier(model, learning_rate: float = 1e-3, optimizer: str = "adam",
                       momentum: float = 0.9) -> None:
    """Compile ``model`` for integer-label classification (logits or probabilities)."""
    if optimizer == "adam":
        opt = keras.optimizers.Adam(learning_rate)
    elif optimizer == "sgd":
        opt = keras.optimizers.SGD(learning_rate, momentum=momentum)
    elif optimizer == "rmsprop":
        opt = keras.optimizers.RMSprop(learning_rate)
    else:
        raise CompressError(f"optimizer '{optimizer}': must be adam, sgd or rmsprop")
    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=not outputs_probabilities(model))
    model.compile(optimizer=opt, loss=loss, metrics=["accuracy"])


_CHECKPOINTS = {"root": None, "count": 0}


@contextlib.contextmanager
def checkpoints(directory):
    """Make every :func:`fit` in the block resumable from ``directory``.

    Each ``fit`` call gets its own sub-folder (``fit1``, ``fit2``, ... in call order), backed
    up by Keras's ``BackupAndRestore`` every epoch. Running the same command again with the
    same folder after an interruption replays the finished fits (same seed, same result) and
    resumes the interrupted one at its last finished epoch. The CLI's ``--checkpoint-dir``
    uses this.
    """
    previous = dict(_CHECKPOINTS)
    _CHECKPOINTS.update(root=None if directory is None else str(directory), count=0)
    try:
        yield
    finally:
        _CHECKPOINTS.update(previous)


_STRATEGIES: dict = {}


@contextlib.contextmanager
def distributed(strategy: str | None):
    """Run a block under a ``tf.distribute`` strategy: ``None``/``"none"`` or ``"mirrored"``.

    Models loaded or copied inside the block get mirrored variables, so every ``fit`` in it
    (fine-tuning, distillation, QAT, cascade stages) runs data-parallel over the local
    devices. For several machines use ``tf.distribute.MultiWorkerMirroredStrategy`` the same
    way (``with strategy.scope(): ...``) with ``TF_CONFIG`` set on each worker.
    """
    if strategy in (None, "none"):
        yield None
        return
    import tensorflow as tf

    if strategy != "mirrored":
        raise CompressError(f"strategy '{strategy}': must be none or mirrored")
    # One strategy per process: a second MirroredStrategy would reuse collective instance
    # keys and fail with "Shape mismatch in the collective instance" on its first fit.
    if _STRATEGIES.get(strategy) is None:
        _STRATEGIES[strategy] = tf.distribute.MirroredStrategy()
    chosen = _STRATEGIES[strategy]
    with chosen.scope():
        yield chosen


def fit(model, dataset, epochs: int = 1, batch_size: int = 64, callbacks=None,
        verbose: int | str = "auto", validation: bool = True,
        checkpoint_dir: str | None = None):
    """``model.fit`` on the dataset's train split, validating on its val split.

    A NaN or infinite loss stops the run with a :class:`CompressError`. With
    ``checkpoint_dir``, Keras's ``BackupAndRestore`` saves the state every epoch, so an
    interrupted run started again with the same arguments resumes where it stopped.
    """
    nan_stop = StopOnNaN()
    cbs = list(callbacks or []) + [nan_stop]
    if checkpoint_dir is None and _CHECKPOINTS["root"]:
        _CHECKPOINTS["count"] += 1
        checkpoint_dir = f"{_CHECKPOINTS['root']}/fit{_CHECKPOINTS['count']}"
    if checkpoint_dir:
        cbs.append(keras.callbacks.BackupAndRestore(str(checkpoint_dir)))
    history = model.fit(
        dataset.x_train, dataset.y_train, epochs=epochs, batch_size=batch_size,
        validation_data=(dataset.x_val, dataset.y_val) if validation else None,
        callbacks=cbs, verbose=verbose, shuffle=True)
    if nan_stop.stopped:
        raise CompressError("training stopped: the loss became NaN or infinite "
                            "(lower the learning rate or check the data)")
    return history


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first NaN/inf batch loss; :func:`fit` turns it into an error."""

    def on_train_begin(self, logs=None):
        self.stopped = False

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.stopped = True
            self.model.stop_training = True


def predict(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Model outputs for ``x`` in batches, as a NumPy array, without Keras's progress bar."""
    outs = []
    for start in range(0, len(x), batch_size):
        outs.append(np.asarray(model(x[start:start + batch_size], training=False)))
    return np.concatenate(outs) if outs else np.zeros((0,))


def accuracy(model, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    if len(x) == 0:
        raise CompressError("cannot measure accuracy on empty data")
    return float(np.mean(np.argmax(predict(model, x, batch_size), axis=-1) == y))
