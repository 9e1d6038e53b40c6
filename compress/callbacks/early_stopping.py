"""Early stopping after Goodfellow et al., Algorithm 7.1, and the retrain of Algorithm 7.2.

Example:

>>> from compress.callbacks import EarlyStopping, retrain_on_all_data   # doctest: +SKIP
>>> stop = EarlyStopping(monitor="val_loss", patience=5)                 # doctest: +SKIP
>>> model.fit(x, y, validation_data=(xv, yv), epochs=100, callbacks=[stop])  # doctest: +SKIP
>>> stop.best_epoch, stop.best_step, stop.best                           # doctest: +SKIP
>>> final = retrain_on_all_data(model, (x, y), (xv, yv), steps=stop.best_step)  # doctest: +SKIP
"""

from __future__ import annotations

import math

import keras
import numpy as np

from compress.callbacks.console import print_msg
from compress.errors import CompressError


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Stop when the monitored value stops improving; keep the best weights and i*.

    A subclass of ``keras.callbacks.EarlyStopping`` (same stopping rule, same arguments)
    that follows Algorithm 7.1 of Goodfellow et al.: patience counts *evaluations* (with
    ``validation_freq=n`` the epochs without validation are skipped silently, not counted),
    the best parameters are restored at the end however training ends (early stop or the
    epoch limit), and the best step count i* and best value are kept on the callback
    (``best``, ``best_epoch``, ``best_step``) and written into the epoch logs
    (``best_<monitor>``, ``best_epoch``, ``best_step``) so ``History``, ``CSVLogger`` and
    TensorBoard see them. ``best_step`` (i*) counts optimizer updates since the start of
    this ``fit``, the quantity :func:`retrain_on_all_data` needs.

    Example:

    >>> stop = EarlyStopping(monitor="val_loss", patience=3, min_delta=1e-4)  # doctest: +SKIP
    >>> model.fit(x, y, validation_split=0.1, epochs=50, callbacks=[stop])   # doctest: +SKIP
    >>> stop.best_step   # i*: updates to reach the best validation loss     # doctest: +SKIP

    Args:
        monitor: str, default ``"val_loss"``. Quantity to watch in the epoch logs.
        min_delta: float, default 0. Smallest change that counts as an improvement.
        patience: int, default 0. Evaluations without improvement before stopping (p).
        verbose: int, default 0. 1 prints the stop and restore through Keras's logging.
        mode: str, default ``"auto"``. ``"min"``, ``"max"`` or ``"auto"`` (from the name).
        baseline: float or None, default None. A value the monitored quantity must beat.
        restore_best_weights: bool, default True (Keras: False). Restore θ* at the end,
            also when the epoch limit ends training.
        start_from_epoch: int, default 0. Epochs to wait before monitoring.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=True, start_from_epoch=0):
        if patience < 0:
            raise CompressError(f"EarlyStopping.patience: must be >= 0, got {patience}")
        super().__init__(monitor=monitor, min_delta=min_delta, patience=patience,
                         verbose=verbose, mode=mode, baseline=baseline,
                         restore_best_weights=restore_best_weights,
                         start_from_epoch=start_from_epoch)
        self.best_step = 0
        self.evaluations = 0

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.best_step = 0
        self.evaluations = 0
        self._warned = self._seen = False
        self._start_iterations = self._iterations()

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        if self.monitor not in logs and not _has_validation(logs, self.monitor):
            return  # not an evaluation epoch (validation_freq > 1): neither counted nor warned
        super().on_epoch_end(epoch, logs)
        self._seen = self._seen or self.monitor in logs
        if self.monitor in logs and epoch >= self.start_from_epoch:
            self.evaluations += 1
            if self.best_epoch == epoch:  # improved at this evaluation: i <- i*
                self.best_step = self._iterations() - self._start_iterations
        if self.best is not None:
            logs[f"best_{self.monitor}"] = float(self.best)
            logs["best_epoch"] = int(self.best_epoch)
            logs["best_step"] = int(self.best_step)

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        if not getattr(self, "_seen", True) and not getattr(self, "_warned", False):
            self._warn(f"EarlyStopping: '{self.monitor}' never appeared in this fit's logs "
                       "(no validation data?): it neither stopped the fit nor restored "
                       "weights")
        if self.verbose > 0 and self.best is not None:
            print_msg(f"Best {self.monitor} {float(self.best):.6g} at epoch "
                               f"{self.best_epoch + 1} (i* = {self.best_step} steps).")

    def backup_state(self) -> dict:
        """The stopping state (best value, epoch and step, patience count, best weights)
        for a backup: :class:`~compress.training_context.AtomicBackupAndRestore` saves it
        each epoch and calls :meth:`restore_state` on resume, so a resumed fit stops and
        restores the best weights as an uninterrupted one would.

        Example:

        >>> stop.restore_state(stop.backup_state())                  # doctest: +SKIP
        """
        state = {"wait": int(self.wait), "stopped_epoch": int(self.stopped_epoch),
                 "best": None if self.best is None else float(self.best),
                 "best_epoch": int(self.best_epoch), "best_step": int(self.best_step),
                 "evaluations": int(self.evaluations),
                 "start_iterations": int(self._start_iterations),
                 "best_weights": self.best_weights is not None}
        for i, w in enumerate(self.best_weights or []):
            state[f"best_weights.{i}"] = np.array(w)
        return state

    def restore_state(self, state: dict) -> None:
        """Put back a state from :meth:`backup_state` (after ``on_train_begin``)."""
        self.wait = int(state["wait"])
        self.stopped_epoch = int(state["stopped_epoch"])
        self.best = state["best"]
        self.best_epoch = int(state["best_epoch"])
        self.best_step = int(state["best_step"])
        self.evaluations = int(state["evaluations"])
        self._seen = self.evaluations > 0 or self.best is not None
        self._start_iterations = int(state["start_iterations"])
        self.best_weights = None
        if state["best_weights"]:
            count = sum(1 for k in state if k.startswith("best_weights."))
            self.best_weights = [state[f"best_weights.{i}"] for i in range(count)]

    def _iterations(self) -> int:
        opt = getattr(self.model, "optimizer", None)
        if opt is None:
            return 0
        return int(keras.ops.convert_to_numpy(opt.iterations))

    def get_monitor_value(self, logs):
        value = (logs or {}).get(self.monitor)
        if value is None and not getattr(self, "_warned", False):  # a typo: val_acc
            self._warn(f"EarlyStopping: '{self.monitor}' is not among this fit's metrics "
                       f"({', '.join(logs or {})}): it neither stops the fit nor restores "
                       "weights")
        return value

    def _warn(self, message: str) -> None:
        import warnings

        self._warned = True
        warnings.warn(message, UserWarning, stacklevel=3)

    def get_config(self):
        return {"monitor": self.monitor, "min_delta": self.min_delta, "patience": self.patience,
                "verbose": self.verbose, "mode": self.mode, "baseline": self.baseline,
                "restore_best_weights": self.restore_best_weights,
                "start_from_epoch": self.start_from_epoch}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _has_validation(logs: dict, monitor: str) -> bool:
    """True when ``logs`` come from an evaluation epoch (a val_ metric is present)."""
    if not monitor.startswith("val_"):
        return True
    return any(k.startswith("val_") for k in logs)


