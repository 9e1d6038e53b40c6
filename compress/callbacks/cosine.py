"""Cosine learning rate with linear warmup, a floor and warm restarts (SGDR), set every step.

Example:

>>> from compress.callbacks import CosineSchedule                       # doctest: +SKIP
>>> cosine = CosineSchedule(peak_lr=3e-3, warmup_epochs=1, floor=1e-5)   # doctest: +SKIP
>>> model.fit(x, y, epochs=20, callbacks=[cosine])                      # doctest: +SKIP
"""

from __future__ import annotations

import weakref

import keras
import numpy as np

from compress.callbacks.console import print_msg
from compress.errors import CompressError

# The schedule driving each model's rate in a running fit (PlateauSchedule scales it), kept
# here rather than as an attribute on the Keras model.
_RUNNING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# optimizer -> (peak, rate it was left at) by the last CosineSchedule fit on it
_LEFT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def running_schedule(model):
    """The :class:`CosineSchedule` driving ``model``'s rate in a running fit, or None."""
    return _RUNNING.get(model)


class CosineSchedule(keras.callbacks.Callback):
    """Set the optimizer's learning rate every step: linear warmup, cosine decay, restarts.

    The curve is Keras's own ``CosineDecayRestarts`` (Loshchilov and Hutter's SGDR:
    periods that grow by ``period_mult``, peaks that shrink by ``restart_decay``), shifted
    after a linear warmup from ``warmup_start`` to the peak and lifted to an absolute
    ``floor``: ``lr = floor + (peak - floor) * shape(step)``. It is evaluated once for all
    steps of the run at ``on_train_begin``. On TensorFlow the compiled train step reads
    the table at the optimizer's own step counter for the length of the ``fit`` (the
    optimizer's float variable is put back, holding the last rate, at its end), so a step
    costs no Python work; elsewhere each batch costs one look-up and one variable
    assignment. Unlike a ``LearningRateSchedule`` passed to the optimizer, it works with a
    model compiled with a plain float learning rate,
    composes with other callbacks, and writes ``learning_rate`` into the epoch logs (so
    ``History``, ``CSVLogger`` and TensorBoard record it). A callback that sets the
    optimizer's rate itself (Keras's ``ReduceLROnPlateau`` or ``LearningRateScheduler``)
    cannot share the ``fit`` with it: Keras refuses to set a rate the schedule holds; use
    :class:`compress.callbacks.PlateauSchedule`, which scales the cosine instead. A fit
    stopped by an exception (Keras then skips ``on_train_end``) leaves the schedule in
    the optimizer until the next fit with a ``CosineSchedule`` takes it out.

    Plateau rule: a :class:`compress.callbacks.PlateauSchedule` in the same ``fit`` does
    not write the optimizer's rate; it multiplies this schedule's ``scale`` (the whole
    curve, peak and floor) by its factor, so the cosine keeps its shape at a lower level
    and the two never fight.

    Example:

    >>> model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")  # doctest: +SKIP
    >>> cosine = CosineSchedule(warmup_epochs=1, period_epochs=5, period_mult=2)   # doctest: +SKIP
    >>> model.fit(x, y, epochs=16, callbacks=[cosine])                             # doctest: +SKIP

    Args:
        peak_lr: float or None, default None. Peak rate; None uses the optimizer's rate at
            the start of training, except the rate an earlier ``CosineSchedule`` left at
            the end of its fit (its last, near the floor): then that schedule's peak again,
            so staged fits do not each start where the last one ended.
        warmup_epochs: float, default 0. Linear warmup length in epochs (fractions allowed).
        warmup_start: float, default 0. Rate at the first warmup step.
        period_epochs: float or None, default None. First cosine period in epochs; None
            means one period spanning the rest of training (no restart).
        period_mult: float, default 1. Each restart's period is this times the previous.
        restart_decay: float, default 1. Each restart's peak is this times the previous.
        floor: float, default 0. Lowest rate (absolute), reached at the end of each period.
        steps_per_epoch: int or None, default None. Needed only when ``fit`` cannot tell
            (a generator without length).
        verbose: int, default 0. 1 prints each restart through Keras's logging.
    """

    def __init__(self, peak_lr=None, warmup_epochs=0.0, warmup_start=0.0, period_epochs=None,
                 period_mult=1.0, restart_decay=1.0, floor=0.0, steps_per_epoch=None,
                 verbose=0):
        super().__init__()
        if warmup_epochs < 0 or (period_epochs is not None and period_epochs <= 0):
            raise CompressError("CosineSchedule: warmup_epochs must be >= 0 and period_epochs "
                                "> 0")
        if period_mult <= 0 or restart_decay <= 0 or floor < 0:
            raise CompressError("CosineSchedule: period_mult and restart_decay must be > 0, "
                                "floor >= 0")
        self.peak_lr = peak_lr
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_start = float(warmup_start)
        self.period_epochs = period_epochs
        self.period_mult = float(period_mult)
        self.restart_decay = float(restart_decay)
        self.floor = float(floor)
        self.steps_per_epoch = steps_per_epoch
        self.verbose = verbose
        self._graph = None
        self.scale = 1.0
        self.step = 0
        self.learning_rate = None
        self._table = None
        self._assign = None

    # -- the curve -----------------------------------------------------------------------
    def schedule(self, steps: np.ndarray, steps_per_epoch: int, total_steps: int,
                 peak: float) -> np.ndarray:
        """The rate at each of ``steps`` (unscaled), as a float64 array."""
        steps = np.asarray(steps, dtype=np.float64)
        warmup = round(self.warmup_epochs * steps_per_epoch)
        if self.period_epochs is None:
            period = max(1, total_steps - warmup)
        else:
            period = max(1, round(self.period_epochs * steps_per_epoch))
        if peak < self.floor:
            raise CompressError(f"CosineSchedule: peak_lr {peak} is below floor {self.floor}")
        shape = keras.optimizers.schedules.CosineDecayRestarts(
            1.0, period, t_mul=self.period_mult, m_mul=self.restart_decay, alpha=0.0)
        after = np.maximum(steps - warmup, 0.0)
        decayed = self.floor + (peak - self.floor) * np.asarray(
            keras.ops.convert_to_numpy(shape(after.astype("float32"))), dtype=np.float64)
        if warmup == 0:
            return decayed
        ramp = self.warmup_start + (peak - self.warmup_start) * steps / warmup
        return np.where(steps < warmup, ramp, decayed)

    # -- callback hooks ------------------------------------------------------------------
    @property
    def scale(self) -> float:
        """Multiplier of the whole curve (PlateauSchedule lowers it on a plateau)."""
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        self._scale = float(value)
        if getattr(self, "_graph", None) is not None:
            self._graph.scale.assign(self._scale)

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        stale = optimizer._learning_rate
        if isinstance(stale, _InGraphRate):  # an earlier fit with one stopped on an error
            stale.detach(float(keras.ops.convert_to_numpy(stale.variable)))
        if isinstance(optimizer._learning_rate,
                      keras.optimizers.schedules.LearningRateSchedule):
            raise CompressError("CosineSchedule: the optimizer was compiled with a "
                                "LearningRateSchedule; compile it with a float learning rate")
        spe = self.steps_per_epoch or (self.params or {}).get("steps")
        if not spe:
            raise CompressError("CosineSchedule: cannot tell the steps per epoch; pass "
                                "steps_per_epoch=")
        self._spe = int(spe)
        epochs = int((self.params or {}).get("epochs") or 1)
        peak = self.peak_lr
        if peak is None:
            peak = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
            left = _LEFT.get(optimizer)
            if left is not None and np.isclose(peak, left[1], rtol=1e-6, atol=0.0):
                peak = left[0]  # the rate our last fit ended at, not the user's
        self._peak = float(peak)
        total = epochs * self._spe
        self._table = self.schedule(np.arange(total + 1), self._spe, total, self._peak)
        self._graph = None
        self.scale = 1.0
        self.step = 0
        _RUNNING[self.model] = self  # found by PlateauSchedule (see class doc)
        self._restarts = set(self._restart_steps(total))
        self._graph = _InGraphRate.attach(self.model, self._table)

    def on_epoch_begin(self, epoch, logs=None):
        self.step = epoch * self._spe  # also right when fit starts at initial_epoch > 0
        if self._graph is not None:
            self._graph.start_at(self.step)
        else:
            self._assign = _rate_setter(self.model.optimizer)

    def on_train_batch_begin(self, batch, logs=None):
        # In-graph (TensorFlow): the optimizer reads the rate from the table at its own
        # step counter, so this hook only counts. Otherwise one assignment per step.
        # Nothing per step runs in on_train_batch_end, so Keras keeps dispatching batch-end
        # hooks asynchronously (no device sync every step).
        step = self.step
        self.step = step + 1
        if self._graph is None:
            value = self._rate_at(step)
            self._assign(value)
            self.learning_rate = value
        if self.verbose > 0 and step in self._restarts:
            print_msg(f"\nStep {step}: CosineSchedule warm restart at lr "
                               f"{self._rate_at(step):.3g}.")

    def _rate_at(self, step: int) -> float:
        return self.scale * (self._table[step] if step < len(self._table) else self._table[-1])

    def on_epoch_end(self, epoch, logs=None):
        if self.step > 0:
            self.learning_rate = self._rate_at(self.step - 1)
        if logs is not None and self.learning_rate is not None:
            logs["learning_rate"] = float(self.learning_rate)

    def on_train_end(self, logs=None):
        if self._graph is not None:
            last = self._rate_at(max(self.step - 1, 0))
            self._graph.detach(last)
            self._graph = None
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        _LEFT[self.model.optimizer] = (self._peak, rate)
        if _RUNNING.get(self.model) is self:
            del _RUNNING[self.model]

    def backup_state(self) -> dict:
        """The schedule's state for a backup: the scale a :class:`PlateauSchedule` set (the
        step follows from the epoch a resumed fit starts at, the rate from both).

        Example:

        >>> cosine.restore_state(cosine.backup_state())              # doctest: +SKIP
        """
        return {"scale": float(self.scale)}

    def restore_state(self, state: dict) -> None:
        """Put back a state from :meth:`backup_state` (after ``on_train_begin``)."""
        self.scale = float(state["scale"])

    def _restart_steps(self, total: int) -> list[int]:
        if self.period_epochs is None:
            return []
        warmup = round(self.warmup_epochs * self._spe)
        period = float(max(1, round(self.period_epochs * self._spe)))
        out, at = [], warmup + period
        while at < total:
            out.append(round(at))
            period *= self.period_mult
            at += period
        return out

    def get_config(self):
        return {"peak_lr": self.peak_lr, "warmup_epochs": self.warmup_epochs,
                "warmup_start": self.warmup_start, "period_epochs": self.period_epochs,
                "period_mult": self.period_mult, "restart_decay": self.restart_decay,
                "floor": self.floor, "steps_per_epoch": self.steps_per_epoch,
                "verbose": self.verbose}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _rate_setter(optimizer):
    """A cheap ``lr -> None`` that writes the optimizer's learning-rate variable.

    On TensorFlow, assigns the backing ``tf.Variable`` directly (read_value=False), skipping
    the Keras setter's checks and casts: one eager op per step. Elsewhere, and for wrapped
    optimizers (loss scaling), the public setter.
    """
    variable = getattr(optimizer, "_learning_rate", None)
    raw = getattr(variable, "_value", None)
    if keras.backend.backend() == "tensorflow" and hasattr(raw, "assign") and \
            not hasattr(optimizer, "inner_optimizer"):
        dtype = np.dtype(raw.dtype.as_numpy_dtype)

        def assign(value):
            raw.assign(dtype.type(value), read_value=False)

        return assign

    def set_rate(value):
        optimizer.learning_rate = value

    return set_rate


