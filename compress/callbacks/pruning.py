"""Gradual magnitude (or OBD) pruning as a Keras callback for any ``model.fit``."""

from __future__ import annotations

import keras
import numpy as np


class Pruning(keras.callbacks.Callback):
    """Prune weights during training, following a sparsity schedule.

    Sparsity rises from ``initial_sparsity`` to ``sparsity`` along Zhu & Gupta's
    polynomial ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** power``, updated
    every ``frequency`` steps (``schedule="constant"`` holds ``sparsity`` from
    ``begin_step``). At each update the lowest-saliency weights of each layer are masked.
    Masks are variable constraints applied inside the compiled train step after every
    optimizer update, so pruned weights stay exactly zero with any optimizer and no
    per-batch Python runs. At the end of training the masks are removed (the zeros stay):
    the model is a plain Keras model that saves and loads without custom objects.

    Example:

    >>> from compress.callbacks import Pruning
    >>> model.fit(x, y, epochs=10, callbacks=[Pruning(sparsity=0.9)])  # doctest: +SKIP

    Args:
        sparsity: float, default 0.9. Final fraction of zero weights in each pruned layer.
        initial_sparsity: float, default 0.0. Sparsity at ``begin_step``.
        begin_step: int, default 0. Training step (batch) where pruning starts.
        end_step: int or None, default None. Step where the final sparsity is reached;
            None means two thirds of the first ``fit``'s steps.
        frequency: int, default 100. Steps between mask updates.
        power: float, default 3. Exponent of the polynomial schedule.
        schedule: str, default ``"polynomial"``; or ``"constant"``.
        method: str, default ``"magnitude"``; or ``"obd"`` (needs ``calibration``).
        scope: str, default ``"layer"`` (same sparsity in each layer); or ``"global"``.
        layers: list of str or None, default None. Layers to prune (names, class names
            or regular expressions); None means every prunable layer.
        skip_first_last: bool, default False. Leave the first and last layers dense.
        calibration: tuple ``(x, y)`` or None, default None. Data for OBD saliencies.
        estimator: str, default ``"backprop"``. OBD Hessian-diagonal estimator.
        release_on_end: bool, default True. Remove the masks when training ends.
        balance: bool, default False. Rank the weights of each output unit separately, so
            every unit keeps the same fraction of its inputs (OBD otherwise cuts off whole
            units and output classes; see :func:`compress.pruning.masks.balanced_mask`).
        damping: float, default 0.0. OBD: Levenberg-Marquardt damping of the Hessian
            diagonal, relative to each layer's mean (see
            :func:`compress.pruning.obd.obd_saliency`).
        block: int, default 1. Remove weights in blocks of ``block`` consecutive inputs of
            one unit (runs of zeros that compress better; see
            :func:`compress.pruning.masks.select_masks`).
    """

    def __init__(self, sparsity=0.9, initial_sparsity=0.0, begin_step=0, end_step=None,
                 frequency=100, power=3.0, schedule="polynomial", method="magnitude",
                 scope="layer", layers=None, skip_first_last=False, calibration=None,
                 estimator="backprop", release_on_end=True, balance=False, damping=0.0,
                 block=1):
        super().__init__()
        from compress.errors import CompressError

        if not 0.0 <= sparsity < 1.0 or not 0.0 <= initial_sparsity <= sparsity:
            raise CompressError(f"Pruning: need 0 <= initial_sparsity <= sparsity < 1, got "
                                f"{initial_sparsity} and {sparsity}")
        if schedule not in ("polynomial", "constant"):
            raise CompressError(f"Pruning: schedule '{schedule}' must be polynomial or constant")
        if method not in ("magnitude", "obd"):
            raise CompressError(f"Pruning: method '{method}' must be magnitude or obd")
        if method == "obd" and calibration is None:
            raise CompressError("Pruning: method 'obd' needs calibration=(x, y)")
        if damping < 0:
            raise CompressError(f"Pruning: damping must be >= 0, got {damping}")
        if frequency < 1:
            raise CompressError(f"Pruning: frequency must be >= 1, got {frequency}")
        if int(block) != block or block < 1:
            raise CompressError(f"Pruning: block must be an integer >= 1, got {block}")
        self.sparsity = float(sparsity)
        self.initial_sparsity = float(initial_sparsity)
        self.begin_step = int(begin_step)
        self.end_step = None if end_step is None else int(end_step)
        self.frequency = int(frequency)
        self.power = float(power)
        self.schedule = schedule
        self.method = method
        self.scope = scope
        self.layers = layers
        self.skip_first_last = bool(skip_first_last)
        self.calibration = calibration
        self.estimator = estimator
        self.release_on_end = bool(release_on_end)
        self.balance = bool(balance)
        self.damping = float(damping)
        self.block = int(block)
        self.step = 0
        self.current = 0.0
        self.updates = []  # (step, sparsity) of every mask update
        self._pairs = None

    def target_sparsity(self, step: int) -> float:
        """The scheduled sparsity at training step ``step``."""
        if step < self.begin_step:
            return 0.0
        if self.schedule == "constant":
            return self.sparsity
        end = self.end_step if self.end_step is not None else self.begin_step
        if end <= self.begin_step:
            return self.sparsity
        frac = min(1.0, (step - self.begin_step) / (end - self.begin_step))
        return self.sparsity + (self.initial_sparsity - self.sparsity) * (1 - frac) ** self.power

    def on_train_begin(self, logs=None):
        from compress.pruning import masks

        if self.end_step is None:
            steps = (self.params or {}).get("steps") or 1
            epochs = (self.params or {}).get("epochs") or 1
            self.end_step = self.begin_step + max(1, int(steps * epochs * 2 / 3))
        self._pairs = masks.prunable_weights(self.model, self.layers, self.skip_first_last)
        for _, var in self._pairs:
            old = masks.get_mask(var)
            masks.set_mask(var, old if old is not None else np.ones(tuple(var.shape)))
        # The train step was traced before the constraints existed: retrace it.
        self.model.make_train_function(force=True)

    def on_train_batch_begin(self, batch, logs=None):
        step = self.step
        self.step += 1
        on_grid = not (step - self.begin_step) % self.frequency
        if step < self.begin_step or not (on_grid or step == self.end_step):
            return
        target = self.target_sparsity(step)
        if target > self.current + 1e-12:
            self._update_masks(target)
            self.current = target
            self.updates.append((step, target))

    def _update_masks(self, target: float) -> None:
        from compress.pruning import masks
        from compress.pruning.prune_pass import saliency_scores

        variables = [v for _, v in self._pairs]
        scores = saliency_scores(self.model, variables, self.method, self.calibration,
                                 self.estimator, self.damping)
        scores = [np.where(masks.get_mask(v) > 0, s, -np.inf) for v, s in zip(variables, scores)]
        new = masks.select_masks(scores, target, self.scope, self.balance, self.block)
        for var, m in zip(variables, new):
            masks.set_mask(var, m)

    def on_train_end(self, logs=None):
        if self.release_on_end:
            from compress.pruning.masks import release_zeros

            release_zeros(self.model)

    def get_config(self):
        return {"sparsity": self.sparsity, "initial_sparsity": self.initial_sparsity,
                "begin_step": self.begin_step, "end_step": self.end_step,
                "frequency": self.frequency, "power": self.power, "schedule": self.schedule,
                "method": self.method, "scope": self.scope, "layers": self.layers,
                "skip_first_last": self.skip_first_last, "estimator": self.estimator,
                "release_on_end": self.release_on_end, "balance": self.balance,
                "damping": self.damping, "block": self.block}
