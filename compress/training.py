"""Training helpers shared by the passes: seeding, copying, compiling, fitting, scoring.

Every fit the toolkit runs goes through :func:`fit_model` (or its Dataset form
:func:`fit`), which applies the active
:class:`~compress.training_context.TrainingContext` (backups to resume from, where the
last good weights go on a NaN loss, the ``tf.distribute`` strategy) and Ctrl-C handling.

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

from compress.errors import CompressError, raise_if_interrupted
from compress.training_context import TrainingContext, backup_epoch, current_context


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow's ops deterministic."""
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # noqa: BLE001, S110 - already enabled, or not on this build
        pass


def check_finite(model, what: str = "model") -> None:
    """Refuse a model with a NaN or infinite weight, in one line naming the layer.

    Such a model gives NaN outputs whatever a pass does with it; every pass checks its
    input up front (:func:`copy_model` does, the passes that do not copy call this).

    Example:

    >>> check_finite(model)                                    # doctest: +SKIP

    Args:
        model: keras.Model.
        what: str, default ``"model"``. How the message names it (``"teacher"``).

    Raises:
        CompressError: ``model 'm': layer 'fc1' has 3 NaN or infinite weights in
            fc1/kernel; it cannot give finite outputs (retrain it or use an earlier file)``.
    """
    for layer, variable in _weights_by_layer(model):
        values = np.asarray(variable)
        if not np.issubdtype(values.dtype, np.floating):
            continue
        bad = values.size - int(np.count_nonzero(np.isfinite(values)))
        if bad:
            name = variable.name.split("/")[-1]
            raise CompressError(
                f"{what} '{model.name}': layer '{layer}' has {bad} NaN or infinite weight"
                f"{'s' if bad > 1 else ''} in {layer}/{name}; it cannot give finite outputs "
                "(retrain it or use an earlier file)")


def _weights_by_layer(model):
    """``(layer name, variable)`` for every weight of ``model``, nested models flattened."""
    seen = set()

    def walk(container):
        for layer in getattr(container, "layers", []):
            if getattr(layer, "layers", None) and layer is not container:
                yield from walk(layer)
                continue
            for variable in layer.weights:
                if id(variable) not in seen:
                    seen.add(id(variable))
                    yield layer.name, variable

    yield from walk(model)
    for variable in model.weights:  # weights of no layer (a subclassed model's own)
        if id(variable) not in seen:
            yield model.name, variable


def copy_model(model):
    """A new model with the same architecture and weights: passes never mutate their input.

    Refuses a model with NaN or infinite weights (:func:`check_finite`): passes copy their
    input first, so this is where a broken input is stopped, before any work.
    """
    check_finite(model)
    from compress.layers import register_layers

    register_layers()
    from compress import io

    unsafe = io.loaded_unsafely(model)
    scope = contextlib.nullcontext()
    if unsafe:  # loaded with --unsafe: its Lambda layers may be rebuilt for the copy too
        # Keras has no public form of this scope (load_model's safe_mode= is per call).
        from keras.src.saving.serialization_lib import SafeModeScope

        scope = SafeModeScope(False)
    try:
        with scope:
            clone = _clone(model)
    except ValueError as exc:
        if "TFSMLayer" in str(exc):
            raise CompressError(
                f"model '{model.name}' wraps a SavedModel, which can be inspected and exported "
                "but not edited; load the Keras model (.keras or .h5) it was saved from"
            ) from exc
        if "cannot be rebuilt from its config" in str(exc):
            raise CompressError(f"model '{model.name}': {exc}") from None
        raise
    if unsafe:
        io.mark_unsafe(clone)
    clone.set_weights(model.get_weights())
    from compress.layer_state import copy_assets

    copy_assets(model, clone)  # vocabularies, an adapted Normalization's statistics
    return clone


def _clone(model):
    """``keras.models.clone_model(model)``; when a layer of a functional model cannot be
    rebuilt from its own config (a released layer's ``get_config`` defect, as in KerasHub's
    Llama decoder), again with :func:`compress.layer_state.clone_layer`, which reads such a
    layer's constructor arguments back instead; when the clone holds other weights than
    the model (sharing lost), the model rebuilt from its own config."""
    try:
        clone = keras.models.clone_model(model)
    except Exception:
        from keras.src.models.functional import Functional

        if not isinstance(model, (Functional, keras.Sequential)):
            raise
        from compress.layer_state import clone_layer

        clone = keras.models.clone_model(model, clone_function=clone_layer)
    if len(clone.weights) != len(model.weights):
        # A layer shared between a nested model and the graph around it (a KerasHub
        # CausalLM's head reuses its backbone's token embedding) is cloned twice; the
        # model's own config rebuilds the sharing.
        try:
            config = keras.saving.serialize_keras_object(model)
            config.pop("compile_config", None)
            rebuilt = keras.saving.deserialize_keras_object(config)
        except Exception:  # noqa: BLE001 - no config of its own: set_weights says why
            return clone
        if len(rebuilt.weights) == len(model.weights):
            return rebuilt
    return clone


