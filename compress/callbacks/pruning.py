"""Gradual magnitude (or OBD) pruning as a Keras callback for any ``model.fit``."""

from __future__ import annotations

import dataclasses
import sys

import keras
import numpy as np

from compress.errors import CompressError
from compress.options import Option, Schema
from compress.pruning.criteria import criterion, saliency_scores
from compress.pruning.masks import (
    get_mask,
    matmul_shape,
    prunable_weights,
    release_zeros,
    select_masks,
    select_viewed,
    set_mask,
)
from compress.pruning.obd import uses_layer_hessians
from compress.pruning.prune_options import DEFAULT_SPARSITY, PRUNE_OPTIONS


def _as_in_prune(name: str, **changes) -> Option:
    """The prune pass's option ``name`` (same meaning, same checks), with ``changes``."""
    return dataclasses.replace(PRUNE_OPTIONS.options[name], **changes)


#: The constructor arguments of :class:`Pruning` (all but ``calibration``, an array pair),
#: checked as every pass checks its options. Where an argument means what the prune
#: pass's option of that name means, it is that option.
PRUNING_CALLBACK_OPTIONS = Schema("Pruning", [
    _as_in_prune("sparsity", default=DEFAULT_SPARSITY,
                 help="final fraction of zero weights in each pruned layer"),
    Option("initial_sparsity", float, 0.0, "sparsity at begin_step (at most sparsity)",
           low=0.0, high=1.0, high_inclusive=False),
    Option("begin_step", int, 0, "training step (batch) where pruning starts", low=0),
    Option("end_step", int, None, "step where the final sparsity is reached (default: two "
           "thirds of the first fit's steps)", low=0),
    Option("steps_per_epoch", int, None, "batches per epoch, for a fit whose length Keras "
           "cannot tell (a tf.data pipeline of unknown cardinality) and no end_step", low=1),
    _as_in_prune("frequency", default=100),
    Option("power", float, 3.0, "exponent of the polynomial schedule", low=0.0,
           low_inclusive=False),
    Option("schedule", str, "polynomial", "polynomial (Zhu & Gupta) or constant",
           choices=("polynomial", "constant")),
    _as_in_prune("method"),
    _as_in_prune("scope", choices=("layer", "global"),
                 help="rank weights within each layer (same sparsity in each) or across all "
                      "layers (one threshold)"),
    _as_in_prune("layers"),
    _as_in_prune("skip_first_last"),
    _as_in_prune("estimator"),
    Option("release_on_end", bool, True, "remove the masks when training ends"),
    _as_in_prune("balance"),
    _as_in_prune("damping"),
    _as_in_prune("block"),
    _as_in_prune("seed", help="seed of OBD's random probes"),
])


