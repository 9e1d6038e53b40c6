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
import json
import os
import signal
import threading

import keras
import numpy as np

from compress.errors import CompressError, raise_if_interrupted


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
    unsafe = getattr(model, "_compress_unsafe", False)
    scope = contextlib.nullcontext()
    if unsafe:  # loaded with --unsafe: its Lambda layers may be rebuilt for the copy too
        from keras.src.saving.serialization_lib import SafeModeScope

        scope = SafeModeScope(False)
    try:
        with scope:
            clone = keras.models.clone_model(model)
    except ValueError as exc:
        if "TFSMLayer" in str(exc):
            raise CompressError(
                f"model '{model.name}' wraps a SavedModel, which can be inspected and exported "
                "but not edited; load the Keras model (.keras or .h5) it was saved from"
            ) from exc
        raise
    if unsafe:
        clone._compress_unsafe = True
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


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's ``BackupAndRestore`` with every backup written atomically.

    Keras writes ``latest.weights.h5`` in place, so a Ctrl-C that lands while it is being
    written leaves a file with only some layers in it, and the resumed run fails with
    "Layer ... expected 2 variables, but received 0". Here the weights and the epoch
    counter go to temporary files first and are renamed over the backup together, with
    SIGINT held back for the two renames: the folder always holds one whole epoch.

    Example:

    >>> backup = AtomicBackupAndRestore("backup/")  # same arguments as Keras's
    >>> model.fit(x, y, epochs=50, callbacks=[backup])  # run again to resume  # doctest: +SKIP
    """

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        tmp_weights = os.path.join(self.backup_dir, f".partial-{os.getpid()}.weights.h5")
        tmp_meta = os.path.join(self.backup_dir, f".partial-{os.getpid()}.json")
        try:
            self.model.save_weights(filepath=tmp_weights, overwrite=True)
            with open(tmp_meta, "w", encoding="utf-8") as f:
                json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen}, f)
            with _sigint_held():
                os.replace(tmp_weights, self._weights_path)
                os.replace(tmp_meta, self._training_metadata_path)
        finally:
            for leftover in (tmp_weights, tmp_meta):
                if os.path.exists(leftover):
                    os.unlink(leftover)


@contextlib.contextmanager
def _sigint_held():
    """Hold a Ctrl-C (SIGINT) back until the block is done, then act on it as usual.

    Outside the main thread (where Python runs no signal handlers) it is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt


@contextlib.contextmanager
def checkpoints(directory):
    """Make every :func:`fit` in the block resumable from ``directory``.

    Each ``fit`` call gets its own sub-folder (``fit1``, ``fit2``, ... in call order), backed
    up every epoch by :class:`AtomicBackupAndRestore`. Running the same command again with the
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

    A NaN or infinite loss stops the run with a :class:`CompressError`; the model is left
    with its last good weights (those at the end of the last finished epoch, or the
    starting weights), never with NaN. Inside :func:`keep_last_good` they are also saved
    to that file. With ``checkpoint_dir``, Keras's ``BackupAndRestore`` saves the state
    every epoch, so an interrupted run started again with the same arguments resumes where
    it stopped.
    """
    nan_stop = StopOnNaN()
    cbs = list(callbacks or []) + [nan_stop, _StopOnCtrlC()]
    if checkpoint_dir is None and _CHECKPOINTS["root"]:
        _CHECKPOINTS["count"] += 1
        checkpoint_dir = f"{_CHECKPOINTS['root']}/fit{_CHECKPOINTS['count']}"
    if checkpoint_dir:
        cbs.append(AtomicBackupAndRestore(str(checkpoint_dir)))
    history = model.fit(
        dataset.x_train, dataset.y_train, epochs=epochs, batch_size=batch_size,
        validation_data=(dataset.x_val, dataset.y_val) if validation else None,
        callbacks=cbs, verbose=verbose, shuffle=True)
    nan_stop.raise_if_stopped("lower the learning rate or check the data")
    return history


_LAST_GOOD = {"path": None, "force": False}


@contextlib.contextmanager
def keep_last_good(path, force: bool = False):
    """Save the last good weights to ``path`` when a :func:`fit` in the block hits a NaN loss.

    The CLI's ``--keep-last-good FILE`` uses this: the run still stops with an error (exit
    code 1, no output written), and ``FILE`` holds the model being trained as it was at the
    end of its last finished epoch, ready to inspect or to resume from with a lower
    learning rate.

    Example:

    ```python
    with keep_last_good("last_good.keras"):
        prune_model(model, data=ds, sparsity=0.9, fine_tune_epochs=4)
    ```
    """
    previous = dict(_LAST_GOOD)
    _LAST_GOOD.update(path=None if path is None else str(path), force=force)
    try:
        yield
    finally:
        _LAST_GOOD.update(previous)


class _StopOnCtrlC(keras.callbacks.Callback):
    """Raise a Ctrl-C again at the next batch if a finaliser swallowed it (see errors)."""

    def on_train_batch_end(self, batch, logs=None):
        raise_if_interrupted()

    on_test_batch_end = on_train_batch_end


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first NaN/inf batch loss and puts the last good weights back.

    The weights are copied at the start of training and at the end of every epoch that
    finished with a finite loss; after a NaN they are restored into ``target`` (default:
    the model being fit). :func:`fit` turns the stop into a :class:`CompressError`.

    Args:
        target: keras.Model or None, default None. The model whose weights are kept, when
            it is not the one being fit (a distiller's student).
    """

    def __init__(self, target=None):
        super().__init__()
        self.target = target
        self.stopped = False
        self.last_good_epoch = None
        self._weights = None

    def _kept(self):
        return self.target if self.target is not None else self.model

    def on_train_begin(self, logs=None):
        self.stopped = False
        self.last_good_epoch = 0
        self._weights = self._kept().get_weights()

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.stopped = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.stopped:
            return
        weights = self._kept().get_weights()
        if all(np.isfinite(w).all() for w in weights if np.issubdtype(w.dtype, np.floating)):
            self._weights = weights
            self.last_good_epoch = epoch + 1

    def on_train_end(self, logs=None):
        if self.stopped and self._weights is not None:
            self._kept().set_weights(self._weights)

    def raise_if_stopped(self, advice: str) -> None:
        """Raise the one-line error for a NaN stop (saving the last good weights if asked)."""
        if not self.stopped:
            return
        kept = ("the starting weights" if not self.last_good_epoch
                else f"the weights after epoch {self.last_good_epoch}")
        message = f"training stopped: the loss became NaN or infinite ({advice})"
        if _LAST_GOOD["path"]:
            from compress import io

            saved = io.save_model(self._kept(), _LAST_GOOD["path"], force=_LAST_GOOD["force"])
            message += f"; {kept} were saved to {saved}"
        else:
            message += f"; the model keeps {kept}"
        raise CompressError(message)


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