def outputs_probabilities(model) -> bool:
    """True when the model's last layer ends in a softmax (outputs probabilities)."""
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return True
    act = getattr(last, "activation", None)
    return act is not None and getattr(act, "__name__", "") == "softmax"


def make_optimizer(name: str = "adam", learning_rate: float = 1e-3, momentum: float = 0.9):
    """A fresh Keras optimizer by name: ``adam``, ``sgd`` (with ``momentum``) or
    ``rmsprop``; another name is one line."""
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    raise CompressError(f"optimizer '{name}': must be adam, sgd or rmsprop")


def compile_classifier(model, learning_rate: float = 1e-3, optimizer: str = "adam",
                       momentum: float = 0.9) -> None:
    """Compile ``model`` for integer-label classification (logits or probabilities)."""
    opt = make_optimizer(optimizer, learning_rate, momentum)
    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=not outputs_probabilities(model))
    model.compile(optimizer=opt, loss=loss, metrics=["accuracy"])


def fit(model, dataset, epochs: int = 1, batch_size: int = 64, callbacks=None,
        verbose: int | str = "auto", validation: bool = True):
    """``model.fit`` on the dataset's train split, validating on its val split.

    The :class:`compress.data.Dataset` form of :func:`fit_model`, so it obeys the active
    :class:`~compress.training_context.TrainingContext` the same way.

    Args:
        model: keras.Model, compiled.
        dataset: compress.data.Dataset prepared for the model.
        epochs: int, default 1.
        batch_size: int, default 64.
        callbacks: list of Keras callbacks or None, default None.
        verbose: Keras ``verbose``, default ``"auto"``.
        validation: bool, default True. Validate on the val split each epoch.
    """
    args = dataset.fit_args(batch_size, validation=validation)  # arrays, or streamed batches
    return fit_model(
        model, args["x"], args["y"], epochs=epochs, batch_size=args["batch_size"],
        validation_data=args["validation_data"],
        callbacks=callbacks, verbose=verbose, shuffle=args["batch_size"] is not None)


def fit_model(model, x, y=None, *, validation_data=None, epochs: int = 1,
              batch_size: int | None = None, callbacks=None, verbose: int | str = "auto",
              shuffle: bool = True, target=None,
              advice: str = "lower the learning rate or check the data"):
    """``model.fit`` under the active training context: every fit the toolkit runs.

    It adds, whatever the caller: a stop at the first NaN or infinite loss, raised as a
    one-line :class:`CompressError` with the model left at its last good weights (the
    end of its last finished epoch, or its starting weights, never NaN) and, in a context
    with ``keep_last_good``, those saved to that file; a Ctrl-C that a finaliser swallowed
    raised again at the next batch; and, in a context with ``checkpoint_dir``, an
    :class:`~compress.training_context.AtomicBackupAndRestore` backup in the next
    ``fitN`` sub-folder, so that running the same code again resumes it.

    Example:

    >>> fit_model(distiller, x, y, validation_data=(xv, yv), epochs=5,  # doctest: +SKIP
    ...           batch_size=64, target=distiller.student)

    Args:
        model: keras.Model, compiled (a ``keras.distillation.Distiller`` too).
        x: array, or a ``tf.data.Dataset`` (or generator) of ``(x, y)`` batches (then
            ``y`` and ``batch_size`` are None).
        y: array or None, default None.
        validation_data: ``(x_val, y_val)`` or None, default None.
        epochs: int, default 1.
        batch_size: int or None, default None (Keras's 32 for arrays).
        callbacks: list of Keras callbacks or None, default None.
        verbose: Keras ``verbose``, default ``"auto"``.
        shuffle: bool, default True. Shuffle arrays each epoch. The order of epoch ``e``
            is a function of ``e`` and of a seed drawn from NumPy's global generator
            when the fit starts (:func:`set_seed` fixes it), not of the epochs run
            before: a fit resumed at epoch ``e`` sees the orders an uninterrupted one
            would (:func:`epoch_shuffled`).
        target: keras.Model or None, default None. The model whose last good weights are
            kept (and saved), when it is not ``model`` itself (a distiller's student).
        advice: str. What the NaN error suggests, in its parentheses.

    Returns:
        The Keras ``History``.
    """
    context = current_context()
    nan_stop = StopOnNaN(target=target)
    cbs = list(callbacks or []) + [nan_stop, _StopOnCtrlC()]
    from compress import progress

    display = progress.epoch_callback(cbs) if progress.is_on() and verbose in (0, "0") \
        else None  # Keras's own bar is off: the fit is one phase of the progress display
    cbs += [display] if display is not None else []
    backup = context.next_backup_dir()
    if backup:
        # Last, so the backup holds the weights as every other callback left them (and
        # restores after their on_train_begin: a Pruning schedule's masks exist by then).
        cbs.append(context.backup_callback(backup, cbs))
        if not model.built:  # a Distiller is built by its first batch, too late to restore
            model(_first_inputs(x), training=False)
    kwargs = {} if batch_size is None else {"batch_size": batch_size}
    if shuffle and _sliceable(x, y):
        # Keras's own shuffle is not a function of the epoch (under set_seed it even
        # repeats one order every epoch): shuffle here, so that a resumed fit matches.
        seed = int(np.random.randint(2**31 - 1))
        x, steps = epoch_shuffled(x, y, batch_size or 32, epochs,
                                  start=backup_epoch(backup) if backup else 0, seed=seed)
        y, shuffle, kwargs = None, False, {"steps_per_epoch": steps}
    x, validation_data = text_tensors(x), text_tensors(validation_data)
    with progress.closing(display), progress.keras_output():
        history = model.fit(x, y, epochs=epochs, validation_data=validation_data,
                            callbacks=cbs, verbose=verbose, shuffle=shuffle, **kwargs)
    nan_stop.raise_if_stopped(advice, context)
    return history