class Pruning(keras.callbacks.Callback):
    """Prune weights during training, following a sparsity schedule.

    Saliencies come from :mod:`compress.pruning.criteria`, as in the prune pass and
    structured pruning. Sparsity rises from ``initial_sparsity`` to ``sparsity`` along Zhu & Gupta's
    polynomial ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** power``, updated
    every ``frequency`` steps (``schedule="constant"`` holds ``sparsity`` from
    ``begin_step``). At each update the lowest-saliency weights of each layer are masked.
    As in the prune pass, a multi-axis EinsumDense kernel (the ``(hidden, heads,
    head_dim)`` kernels of ``MultiHeadAttention``) is ranked as the ``(inputs, outputs)``
    matrix it is (:func:`compress.pruning.masks.matmul_shape`), so ``balance`` and
    ``block`` group its weights per output unit; and where the saliencies need layer
    Hessians (OBD with the ``layer`` estimator, which a model with several inputs or
    outputs always gets) a weight whose layer Hessian cannot be formed (an Embedding)
    stays dense and is named in ``left_out`` (``{weight: reason}``; empty when none), or
    is refused in one line when ``layers`` selected it.
    Masks are variable constraints applied inside the compiled train step after every
    optimizer update, so pruned weights stay exactly zero with any optimizer and no
    per-batch Python runs. Weights that another callback puts back (``EarlyStopping``'s
    ``restore_best_weights``, in either order in the callback list, during the fit or at
    its end) are masked again, so a restore cannot silently undo the pruning; ``restores``
    counts them. At the end of training the masks are removed (the zeros stay):
    the model is a plain Keras model that saves and loads without custom objects. Under a
    :class:`~compress.training_context.TrainingContext` with backups, the schedule's step
    and masks are saved with each backup (:meth:`backup_state`), so a resumed fit ends
    with the same mask updates as an uninterrupted one.

    Example:

    >>> from compress.callbacks import Pruning
    >>> model.fit(x, y, epochs=10, callbacks=[Pruning(sparsity=0.9)])  # doctest: +SKIP

    Args:
        sparsity: float, default 0.9. Final fraction of zero weights in each pruned layer.
        initial_sparsity: float, default 0.0. Sparsity at ``begin_step``.
        begin_step: int, default 0. Training step (batch) where pruning starts.
        end_step: int or None, default None. Step where the final sparsity is reached;
            None means two thirds of the first ``fit``'s steps (which Keras must know, or
            ``steps_per_epoch`` must give: a pipeline of unknown length is refused in one
            line, never turned into one-shot pruning).
        steps_per_epoch: int or None, default None. Batches per epoch, for that default
            ``end_step`` when the fit's length is unknown.
        frequency: int, default 100. Steps between mask updates. A polynomial ramp
            shorter than two of them (a short fit) is updated every eighth of the ramp
            instead, with a warning: one update at ``end_step`` would prune all at once.
        power: float, default 3. Exponent of the polynomial schedule.
        schedule: str, default ``"polynomial"``; or ``"constant"``.
        method: str, default ``"magnitude"``; or ``"obd"`` (needs ``calibration``).
        scope: str, default ``"layer"`` (same sparsity in each layer); or ``"global"``.
        layers: list of str or None, default None. Layers to prune: names, class names
            or regular expressions matching the whole name (a string is one entry; see
            :func:`compress.layers.select_layers`); None means every prunable layer.
        skip_first_last: bool, default False. Leave the first and last layers dense.
        calibration: tuple ``(x, y)``, inputs ``x`` alone (an array, or a dict of them
            for a model with several inputs: OBS and OBD need no labels), or None,
            default None. Data for OBD and OBS saliencies.
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
        seed: int, default 0. Seed of OBD's random Hessian probes.
        recalibrate_bn: array (or structure of arrays) or None, default None. Training
            inputs (a few hundred) on which every BatchNormalization layer's moving
            mean/variance is re-estimated when training ends, after the last mask update
            (:func:`compress.pruning.batchnorm.recalibrate_batchnorm`: exact averages, no
            weight update): with momentum 0.99 the statistics otherwise still describe
            the denser network of the last updates. A restore by a later callback
            (``EarlyStopping(restore_best_weights=True)``) puts back older statistics; they
            are re-estimated again. ``recalibrated`` holds ``{"layers", "samples"}``.

    Raises:
        CompressError: an argument out of range or of the wrong type, checked by
            :data:`PRUNING_CALLBACK_OPTIONS` like every pass option (for example
            ``Pruning.sparsity: must be in [0.0, 1.0), got 1.5``), or OBD without
            ``calibration``.
    """

    def __init__(self, sparsity=0.9, initial_sparsity=0.0, begin_step=0, end_step=None,
                 frequency=100, power=3.0, schedule="polynomial", method="magnitude",
                 scope="layer", layers=None, skip_first_last=False, calibration=None,
                 estimator="backprop", release_on_end=True, balance=False, damping=0.0,
                 block=1, seed=0, steps_per_epoch=None, recalibrate_bn=None):
        super().__init__()
        opts = PRUNING_CALLBACK_OPTIONS.validate({
            "sparsity": sparsity, "initial_sparsity": initial_sparsity,
            "begin_step": begin_step, "end_step": end_step, "frequency": frequency,
            "power": power, "schedule": schedule, "method": method, "scope": scope,
            "layers": layers, "skip_first_last": skip_first_last, "estimator": estimator,
            "release_on_end": release_on_end, "balance": balance, "damping": damping,
            "block": block, "seed": seed, "steps_per_epoch": steps_per_epoch})
        where = PRUNING_CALLBACK_OPTIONS.name
        if opts["initial_sparsity"] > opts["sparsity"]:
            raise CompressError(f"{where}.initial_sparsity: must be <= sparsity "
                                f"({opts['sparsity']}), got {opts['initial_sparsity']}")
        if criterion(opts["method"]).needs_data and calibration is None:
            raise CompressError(f"{where}.calibration: method '{opts['method']}' needs "
                                "calibration=(x, y)")
        for name, value in opts.items():
            setattr(self, name, value)
        self.calibration = _calibration_pair(calibration, where)
        self.recalibrate_bn = recalibrate_bn
        self.recalibrated = None  # {"layers", "samples"} once re-estimated
        self.step = 0
        self.current = 0.0
        self.updates = []  # (step, sparsity) of every mask update
        self.restores = 0  # weights put back by another callback, masked again
        self.left_out = {}  # {weight: reason}: no layer Hessian, left dense
        self._views = None
        self._pairs = None
        self._final_masks = None
        self._fit_frame = None
        self._restored = False  # restore_state ran for this fit
        self._first_epoch = True

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
        self._final_masks = None
        self._restored = False
        self._first_epoch = True
        if self.end_step is None:
            steps = (self.params or {}).get("steps") or self.steps_per_epoch
            if not steps and self.schedule == "polynomial":
                # Guessing would reach the final sparsity within a few batches: one-shot
                # pruning in disguise. Refuse in one line instead.
                raise CompressError(
                    "Pruning: this fit's number of steps per epoch is unknown (a tf.data "
                    "pipeline of unknown length?); give Pruning(end_step=N) or "
                    "Pruning(steps_per_epoch=N), or fit(..., steps_per_epoch=N)")
            epochs = (self.params or {}).get("epochs") or 1
            self.end_step = self.begin_step + max(1, int((steps or 1) * epochs * 2 / 3))
        ramp = self.end_step - self.begin_step
        if self.schedule == "polynomial" and ramp >= 8 and ramp < 2 * self.frequency:
            # One update at begin_step and one at end_step: the whole sparsity at once, a
            # one-shot prune called gradual (0% until step 100, then 89%). Updates every
            # eighth of the ramp instead, and said.
            import warnings

            asked, self.frequency = self.frequency, max(1, ramp // 8)
            warnings.warn(f"Pruning: the ramp from step {self.begin_step} to {self.end_step} "
                          f"is shorter than two updates at frequency {asked}; masks are "
                          f"updated every {self.frequency} steps instead (give a smaller "
                          "frequency, or more steps)", UserWarning, stacklevel=2)
        self._pairs = prunable_weights(self.model, self.layers, self.skip_first_last)
        self.left_out = {}
        if uses_layer_hessians(self.model, self.method, self.estimator):
            from compress.pruning.hessian import hessian_leave_out

            self._pairs, self.left_out = hessian_leave_out(
                self.model, self._pairs, bool(self.layers), f"Pruning(method={self.method!r})")
            if self.left_out:  # a user's own fit sees no report: say it here
                import warnings

                names = list(self.left_out)
                shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more"
                                                if len(names) > 3 else "")
                warnings.warn(f"Pruning(method={self.method!r}) leaves {shown} dense: no "
                              "layer Hessian (the reasons are in the callback's left_out); "
                              "method 'magnitude' prunes every prunable weight",
                              LeftDenseWarning, stacklevel=2)
        self._views = [matmul_shape(layer, var) for layer, var in self._pairs]
        for _, var in self._pairs:
            old = get_mask(var)
            set_mask(var, old if old is not None else np.ones(tuple(var.shape)))
        # The train step was traced before the constraints existed: retrace it.
        self.model.make_train_function(force=True)
        self._guard_restores(sys._getframe(2))  # the fit (above Keras's CallbackList)

    def _guard_restores(self, fit_frame) -> None:
        """Mask again any weights put back with ``model.set_weights`` while ``fit_frame``
        (the frame that runs this fit's callbacks) is running: that covers a restore by a
        callback before or after this one in the list, and nothing after the fit."""
        model = self.model
        model.__dict__.pop("set_weights", None)
        original = model.set_weights
        self._watch(fit_frame)

        def set_weights(weights, _pruning=self, _original=original):
            _original(weights)
            _pruning._after_restore()

        object.__setattr__(model, "set_weights", set_weights)

    def _watch(self, frame) -> None:
        # Not the frame itself: a finished frame would keep the fit's data alive.
        self._fit_frame = (id(frame), frame.f_code)

    def _after_restore(self) -> None:
        live = sys._getframe()
        while live is not None and (id(live), live.f_code) != self._fit_frame:
            live = live.f_back
        if live is None:  # the fit is over: a later set_weights is the user's own
            self.model.__dict__.pop("set_weights", None)
            self._fit_frame = None
            return
        self.restores += 1
        masks = self._final_masks or [get_mask(var) for _, var in self._pairs or []]
        cut = sum(int(np.count_nonzero(np.asarray(var)[np.asarray(mask) == 0]))
                  for (_, var), mask in zip(self._pairs or [], masks) if mask is not None)
        if cut:  # the restored weights were denser: masked, they are a model not evaluated
            import warnings

            warnings.warn(f"Pruning: weights put back during the fit (EarlyStopping's best "
                          f"epoch?) were denser than the masks now; {cut:,} of them are "
                          f"zeroed to keep {self.current:.1%} sparsity, so the model returned "
                          "is not the one that was evaluated: evaluate it, or fine-tune it "
                          "with the masks", RemaskedWarning, stacklevel=2)
        self._apply_masks()
        if self._final_masks is not None:  # after on_train_end: older statistics came back
            self._recalibrate()

    def _recalibrate(self) -> None:
        if self.recalibrate_bn is None:
            return
        from compress.pruning.batchnorm import recalibrate_batchnorm

        self.recalibrated = recalibrate_batchnorm(self.model, self.recalibrate_bn)

    def _apply_masks(self) -> None:
        """Zero the masked weights now (the optimizer applies the masks only on updates)."""
        masks = self._final_masks or [get_mask(var) for _, var in self._pairs or []]
        for (_, var), mask in zip(self._pairs or [], masks):
            if mask is not None:
                var.assign(np.asarray(var) * np.asarray(mask, dtype=np.asarray(var).dtype))

    def on_epoch_begin(self, epoch, logs=None):
        if not self._first_epoch:
            return
        self._first_epoch = False
        if epoch == 0 or self._restored:
            return
        # The fit starts at a later epoch without this callback's saved state: Keras's
        # own BackupAndRestore put back the weights of an interrupted run (or the user
        # passed initial_epoch). Its zeros are the masks so far, and the schedule carries
        # on at this epoch's step: starting it again at step 0 with no masks let every
        # pruned weight grow back (0.9 asked, 0.11 reached).
        steps = (self.params or {}).get("steps") or self.steps_per_epoch
        if not steps:
            return
        self.step = max(self.step, epoch * steps, self.begin_step)
        zeros = []
        for _, var in self._pairs or []:
            kept = np.asarray(var) != 0
            set_mask(var, kept)
            zeros.append(1.0 - float(kept.mean()))
        self.current = min(zeros) if zeros else 0.0

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
        variables = [v for _, v in self._pairs]
        scores = saliency_scores(self.model, variables, self.method, self.calibration,
                                 self.estimator, self.damping, self.seed)
        scores = [np.where(get_mask(v) > 0, s, -np.inf) for v, s in zip(variables, scores)]
        new = select_viewed(scores, self._views, lambda flat: select_masks(
            flat, target, self.scope, self.balance, self.block))
        for var, m in zip(variables, new):
            set_mask(var, m)

    def on_train_end(self, logs=None):
        if self.current < self.sparsity - 1e-9:  # an early stop before the schedule ended
            import warnings

            warnings.warn(
                f"Pruning: the fit ended at step {self.step}, before the schedule reached "
                f"sparsity {self.sparsity:g} (at step {self.end_step}): the model is at "
                f"{self.current:.3g}. With EarlyStopping, give Pruning an end_step that the "
                "fit reaches first, or fit again with a Pruning callback to finish",
                UnderPrunedWarning, stacklevel=2)
        # A callback before this one may have put back weights of an epoch with fewer
        # zeros; those after it are caught by the guard (_guard_restores).
        self._apply_masks()
        self._final_masks = [get_mask(var) for _, var in self._pairs or []]
        if self.release_on_end:
            release_zeros(self.model)
        self._recalibrate()
        # From here only the callbacks after this one can restore: while Keras's
        # on_train_end dispatch (the caller) runs.
        self._watch(sys._getframe(1))

    def backup_state(self) -> dict:
        """The schedule's state (step, sparsity reached, updates, masks) for a backup.

        :class:`~compress.training_context.AtomicBackupAndRestore` saves it with the
        weights each epoch and calls :meth:`restore_state` on resume, so a resumed fit
        carries on at its step with its masks (it would otherwise start the schedule again
        over fewer steps and stop under-pruned).
        """
        state = {"step": self.step, "current": self.current, "end_step": self.end_step,
                 "updates": [[int(step), float(s)] for step, s in self.updates]}
        for j, (_, var) in enumerate(self._pairs or []):
            state[f"mask{j}"] = get_mask(var)
        return state

    def restore_state(self, state: dict) -> None:
        """Put back a state from :meth:`backup_state` (after ``on_train_begin``)."""
        self.step = int(state["step"])
        self.current = float(state["current"])
        self.end_step = None if state["end_step"] is None else int(state["end_step"])
        self.updates = [(int(step), float(s)) for step, s in state["updates"]]
        for j, (_, var) in enumerate(self._pairs or []):
            set_mask(var, state[f"mask{j}"])
        self._restored = True

    def get_config(self):
        return {name: getattr(self, name) for name in PRUNING_CALLBACK_OPTIONS.names()}


class UnderPrunedWarning(UserWarning):
    """:class:`Pruning`'s fit ended (an early stop) before its schedule reached the
    sparsity asked for."""


class RemaskedWarning(UserWarning):
    """:class:`Pruning` masked weights another callback put back (EarlyStopping's best
    epoch) that were denser: the model returned was not evaluated in that form."""


class LeftDenseWarning(UserWarning):
    """:class:`Pruning` left weights dense for want of a layer Hessian (``left_out``)."""


def _calibration_pair(calibration, where: str):
    """``calibration`` as the ``(x, y)`` pair the saliencies read: inputs alone (an
    array, a tensor or a dict of them) become ``(x, None)``; anything else is refused in
    one line (a bare array was read as a pair, its first sample taken for ``x``)."""
    if calibration is None or (isinstance(calibration, (tuple, list))
                               and len(calibration) == 2):
        return None if calibration is None else tuple(calibration)
    if isinstance(calibration, dict) or hasattr(calibration, "shape"):
        return calibration, None
    raise CompressError(f"{where}.calibration: give inputs x (an array) or a pair (x, y), "
                        f"got {type(calibration).__name__}")

