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
import hashlib
import json
import os
import re
import signal
import threading

import keras
import numpy as np

from compress.errors import CompressError

STRATEGIES = ("none", "mirrored", "multiworker")
# Command options that do not change what is trained: a re-run that differs only in them
# resumes (another output path, --force, --json, ...).
_NOT_IDENTITY = frozenset({"output", "force", "as_json", "json", "unsafe", "debug",
                           "checkpoint_dir", "keep_last_good", "strategy"})

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
            devices. ``"multiworker"`` enters ``tf.distribute.MultiWorkerMirroredStrategy``
            over the processes ``TF_CONFIG`` names (:mod:`compress.cluster`): every worker
            runs the same code; the chief alone writes backups (see :func:`is_chief`).
            It must be entered before TensorFlow runs its first operation.
        force: bool, default False. Let ``keep_last_good`` replace an existing file.
        command: str or None, default None. The command the block runs (``"prune"``).
        options: dict or None, default None. The command's options. With ``command`` they
            are the block's identity (:func:`command_identity`), stored with every backup:
            a folder holding a backup of another command, of other options (files named
            in them compared by content) or of another model is refused in one line when
            the block is entered, instead of being resumed. The CLI passes both. Each
            backup also records its fit's model architecture, epochs and steps, so another
            model's backup is refused even without them.
    """

    def __init__(self, checkpoint_dir=None, keep_last_good=None, strategy: str | None = "none",
                 force: bool = False, command: str | None = None, options: dict | None = None):
        strategy = strategy or "none"
        if strategy not in STRATEGIES:
            raise CompressError(f"strategy '{strategy}': must be "
                                f"{', '.join(STRATEGIES[:-1])} or {STRATEGIES[-1]}")
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self.keep_last_good = None if keep_last_good is None else os.fspath(keep_last_good)
        self.strategy = strategy
        self.force = bool(force)
        self.command = command
        self.options = dict(options or {})
        self.identity = None  # digest of command and options, set on entering with backups
        self.inputs = []  # files keep_last_good must never replace (a recipe's model)
        self.fits = 0
        self._entered = []

    def __enter__(self):
        if self.checkpoint_dir:
            # Before any work: a folder left by another command is refused now, not after
            # the fits before the interrupted one were replayed.
            if self.command is not None or self.options:
                self.identity = command_identity(self.command, self.options)
            refuse_foreign_backups(self.checkpoint_dir, self.identity)
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

    def backup_callback(self, backup_dir: str, callbacks=()):
        """The :class:`AtomicBackupAndRestore` of one fit backed up to ``backup_dir``.

        Callbacks among ``callbacks`` that define ``backup_state()`` and
        ``restore_state(state)`` (the :class:`~compress.callbacks.Pruning` schedule) have
        their state saved with every backup and put back on resume.
        """
        stateful = [cb for cb in callbacks if callable(getattr(cb, "backup_state", None))]
        return AtomicBackupAndRestore(backup_dir, identity=self.identity,
                                      where=self.checkpoint_dir, stateful=stateful,
                                      writes=self.strategy != "multiworker" or is_chief())

    def save_last_good(self, model) -> str | None:
        """Save ``model`` to ``keep_last_good`` if it is set; return where, else None."""
        if not self.keep_last_good:
            return None
        from compress import io

        if not all(np.isfinite(w).all() for w in model.get_weights()
                   if np.issubdtype(np.asarray(w).dtype, np.floating)):
            return None  # never save NaN as "last good"
        return str(io.save_model(model, self.keep_last_good, force=self.force,
                                 inputs=self.inputs))

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
    """The process's one ``tf.distribute`` strategy called ``name`` (``"mirrored"`` or
    ``"multiworker"``)."""
    import tensorflow as tf

    if name not in ("mirrored", "multiworker"):
        raise CompressError(f"strategy '{name}': must be mirrored or multiworker here")
    if name not in _STRATEGY_CACHE:
        _STRATEGY_CACHE[name] = (tf.distribute.MirroredStrategy() if name == "mirrored"
                                 else _multiworker_strategy())
    return _STRATEGY_CACHE[name]


def is_chief() -> bool:
    """False only in a non-chief worker of a ``multiworker`` run: it trains like the others
    but writes no backup (the chief's is every worker's: their weights are the same)."""
    strategy = _STRATEGY_CACHE.get("multiworker")
    return strategy is None or bool(strategy.extended.should_checkpoint)


def _multiworker_strategy():
    """``MultiWorkerMirroredStrategy`` over ``TF_CONFIG``'s workers, on CPU collectives
    (ring), waiting at most :func:`compress.cluster.connect_timeout` seconds for the
    cluster: an unreachable worker is one line, not a hang."""
    import tensorflow as tf

    # The coordination service's registration and heartbeat timeouts have no public knob;
    # configured before the strategy, they replace its defaults (wait forever).
    from tensorflow.python.eager import context as tf_context

    from compress import cluster

    info = cluster.read_tf_config()
    timeout = cluster.connect_timeout()
    ctx = tf_context.context()
    if ctx._context_handle is not None:  # no public "initialized" query
        raise CompressError("--strategy multiworker must be chosen before TensorFlow runs "
                            "anything (enter the TrainingContext first)")
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2

    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=n) for job, n in
            (("chief", sum(t == "chief" for t, _, _ in info.tasks)),
             ("worker", sum(t == "worker" for t, _, _ in info.tasks))) if n]
    leader = "chief" if any(t == "chief" for t, _, _ in info.tasks) else "worker"
    ctx.configure_coordination_service(
        service_type="standalone", service_leader=f"/job:{leader}/replica:0/task:0",
        coordinated_jobs=jobs, cluster_register_timeout_in_ms=int(timeout * 1000),
        heartbeat_timeout_in_ms=int(min(timeout, 30) * 1000),
        shutdown_barrier_timeout_in_ms=int(timeout * 1000))
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    _patch_symbolic_build()
    done = _connect_watchdog(timeout, info)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        # A first all-reduce, bounded in time: the constructor returns before the other
        # workers are there, and the first collective would wait for them forever.
        one = strategy.run(lambda: tf.constant(1.0))
        strategy.extended.reduce_to(
            tf.distribute.ReduceOp.SUM, one, one,
            options=tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout))
        return strategy
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError,
            tf.errors.AbortedError, tf.errors.InternalError,
            tf.errors.CancelledError) as exc:
        raise CompressError(_not_connected(info, timeout)) from exc
    finally:
        done()


def _patch_symbolic_build():
    """Let Keras build a model from its first batch under MultiWorkerMirroredStrategy.

    Keras 3.15's TensorFlow trainer ``strategy.reduce("MEAN", batch)``-s the first
    distributed batch (a tuple) to read its shapes, which MultiWorkerMirroredStrategy
    refuses ("Attempt to convert a value (PerReplica...)"); the local replica's batch has
    the same structure and dtypes, which is all the build reads.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    if getattr(original, "compress_local_batch", False):
        return

    def local(value, strategy):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or not isinstance(
                strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return original(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            batch = next(it)
            data_batch = tuple(local(v, strategy) for v in batch) \
                if isinstance(batch, tuple) else local(batch, strategy)
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    _maybe_symbolic_build.compress_local_batch = True
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build

    # The step's logs (scalars) are averaged with reduce("MEAN", axis=0), which fails on a
    # scalar ("Invalid reduction dimension 0"): average them over every replica of every
    # worker instead, so that all workers' callbacks see the same numbers (a callback
    # acting on one worker's own loss could stop that worker alone: a hang).
    reduce_per_replica = tf_trainer.reduce_per_replica

    def reduce_logs(values, strategy, reduction):
        if reduction in ("auto", "mean") and isinstance(
                strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return keras.tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    tf_trainer.reduce_per_replica = reduce_logs


def _not_connected(info, timeout) -> str:
    others = ", ".join(a for t, i, a in info.tasks if (t, i) != (info.task_type, info.index))
    return (f"multiworker: the cluster did not connect within {timeout:g} s ({info.name} at "
            f"{info.address}; others: {others or 'none'}); check that every worker is "
            "started with the same TF_CONFIG and that the addresses are reachable")


_WATCHDOG = """import select, sys
line = sys.stdin.readline()
if not select.select([sys.stdin], [], [], float(sys.argv[1]))[0]:
    sys.stderr.write(line)
    sys.stderr.flush()
"""


def _connect_watchdog(timeout, info):
    """Bound the wait for the cluster where TensorFlow's own timeout does not: a helper
    process prints the one line after ``timeout`` s, and ``faulthandler`` (a C thread: the
    waiting call may hold the GIL, so no Python thread would run) ends this process with
    exit code 1 just after. Returns the function that calls both off."""
    import faulthandler
    import subprocess
    import sys

    helper = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(timeout)],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    helper.stdin.write(f"error: {_not_connected(info, timeout)}\n")
    helper.stdin.flush()
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed by stop()
    faulthandler.dump_traceback_later(timeout + 2, exit=True, file=devnull)

    def stop():
        faulthandler.cancel_dump_traceback_later()
        devnull.close()
        helper.stdin.close()  # EOF: the helper ends without a word
        helper.wait()

    return stop


def foreign_backup_message(checkpoint_dir) -> str:
    """The one line refusing a backup folder made by another command or model."""
    return (f"checkpoint {checkpoint_dir} was made by another command or model; use a new "
            "--checkpoint-dir or delete it")


def command_identity(command: str | None, options: dict) -> str:
    """A digest of a command and its options, as stored with its backups.

    Options that do not change the training (the output path, ``force``, ``json``, ...)
    are left out; a string naming an existing file or folder (the model, a recipe,
    ``npz:PATH`` data) counts by its content, so an edited input is another command.

    Example:

    >>> a = command_identity("prune", {"sparsity": 0.5, "output": "a.keras"})
    >>> a == command_identity("prune", {"sparsity": 0.5, "output": "b.keras"})
    True
    >>> a == command_identity("prune", {"sparsity": 0.9, "output": "a.keras"})
    False
    """
    kept = {str(k): _identity_value(v) for k, v in sorted(options.items())
            if k not in _NOT_IDENTITY}
    text = json.dumps({"command": command, "options": kept}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _identity_value(value):
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if isinstance(text, bytes):
            text = os.fsdecode(text)
        path = text.removeprefix("npz:")
        try:
            if os.path.isfile(path):
                return {"file": _file_digest(path)}
            if os.path.isdir(path):
                return {"folder": _folder_digest(path)}
        except (OSError, ValueError):  # unreadable or not a path: the text is the identity
            pass
        return text
    if isinstance(value, (list, tuple)):
        return [_identity_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _identity_value(v) for k, v in sorted(value.items(), key=str)}
    if callable(getattr(value, "get_weights", None)):  # a Keras model passed as an option
        return {"model": weights_digest(value)}
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return repr(value)


def _file_digest(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_digest(path) -> str:
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode("utf-8", "surrogateescape"))
            digest.update(_file_digest(full).encode())
    return digest.hexdigest()


def weights_digest(model) -> str:
    """A digest of a model's weight values (and their shapes and dtypes)."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        w = np.ascontiguousarray(w)
        digest.update(f"{w.shape}{w.dtype}".encode())
        digest.update(w.tobytes())
    return digest.hexdigest()


def refuse_foreign_backups(checkpoint_dir, identity: str | None) -> None:
    """Refuse a folder holding a backup (``fitN/``) of another command: one line."""
    try:
        names = sorted(os.listdir(checkpoint_dir))
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise CompressError(f"checkpoint {checkpoint_dir}: cannot be read "
                            f"({exc.strerror or exc})") from exc
    for name in names:
        meta = os.path.join(checkpoint_dir, name, "training_metadata.json")
        if re.fullmatch(r"fit\d+", name):
            _refuse_foreign_files(checkpoint_dir, name)
        if name.startswith("fit") and os.path.isfile(meta):
            stored = _read_metadata(meta, checkpoint_dir)
            if stored.get("command") != identity:
                raise CompressError(foreign_backup_message(checkpoint_dir))


#: What a fit's backup folder holds (:class:`AtomicBackupAndRestore`), besides the
#: ``.partial-*`` files of a write that was cut short.
_BACKUP_FILES = ("latest.weights.h5", "training_metadata.json", "callbacks_state.npz")


def _refuse_foreign_files(checkpoint_dir, name: str) -> None:
    """A ``fitN`` entry that is not a backup folder of ours: Keras deletes a fit's backup
    folder, whole, when the fit ends, so the user's files in it would go with it."""
    path = os.path.join(checkpoint_dir, name)
    if not os.path.isdir(path) or os.path.islink(path):
        raise CompressError(f"checkpoint {checkpoint_dir}: {name} is not a backup folder of "
                            "this tool (a fit's backup goes there); use a new --checkpoint-dir")
    try:
        entries = sorted(os.listdir(path))
    except OSError as exc:
        raise CompressError(f"checkpoint {checkpoint_dir}: {name} cannot be read "
                            f"({exc.strerror or exc})") from exc
    foreign = [e for e in entries if e not in _BACKUP_FILES and not e.startswith(".partial-")]
    if foreign:
        raise CompressError(
            f"checkpoint {checkpoint_dir}: {name}/ holds files that are not a backup "
            f"({foreign[0]}{', ...' if len(foreign) > 1 else ''}), and a fit's backup folder "
            "is deleted when the fit ends; use a new --checkpoint-dir or move them")


def backup_epoch(backup_dir) -> int:
    """The epochs a fit's backup folder holds (0 when there is none, or it is unreadable:
    :class:`AtomicBackupAndRestore` then refuses it when the fit begins)."""
    try:
        with open(os.path.join(backup_dir, "training_metadata.json"), encoding="utf-8") as f:
            epoch = json.load(f).get("epoch")
    except (OSError, ValueError, AttributeError):
        return 0
    return epoch if isinstance(epoch, int) and epoch > 0 else 0


def _read_metadata(path, checkpoint_dir) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, ValueError) as exc:
        raise CompressError(f"checkpoint {checkpoint_dir}: unreadable backup {path}; delete "
                            "the folder or use a new --checkpoint-dir") from exc
    if not isinstance(stored, dict) or not isinstance(stored.get("epoch"), int):
        raise CompressError(foreign_backup_message(checkpoint_dir))
    return stored


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's ``BackupAndRestore``, written atomically, refusing another run's backup,
    and saving the state of the fit's stateful callbacks with the weights.

    Keras writes ``latest.weights.h5`` in place, so a Ctrl-C that lands while it is being
    written leaves a file with only some layers in it, and the resumed run fails with
    "Layer ... expected 2 variables, but received 0". Here the weights, the callbacks'
    state and the epoch counter go to temporary files first and are renamed over the
    backup together, with SIGINT and SIGTERM held back for the renames: the folder always
    holds one whole epoch.

    Each backup records a fingerprint: the ``identity`` of the command, the fit's folder
    (its place among the command's fits), the model's class and variables (shapes and
    dtypes), the epochs and steps, and the stateful callbacks' classes. A backup whose
    fingerprint differs is refused in one line (Keras would load whatever fits, or fail
    with "A total of 3 objects could not be loaded").

    Stateful callbacks define ``backup_state()`` (a dict of JSON values and NumPy arrays)
    and ``restore_state(state)``, called after the weights were restored (their own
    ``on_train_begin`` ran before): a gradual pruning schedule resumes at its step with its
    masks, instead of starting over on a shorter fit. The :mod:`compress.callbacks`
    ``EarlyStopping``, ``CosineSchedule`` and ``PlateauSchedule`` are such callbacks. The
    model's random-generator states (dropout, noise layers), which Keras's backup leaves
    out, are saved too; with the optimizer's state (in the weights file) and the per-epoch
    shuffle of :func:`compress.training.fit_model`, a resumed fit ends where an
    uninterrupted one would.

    Example:

    >>> backup = AtomicBackupAndRestore("backup/")  # same arguments as Keras's
    >>> model.fit(x, y, epochs=50, callbacks=[backup])  # run again to resume  # doctest: +SKIP

    Args:
        backup_dir: str. The folder of this fit's backup.
        identity: str or None, keyword-only. The command's identity
            (:func:`command_identity`).
        where: str or None, keyword-only. The folder named in the refusal (default
            ``backup_dir``).
        stateful: list of callbacks, keyword-only. Callbacks whose state is backed up.
        writes: bool, keyword-only, default True. False in the non-chief workers of a
            multiworker run: they restore from the chief's backup; theirs goes to a
            temporary folder deleted at once.
    """

    _STATE_FILE = "callbacks_state.npz"

    def __init__(self, backup_dir, *args, identity: str | None = None, where=None,
                 stateful=(), writes: bool = True, **kwargs):
        super().__init__(backup_dir, *args, **kwargs)
        self.writes = bool(writes)
        self.identity = identity
        self.where = where or backup_dir
        self.stateful = list(stateful)
        self._fingerprint = None
        self._state_path = os.path.join(self.backup_dir, self._STATE_FILE)

    def on_train_begin(self, logs=None):
        self._fingerprint = self._fit_fingerprint()
        super().on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        # Keras reads the restored epoch (model._initial_epoch) once, just after
        # on_train_begin, and never clears it: the next fit of the same model (the next
        # round of an iterative prune) would silently skip that many epochs.
        if getattr(self.model, "_initial_epoch", None) is not None:
            self.model._initial_epoch = None

    def _fit_fingerprint(self) -> str:
        params = self.params or {}
        described = {
            "fit": os.path.basename(os.path.normpath(self.backup_dir)),
            "model": type(self.model).__name__,
            # Shapes, not names: automatic layer names depend on what the process built
            # before, and a resumed run in the same process builds more.
            "variables": [[list(v.shape), str(v.dtype)] for v in self.model.weights],
            "epochs": params.get("epochs"), "steps": params.get("steps"),
            "callbacks": [type(cb).__name__ for cb in self.stateful]}
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()

    def _load_model(self):
        if not os.path.exists(self._training_metadata_path):
            if os.path.exists(self._weights_path):  # weights without their epoch: not ours
                raise CompressError(foreign_backup_message(self.where))
            return
        stored = _read_metadata(self._training_metadata_path, self.where)
        if stored.get("command") != self.identity or stored.get("fit") != self._fingerprint:
            raise CompressError(foreign_backup_message(self.where))
        states = stored.get("callbacks") or []
        randoms = _random_states(self.model)
        if len(states) != len(self.stateful) or stored.get("random", 0) != len(randoms):
            raise CompressError(foreign_backup_message(self.where))
        arrays = {}
        if randoms or any(state.get("arrays") for state in states):
            try:
                with np.load(self._state_path, allow_pickle=False) as f:
                    arrays = {k: f[k] for k in f.files}
            except (OSError, ValueError) as exc:
                raise CompressError(f"checkpoint {self.where}: unreadable backup "
                                    f"{self._state_path}; delete the folder or use a new "
                                    "--checkpoint-dir") from exc
        super()._load_model()
        for j, variable in enumerate(randoms):
            variable.assign(arrays[f"random.{j}"])
        for i, (cb, state) in enumerate(zip(self.stateful, states, strict=True)):
            values = dict(state.get("values") or {})
            for key in state.get("arrays") or []:
                values[key] = arrays[f"{i}.{key}"]
            cb.restore_state(values)

    def on_train_end(self, logs=None):
        if self.writes:  # a multiworker run's other workers leave the chief's folder be
            super().on_train_end(logs)

    def _save_model(self):
        if not self.writes:
            # Another worker of a multiworker run: it must read the variables as the chief
            # does (reading a sync-on-read variable is a collective operation the chief
            # waits in), so it writes the same backup, into a folder of its own that is
            # deleted at once (as TensorFlow's write_filepath does): the chief's folder
            # has one writer, and every worker resumes from it.
            import tempfile

            paths = (self.backup_dir, self._weights_path, self._training_metadata_path,
                     self._state_path)
            with tempfile.TemporaryDirectory(prefix="compress-worker-backup-") as scratch:
                self.backup_dir = scratch
                self._weights_path, self._training_metadata_path, self._state_path = (
                    os.path.join(scratch, os.path.basename(p)) for p in paths[1:])
                try:
                    self._write_backup()
                finally:
                    (self.backup_dir, self._weights_path, self._training_metadata_path,
                     self._state_path) = paths
            return
        self._write_backup()

    def _write_backup(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        tmp_weights = os.path.join(self.backup_dir, f".partial-{os.getpid()}.weights.h5")
        tmp_meta = os.path.join(self.backup_dir, f".partial-{os.getpid()}.json")
        tmp_state = os.path.join(self.backup_dir, f".partial-{os.getpid()}.npz")
        try:
            self.model.save_weights(filepath=tmp_weights, overwrite=True)
            randoms = _random_states(self.model)
            states = []
            arrays = {f"random.{j}": np.asarray(v) for j, v in enumerate(randoms)}
            for i, cb in enumerate(self.stateful):
                values, names = {}, []
                for key, value in cb.backup_state().items():
                    if isinstance(value, np.ndarray):
                        arrays[f"{i}.{key}"] = value
                        names.append(key)
                    else:
                        values[key] = value
                states.append({"class": type(cb).__name__, "values": values, "arrays": names})
            if arrays:
                with open(tmp_state, "wb") as f:
                    np.savez(f, **arrays)
            with open(tmp_meta, "w", encoding="utf-8") as f:
                json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen,
                           "command": self.identity, "fit": self._fingerprint,
                           "callbacks": states, "random": len(randoms)}, f)
            with _sigint_held():
                if arrays:
                    os.replace(tmp_state, self._state_path)
                os.replace(tmp_weights, self._weights_path)
                os.replace(tmp_meta, self._training_metadata_path)
        finally:
            for leftover in (tmp_weights, tmp_meta, tmp_state):
                if os.path.exists(leftover):
                    os.unlink(leftover)


def _random_states(model) -> list:
    """The model's random-generator states (its layers' ``SeedGenerator`` variables, which
    ``save_weights`` leaves out): a resumed fit must draw the dropout masks and noise an
    uninterrupted one would."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _sigint_held():
    """Hold a Ctrl-C (SIGINT) or a SIGTERM back until the block is done, then act on it
    as the handler in place before would have.

    Outside the main thread (where Python runs no signal handlers) it is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {}
    for signum in _HELD_SIGNALS:
        previous[signum] = signal.signal(signum, lambda s, frame: caught.append(s))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for signum in dict.fromkeys(caught):
        handler = previous[signum]
        if callable(handler):
            handler(signum, None)
        elif handler == signal.SIG_DFL:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)  # the default action (SIGTERM: end the process)