def text_tensors(data):
    """``data`` (arrays, in any structure) with each NumPy array of strings made a
    TensorFlow string tensor: Keras's ``fit``, ``evaluate`` and ``predict`` refuse NumPy
    strings ("Invalid dtype: str2464") but take the tensors; anything else is returned
    as it is."""
    from compress.data.arrays import is_text

    if data is None or not any(is_text(a) for a in keras.tree.flatten(data)):
        return data
    import tensorflow as tf

    return keras.tree.map_structure(
        lambda a: tf.constant(a) if is_text(a) else a, data)


def _sliceable(x, y) -> bool:
    """True for NumPy inputs (an array, or a tuple/dict of them) of one length."""
    if isinstance(x, list) or isinstance(y, list):  # tf.data would stack a list
        return False
    arrays = keras.tree.flatten(x) + ([] if y is None else keras.tree.flatten(y))
    return bool(arrays) and all(isinstance(a, np.ndarray) and a.ndim >= 1 for a in arrays) \
        and len({len(a) for a in arrays}) == 1 and len(arrays[0]) > 0


def epoch_shuffled(x, y, batch_size: int, epochs: int, start: int = 0, seed: int = 0):
    """A ``tf.data.Dataset`` of the batches of epochs ``start`` to ``epochs - 1``, each
    epoch in its own order, and the number of batches per epoch.

    The order of epoch ``e`` is a stateless shuffle seeded by ``(seed, e)``: it does not
    depend on the epochs before it, so the batches of a fit resumed at ``start`` are those
    an uninterrupted fit sees from ``start`` on. Batches are cut as Keras cuts arrays
    (the last one smaller); float64 arrays become ``keras.config.floatx()``.

    Example:

    >>> data, steps = epoch_shuffled(x, y, 64, epochs=5, start=2, seed=7)  # doctest: +SKIP
    >>> model.fit(data, epochs=5, initial_epoch=2, steps_per_epoch=steps)  # doctest: +SKIP

    Args:
        x: array, or a tuple/dict of arrays, of one length ``n``.
        y: array or None.
        batch_size: int.
        epochs: int. The fit's epochs.
        start: int, default 0. The first epoch to give batches for.
        seed: int, default 0.

    Returns:
        ``(dataset, steps)``: ``dataset`` yields ``(x, y)`` batches (``x`` alone when
        ``y`` is None), ``steps`` is ``ceil(n / batch_size)``.
    """
    import tensorflow as tf

    def as_tensor(a):
        if a.dtype == np.float64:
            a = a.astype(keras.config.floatx())
        return tf.convert_to_tensor(a)

    data = keras.tree.map_structure(as_tensor, x if y is None else (x, y))
    n = len(keras.tree.flatten(x)[0])
    steps = -(-n // int(batch_size))

    def order(epoch):
        shuffled = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(shuffled).batch(int(batch_size))

    indices = tf.data.Dataset.range(int(start), int(epochs)).flat_map(order)
    batches = tf.data.Dataset.zip((indices, tf.data.Dataset.from_tensors(data).repeat()))
    batches = batches.map(
        lambda i, d: keras.tree.map_structure(lambda t: tf.gather(t, i, axis=0), d),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # Under --strategy multiworker each worker takes its share of every global batch
    # (DATA: the same batches as one process, split), never a share of the files.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return batches.prefetch(tf.data.AUTOTUNE).with_options(options), steps


def _first_inputs(x):
    """One sample of ``x`` (an array, or a re-iterable dataset of ``(x, y)`` batches)."""
    if hasattr(x, "shape"):
        return x[:1]
    if iter(x) is x:  # taking a batch from a one-shot generator would lose it for training
        raise CompressError("checkpointing a fit of an unbuilt model needs array or "
                            "tf.data.Dataset inputs, not a generator")
    batch = next(iter(x))
    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    return inputs[:1]


class _StopOnCtrlC(keras.callbacks.Callback):
    """Raise a Ctrl-C again at the next batch if a finaliser swallowed it (see errors)."""

    def on_train_batch_end(self, batch, logs=None):
        raise_if_interrupted()

    on_test_batch_end = on_train_batch_end


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first NaN/inf loss or weights; puts the last good weights back.

    The loss is checked after every batch, the weights after every epoch (a loss that
    clips NaN outputs can stay finite while the weights are not).

    The weights are copied when the first epoch begins (after a backup was restored, so a
    resumed fit keeps the restored weights) and at the end of every epoch that finished
    with a finite loss; after a NaN they are restored into ``target`` (default: the model
    being fit). :func:`fit_model` turns the stop into a :class:`CompressError`.

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
        self._weights = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._weights is None:  # the first epoch of this fit (later than 0 on resume)
            self._weights = self._kept().get_weights()
            self.last_good_epoch = epoch

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
        else:
            self.stopped = True
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped and self._weights is not None:
            self._kept().set_weights(self._weights)

    def raise_if_stopped(self, advice: str, context: TrainingContext | None = None) -> None:
        """Raise the one-line error for a NaN stop, saving the last good weights to the
        ``context``'s ``keep_last_good`` file (default: the active context's)."""
        if not self.stopped:
            return
        kept = ("the starting weights" if not self.last_good_epoch
                else f"the weights after epoch {self.last_good_epoch}")
        message = f"training stopped: the loss became NaN or infinite ({advice})"
        if not all(np.isfinite(w).all() for w in self._kept().get_weights()
                   if np.issubdtype(w.dtype, np.floating)):
            raise CompressError(f"training stopped: {kept} were already NaN or infinite; "
                                "nothing was saved")
        saved = (context or current_context()).save_last_good(self._kept())
        if saved:
            message += f"; {kept} were saved to {saved}"
        else:
            message += f"; the model keeps {kept}"
        raise CompressError(message)


def predict(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Model outputs for ``x`` in batches, as a NumPy array, without Keras's progress bar.

    ``x`` may be a dict or list of arrays (several inputs); a model with several outputs
    gives them in its own structure (a dict or list of arrays).
    """
    if isinstance(x, (dict, list, tuple)) or len(getattr(model, "outputs", None) or "1") > 1:
        return _predict_structure(model, x, batch_size)
    outs = []
    for start in range(0, len(x), batch_size):
        outs.append(np.asarray(model(x[start:start + batch_size], training=False)))
    return np.concatenate(outs) if outs else np.zeros((0,))


def _predict_structure(model, x, batch_size: int):
    """:func:`predict` for inputs given as a dict or list of arrays (several inputs)."""
    from keras import tree

    from compress.data.arrays import length

    n, outs = length(x), []
    for start in range(0, n, batch_size):
        batch = tree.map_structure(lambda a, s=start: np.asarray(a)[s:s + batch_size], x)
        if isinstance(batch, tuple):
            batch = list(batch)
        outs.append(tree.map_structure(np.asarray, model(batch, training=False)))
    if not outs:
        return np.zeros((0,))
    return tree.map_structure(lambda *parts: np.concatenate(parts), *outs)


def accuracy(model, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    if len(x) == 0:
        raise CompressError("cannot measure accuracy on empty data")
    outputs = predict(model, x, batch_size)
    # argmax of a NaN row is 0: it must not count as right for the class-0 samples; an
    # output of classes per position (pixels, tokens) is scored position by position
    finite = np.isfinite(outputs).all(axis=-1)
    labels = np.asarray(y).reshape(finite.shape)
    return float(np.mean((np.argmax(outputs, axis=-1) == labels) & finite))