class _StopAtStep(keras.callbacks.Callback):
    """Stops ``fit`` after exactly ``steps`` optimizer updates."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = int(steps)
        self.done = 0

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1
        if self.done >= self.steps:
            self.model.stop_training = True


def retrain_on_all_data(model, train, validation, steps, *, batch_size: int = 32,
                        mode: str = "steps", callbacks=None, seed: int | None = None,
                        verbose: int | str = 0):
    """Retrain from a fresh initialisation on train + validation for i* steps (Algorithm 7.2).

    The second half of Goodfellow et al.'s recipe: early stopping found the best number
    of updates i* on a held-out split; this trains the same architecture, freshly
    initialised and compiled like ``model``, on the union of both splits for i* updates
    (``mode="steps"``) or for as many epochs (``mode="epochs"``, the book's variant that
    keeps the number of passes over the data). ``model`` is not modified.

    Example:

    >>> stop = EarlyStopping(patience=3)                                      # doctest: +SKIP
    >>> model.fit(x, y, validation_data=(xv, yv), callbacks=[stop], epochs=50)  # doctest: +SKIP
    >>> final = retrain_on_all_data(model, (x, y), (xv, yv), stop)             # doctest: +SKIP

    Args:
        model: a compiled ``keras.Model`` (its architecture, optimizer, loss and metrics are
            reused; its weights are not).
        train: tuple ``(x, y)`` of the training split.
        validation: tuple ``(x, y)`` of the validation split, now trained on.
        steps: int, or an :class:`EarlyStopping` that has run (its ``best_step`` is i*).
        batch_size: int, default 32 (Keras's ``fit`` default). The batch size of the
            early-stopped fit: i* counts its updates, so another size trains on another
            number of samples.
        mode: str, default ``"steps"``. ``"steps"``: exactly i* updates; ``"epochs"``: the
            number of epochs i* updates made on the training split alone.
        callbacks: list or None, default None. Extra callbacks for the retraining ``fit``.
        seed: int or None, default None. Seed the fresh initialisation.
        verbose: Keras ``verbose`` for ``fit``, default 0.

    Returns:
        A new trained ``keras.Model``.
    """
    if isinstance(steps, EarlyStopping):
        steps = steps.best_step
    steps = int(steps)
    if steps <= 0:
        raise CompressError(f"retrain_on_all_data: steps must be > 0, got {steps} "
                            "(did the early-stopping run evaluate at least once?)")
    if mode not in ("steps", "epochs"):
        raise CompressError(f"retrain_on_all_data.mode: must be steps or epochs, got {mode!r}")
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        raise CompressError("retrain_on_all_data: the model must be compiled (its optimizer, "
                            "loss and metrics are reused)")
    from compress.layers import register_layers

    register_layers()
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    fresh = keras.models.clone_model(model)  # new layers: fresh initialisation (theta_0)
    fresh.compile_from_config(model.get_compile_config())
    x = np.concatenate([train[0], validation[0]])
    y = np.concatenate([train[1], validation[1]])
    per_epoch_train = math.ceil(len(train[0]) / batch_size)
    per_epoch_all = math.ceil(len(x) / batch_size)
    cbs = list(callbacks or [])
    if mode == "steps":
        epochs = math.ceil(steps / per_epoch_all)
        cbs.append(_StopAtStep(steps))
    else:
        epochs = max(1, math.ceil(steps / per_epoch_train))
    fresh.fit(x, y, epochs=epochs, batch_size=batch_size, callbacks=cbs, verbose=verbose,
              shuffle=True)
    return fresh
