"""The training context: what every fit the toolkit runs obeys (backups, last good, devices).

A :class:`TrainingContext` entered with ``with`` applies to every fit inside the block:
each one goes through :func:`compress.training.fit_model` (fine-tuning, distillation and
its baseline, QAT, every cascade stage and fine-tune), which reads the active context.
The CLI's ``--checkpoint-dir``, ``--keep-last-good`` and ``--strategy`` enter one around
the command. The active context lives in a ``contextvars.ContextVar``, so nested blocks
and threads each see their own.

Example:

>>> from compress.training_context import TrainingContext
>>> with TrainingContext(checkpoint_dir="ck", keep_last_good="last.keras"):  # doctest: +SKIP
...     pruned, info = prune(model, ds, sparsity=0.9, epochs=4)
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import signal
import threading

import keras

from compress.errors import CompressError

STRATEGIES = ("none", "mirrored")

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("compress_training_context",
                                                        default=None)
# One strategy per process: a second MirroredStrategy would reuse collective instance
# keys and fail with "Shape mismatch in the collective instance" on its first fit.
_STRATEGY_CACHE: dict = {}


class TrainingContext:
    """Backups, last good weights and a ``tf.distribute`` strategy for every fit in a block.

    Example:

    >>> with TrainingContext(checkpoint_dir="ck"):                    # doctest: +SKIP
    ...     student, info = distill(teacher, student, ds, epochs=20)
    >>> # interrupted? run the same block again: it resumes at the last finished epoch

    Args:
        checkpoint_dir: str or None, default None. Back up every fit each epoch to its own
            sub-folder, ``fit1``, ``fit2``, ... in call order, with
            :class:`AtomicBackupAndRestore`. Running the same code again with the same
            folder replays the finished fits (same seed, same result: a finished fit's
            backup is deleted) and resumes the interrupted one at its last finished epoch.
        keep_last_good: str or None, default None. When a loss turns NaN or infinite, save
            the model being trained, as it was at the end of its last good epoch, to this
            file (``.keras`` or ``.h5``); the fit still fails with a :class:`CompressError`.
        strategy: str, default ``"none"``. ``"mirrored"`` enters
            ``tf.distribute.MirroredStrategy`` for the block: models loaded, built or
            copied inside it get mirrored variables and train data-parallel over the local
            devices. For several machines enter ``MultiWorkerMirroredStrategy().scope()``
            yourself, with ``TF_CONFIG`` set on each worker.
        force: bool, default False. Let ``keep_last_good`` replace an existing file.
    """

    def __init__(self, checkpoint_dir=None, keep_last_good=None, strategy: str | None = "none",
                 force: bool = False):
        strategy = strategy or "none"
        if strategy not in STRATEGIES:
            raise CompressError(f"strategy '{strategy}': must be {' or '.join(STRATEGIES)}")
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self.keep_last_good = None if keep_last_good is None else os.fspath(keep_last_good)
        self.strategy = strategy
        self.force = bool(force)
        self.fits = 0
        self._entered = []

    def __enter__(self):
        stack = contextlib.ExitStack()
        if self.strategy != "none":
            stack.enter_context(distribution_strategy(self.strategy).scope())
        self.fits = 0  # numbering restarts with each block: the same code, the same folders
        self._entered.append((_ACTIVE.set(self), stack))
        return self

    def __exit__(self, *exc_info):
        token, stack = self._entered.pop()
        _ACTIVE.reset(token)
        return stack.__exit__(*exc_info)

    def next_backup_dir(self) -> str | None:
        """Count one more fit; return its backup folder (``checkpoint_dir/fitN``) or None."""
        self.fits += 1
        if not self.checkpoint_dir:
            return None
        return os.path.join(self.checkpoint_dir, f"fit{self.fits}")

    def save_last_good(self, model) -> str | None:
        """Save ``model`` to ``keep_last_good`` if it is set; return where, else None."""
        if not self.keep_last_good:
            return None
        from compress import io

        return str(io.save_model(model, self.keep_last_good, force=self.force))

    def __repr__(self):
        return (f"TrainingContext(checkpoint_dir={self.checkpoint_dir!r}, "
                f"keep_last_good={self.keep_last_good!r}, strategy={self.strategy!r}, "
                f"force={self.force})")


def current_context() -> TrainingContext:
    """The innermost active :class:`TrainingContext`, or a default one (no backups, no
    last-good file, no strategy) outside any ``with`` block."""
    active = _ACTIVE.get()
    return active if active is not None else TrainingContext()


def distribution_strategy(name: str):
    """The process's one ``tf.distribute`` strategy called ``name`` (``"mirrored"``)."""
    import tensorflow as tf

    if name != "mirrored":
        raise CompressError(f"strategy '{name}': must be mirrored here")
    if name not in _STRATEGY_CACHE:
        _STRATEGY_CACHE[name] = tf.distribute.MirroredStrategy()
    return _STRATEGY_CACHE[name]


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
