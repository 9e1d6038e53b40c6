"""Divide the learning rate by 10 when the monitored value plateaus, without fighting a cosine.

Example:

>>> from compress.callbacks import PlateauSchedule                  # doctest: +SKIP
>>> model.fit(x, y, validation_split=0.1, epochs=30,
...           callbacks=[PlateauSchedule(patience=3, min_lr=1e-5)])  # doctest: +SKIP
"""

from __future__ import annotations

import keras

from compress.errors import CompressError


class PlateauSchedule(keras.callbacks.ReduceLROnPlateau):
    """Reduce the learning rate by ``factor`` on a plateau; alone or over a cosine schedule.

    A subclass of ``keras.callbacks.ReduceLROnPlateau``: patience, ``min_delta``, cooldown
    and the floor ``min_lr`` behave exactly as in Keras (same rate sequence on the same
    history). The default factor is 0.1, the "divide by 10" of the cascade algorithm.

    Rule with :class:`compress.callbacks.CosineSchedule`: when a cosine schedule drives the
    rate in the same ``fit`` (found automatically, or given as ``schedule=``), this callback
    never writes the optimizer's rate (the cosine would overwrite it at the next step).
    Instead it applies the Keras rule to the cosine's *peak*: on a plateau the peak (and so
    the whole curve, floor included) is multiplied by ``factor``, never below ``min_lr``.
    The cosine keeps its shape, warmup and restarts at the lower level.

    Example:

    >>> cosine = CosineSchedule(warmup_epochs=1)                           # doctest: +SKIP
    >>> plateau = PlateauSchedule(monitor="val_loss", patience=2)          # doctest: +SKIP
    >>> model.fit(x, y, validation_split=0.1, epochs=20, callbacks=[cosine, plateau])  # doctest: +SKIP

    Args:
        monitor: str, default ``"val_loss"``. Quantity to watch.
        factor: float, default 0.1. New rate = rate * factor; in (0, 1).
        patience: int, default 10. Epochs without improvement before a reduction.
        verbose: int, default 0. 1 prints each reduction through Keras's logging.
        mode: str, default ``"auto"``. ``"min"``, ``"max"`` or ``"auto"``.
        min_delta: float, default 1e-4. Smallest change that counts as an improvement.
        cooldown: int, default 0. Epochs to wait after a reduction before counting again.
        min_lr: float, default 0. Floor for the rate (for the cosine's peak, with a cosine).
        schedule: a ``CosineSchedule`` or None, default None. The schedule to scale; None
            finds one running in the same ``fit``.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0, schedule=None):
        if not 0.0 < factor < 1.0:
            raise CompressError(f"PlateauSchedule.factor: must be in (0, 1), got {factor}")
        super().__init__(monitor=monitor, factor=factor, patience=patience, verbose=verbose,
                         mode=mode, min_delta=min_delta, cooldown=cooldown, min_lr=min_lr)
        self.schedule = schedule
        self.reductions = []  # (epoch, new rate or new cosine peak)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.reductions = []

    def _active_schedule(self):
        from compress.callbacks.cosine import running_schedule

        return self.schedule or running_schedule(self.model)

    def _reduce_optimizer_lr(self, optimizer, epoch, name=""):
        cosine = self._active_schedule()
        target = optimizer if cosine is None else _CosinePeak(cosine)
        reduced = super()._reduce_optimizer_lr(target, epoch, name)
        if reduced:
            self.reductions.append((int(epoch), float(keras.ops.convert_to_numpy(
                target.learning_rate))))
        return reduced

    def backup_state(self) -> dict:
        """The plateau state (best value, patience and cooldown counts, reductions) for a
        backup; the reduced rate itself is the optimizer's (or the cosine's scale).

        Example:

        >>> plateau.restore_state(plateau.backup_state())            # doctest: +SKIP
        """
        return {"wait": int(self.wait), "cooldown_counter": int(self.cooldown_counter),
                "best": None if self.best is None else float(self.best),
                "reductions": [[int(e), float(r)] for e, r in self.reductions]}

    def restore_state(self, state: dict) -> None:
        """Put back a state from :meth:`backup_state` (after ``on_train_begin``)."""
        self.wait = int(state["wait"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self.best = state["best"]
        self.reductions = [(int(e), float(r)) for e, r in state["reductions"]]

    def get_config(self):
        return {"monitor": self.monitor, "factor": self.factor, "patience": self.patience,
                "verbose": self.verbose, "mode": self.mode, "min_delta": self.min_delta,
                "cooldown": self.cooldown, "min_lr": self.min_lr}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class _CosinePeak:
    """Presents a cosine schedule's scaled peak as an optimizer's ``learning_rate``."""

    def __init__(self, cosine):
        self._cosine = cosine

    @property
    def learning_rate(self):
        return self._cosine._peak * self._cosine.scale

    @learning_rate.setter
    def learning_rate(self, value):
        self._cosine.scale = float(value) / self._cosine._peak