class _InGraphRate(keras.optimizers.schedules.LearningRateSchedule):
    """The cosine table read inside the compiled train step at the optimizer's own counter.

    Swapped in as the optimizer's rate for one ``fit`` (and swapped back at its end, with
    the train function re-traced both times), so a step costs a table look-up in the graph
    instead of a Python call and an eager assignment. While it is attached, the
    optimizer's config shows the current rate as a float, so a model checkpointed mid-fit
    (``ModelCheckpoint``) loads with plain Keras.
    """

    def __init__(self, table, offset, scale, variable):
        import tensorflow as tf

        self.table = tf.constant(np.asarray(table, dtype="float32"))
        self.last = max(len(table) - 2, 0)  # the row after the last step is not trained
        self.offset = offset
        self.scale = scale
        self.variable = variable

    @classmethod
    def attach(cls, model, table):
        """Swap the schedule in (TensorFlow, plain optimizer with a float rate), or None."""
        optimizer = model.optimizer
        variable = getattr(optimizer, "_learning_rate", None)
        if keras.backend.backend() != "tensorflow" or hasattr(optimizer, "inner_optimizer") \
                or not isinstance(variable, keras.Variable) or \
                getattr(optimizer, "gradient_accumulation_steps", None):
            return None
        import tensorflow as tf

        offset = tf.Variable(0, dtype=tf.int64, trainable=False)
        scale = tf.Variable(1.0, dtype=tf.float32, trainable=False)
        graph = cls(table, offset, scale, variable)
        optimizer._learning_rate = graph
        graph.model = model
        # A model saved mid-fit (ModelCheckpoint) must not carry this private class in its
        # optimizer config: while attached, the config shows the current rate as a float.
        class_get_config = type(optimizer).get_config

        def get_config():
            variable.assign(float(keras.ops.convert_to_numpy(graph(optimizer.iterations))))
            optimizer._learning_rate = variable
            try:
                return class_get_config(optimizer)
            finally:
                optimizer._learning_rate = graph

        optimizer.get_config = get_config
        model.make_train_function(force=True)  # re-trace: read the table, not the variable
        return graph

    def start_at(self, step: int) -> None:
        """Make the optimizer's current counter map to table row ``step``."""
        iterations = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.offset.assign(int(step) - iterations)

    def detach(self, last_rate: float) -> None:
        """Put the float variable back (holding the last rate used) and re-trace later."""
        optimizer = self.model.optimizer
        optimizer._learning_rate = self.variable
        optimizer.__dict__.pop("get_config", None)
        self.variable.assign(last_rate)
        self.model.train_function = None  # the next fit traces with the variable again

    def __call__(self, step):
        import tensorflow as tf

        row = tf.clip_by_value(tf.cast(step, tf.int64) + self.offset, 0, self.last)
        return self.scale * tf.gather(self.table, row)
