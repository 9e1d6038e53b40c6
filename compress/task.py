"""The model's own task: what it is trained on, how its fine-tuning is compiled, how it is scored.

Every pass that fine-tunes compiles its new model with one :class:`Task`, and every report
scores models with the same one, so that a regressor is fine-tuned on its own loss and
reported as MSE, never as a classifier's accuracy. :func:`resolve` finds it, first match
wins:

1. ``loss`` / ``metrics`` given by the user (``--loss mse --metrics mae,mape``, a recipe
   step's ``loss:``, ``compress.prune(..., loss="mse")``): Keras names;
2. the loss and metrics the model was compiled with (:func:`compress.io.load_model`
   loads a model compiled when its file carries a loss);
3. inferred from the output layer: softmax, or a linear multi-unit output with integer
   labels, is a multi-class classifier (logits without softmax); sigmoid is binary (one
   unit) or multi-label; any other one-unit output, or a multi-unit one whose targets are
   real numbers, is a regression (mean squared error).

Example:

>>> import keras
>>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
>>> task = resolve(model)
>>> task.kind, task.loss_name, task.source
('regression', 'mean_squared_error', 'inferred')
>>> task.describe()
'regression, loss mean_squared_error, metrics mae (inferred from the one-unit linear output)'
>>> resolve(model, loss="huber").loss_name
'huber'
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from compress.errors import CompressError
from compress.options import Option

#: Keras loss names ``--loss`` accepts (checked before anything is loaded).
LOSSES = ("mean_squared_error", "mse", "mean_absolute_error", "mae",
          "mean_absolute_percentage_error", "mape", "mean_squared_logarithmic_error", "msle",
          "huber", "log_cosh", "binary_crossentropy", "binary_focal_crossentropy",
          "categorical_crossentropy", "categorical_focal_crossentropy",
          "sparse_categorical_crossentropy", "kl_divergence", "poisson", "hinge",
          "squared_hinge", "categorical_hinge", "cosine_similarity")

#: The options every pass that fine-tunes takes (CLI flags, recipe keys, keywords).
TASK_OPTIONS = [
    Option("loss", str, None, "fine-tuning loss, a Keras name (default: the model's own "
           "loss, else inferred from its output: softmax/logits cross-entropy, sigmoid "
           "binary cross-entropy, linear mean squared error)", choices=LOSSES,
           cli_choice=False),
    Option("metrics", list, None, "metrics reported while fine-tuning, Keras names, "
           "comma-separated (default: the model's own, else accuracy for classifiers, "
           "mae for regression)"),
]

CLASSIFICATION, BINARY, MULTILABEL, REGRESSION = ("classification", "binary", "multilabel",
                                                  "regression")
_SHORT = {"mse": "mean_squared_error", "mae": "mean_absolute_error",
          "mape": "mean_absolute_percentage_error", "msle": "mean_squared_logarithmic_error",
          "kld": "kl_divergence", "kullback_leibler_divergence": "kl_divergence",
          "logcosh": "log_cosh", "huber_loss": "huber"}
_CLASSIFY = ("sparse_categorical_crossentropy", "categorical_crossentropy",
             "categorical_focal_crossentropy", "categorical_hinge", "kl_divergence")
_BINARY = ("binary_crossentropy", "binary_focal_crossentropy", "hinge", "squared_hinge")
_REGRESS = ("mean_squared_error", "mean_absolute_error", "mean_absolute_percentage_error",
            "mean_squared_logarithmic_error", "huber", "log_cosh", "poisson",
            "cosine_similarity")
# Metric names :meth:`Task.score` reports itself (accuracy, MSE, MAE).
_SCORED = ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy",
           "binary_accuracy", "mae", "mean_absolute_error", "mse", "mean_squared_error")
_DEFAULT_METRICS = {CLASSIFICATION: ["accuracy"], BINARY: ["binary_accuracy"],
                    MULTILABEL: ["binary_accuracy"], REGRESSION: ["mae"]}


@dataclasses.dataclass(frozen=True)
class Task:
    """What a model is trained on, and how it is scored.

    Args:
        kind: str. ``"classification"`` (one class per sample, argmax is the answer),
            ``"binary"``, ``"multilabel"`` or ``"regression"``.
        loss: a Keras loss (a name, a function or a ``keras.losses.Loss``).
        metrics: list. Keras metrics (names or objects).
        source: str. ``"options"``, ``"model"`` (compiled with it) or ``"inferred"``.
        from_logits: bool. The output is logits (no softmax or sigmoid).
        reason: str. Why this task, in words (for the report's one line).
        units: int. The output's last dimension (classes, labels or values).
    """

    kind: str
    loss: Any
    metrics: list
    source: str
    from_logits: bool = False
    reason: str = ""
    units: int = 1

    @property
    def is_classifier(self) -> bool:
        """True when argmax of the output is the answer (top-1 accuracy means something)."""
        return self.kind == CLASSIFICATION

    @property
    def has_accuracy(self) -> bool:
        """True for every kind whose accuracy means something (all but regression)."""
        return self.kind != REGRESSION

    @property
    def loss_name(self) -> str:
        return loss_name(self.loss)

    def describe(self) -> str:
        """One line: the kind, the loss, the metrics and where they came from."""
        metrics = ", ".join(_metric_name(m) for m in self.metrics) or "none"
        why = {"options": "given", "model": "the model's own"}.get(self.source, "inferred")
        if self.reason:
            why = f"{why} from {self.reason}" if self.source == "inferred" else self.reason
        logits = " from logits" if self.from_logits and self.kind != REGRESSION else ""
        return f"{self.kind}, loss {self.loss_name}{logits}, metrics {metrics} ({why})"

    def compile(self, model, learning_rate: float = 1e-3, optimizer: str = "adam",
                momentum: float = 0.9) -> None:
        """Compile ``model`` for fine-tuning on this task.

        Example:

        >>> resolve(model).compile(model, learning_rate=5e-4)     # doctest: +SKIP

        Args:
            model: keras.Model.
            learning_rate: float, default 1e-3.
            optimizer: str, default ``"adam"``; or ``"sgd"`` (with ``momentum``),
                ``"rmsprop"``.
            momentum: float, default 0.9. SGD's momentum.
        """
        from compress.training import make_optimizer

        model.compile(optimizer=make_optimizer(optimizer, learning_rate, momentum),
                      loss=_fresh(self.loss), metrics=list(self.metrics))

    def evaluate(self, model, x, y) -> dict:
        """The task's scores of ``model`` on ``(x, y)``: ``accuracy`` where it means
        something, ``mse`` and ``mae`` for a regression.

        Example:

        >>> resolve(model).evaluate(model, x_test, y_test)           # doctest: +SKIP
        {'mse': 0.57, 'mae': 0.61}
        """
        from compress.training import predict

        if len(x) == 0:
            raise CompressError("cannot score a model on empty data")
        outputs = predict(model, x)
        scores = self.score(outputs, y)
        own = self.own_metrics(outputs, y)
        if own:
            scores["metrics"] = own
        return scores

    def score(self, outputs, y) -> dict:
        """:meth:`evaluate` on outputs already computed (an artifact's, in its runtime).

        >>> import keras
        >>> reg = resolve(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
        >>> reg.score(np.array([[1.0], [3.0]]), np.array([1.0, 2.0]))
        {'mse': 0.5, 'mae': 0.5}
        """
        out = np.asarray(outputs, np.float64)
        if len(out) == 0:
            raise CompressError("cannot score a model on empty data")
        rows = out.reshape(len(out), -1)
        finite = np.isfinite(rows).all(axis=1)
        if self.kind == CLASSIFICATION:
            y = np.asarray(y)
            labels = np.argmax(y, -1) if y.ndim == out.ndim and y.shape == out.shape else y
            labels = labels.reshape(np.argmax(out, -1).shape)
            # argmax of a NaN row is 0: it must not count as right for the class-0 samples;
            # classes at every position (a segmenter's pixels, a tagger's tokens) are
            # counted position by position, as Keras's accuracy metrics do
            right = (np.argmax(out, -1) == labels) & np.isfinite(out).all(axis=-1)
            return {"accuracy": float(np.mean(right))}
        y = np.asarray(y, np.float64).reshape(out.shape)
        if self.kind == REGRESSION:
            if not finite.all():
                return {"mse": float("inf"), "mae": float("inf")}
            err = out - y
            return {"mse": float(np.mean(err ** 2)), "mae": float(np.mean(np.abs(err)))}
        # binary and multi-label: each output value right or not, as Keras's binary_accuracy
        # (a binary segmenter's pixels; a sample counted only when all were right read 0%)
        threshold = 0.0 if self.from_logits else 0.5
        right = ((out > threshold) == (y > 0.5)) & np.isfinite(out)
        return {"accuracy": float(np.mean(right))}

    def evaluate_data(self, model, data, split: str = "test", batch_size: int = 256,
                      predict=None) -> dict:
        """:meth:`evaluate` on a whole split of ``data``, read batch by batch: a stream is
        never held in memory (the scores are accumulated; the model's own metrics are
        Keras metrics updated batch after batch).

        Example:

        >>> resolve(model).evaluate_data(model, stream, "test")     # doctest: +SKIP
        {'mse': 0.57, 'mae': 0.61}

        Args:
            model: keras.Model (or None with ``predict``).
            data: a :class:`compress.data.Dataset` or streamed one, labelled.
            split: str, default ``"test"``.
            batch_size: int, default 256 (a batched pipeline keeps its own batches).
            predict: callable ``x -> outputs`` or None, default None (``model`` in
                inference mode): an artifact's runtime, for example.
        """
        from compress.data.streaming import iter_batches
        from compress.training import predict as keras_predict

        run = predict or (lambda x: keras_predict(model, x))
        return self.score_batches((np.asarray(run(x)), y)
                                  for x, y in iter_batches(data, split, batch_size))

    def score_batches(self, pairs) -> dict:
        """:meth:`score` and :meth:`own_metrics` accumulated over ``(outputs, y)`` batches
        (an iterable: nothing but one batch is held).

        >>> import keras
        >>> reg = resolve(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
        >>> reg.score_batches([(np.array([[1.0]]), np.array([1.0])),
        ...                    (np.array([[3.0]]), np.array([2.0]))])
        {'mse': 0.5, 'mae': 0.5}
        """
        scores = _Scores(self)
        for outputs, y in pairs:
            scores.add(outputs, y)
        return scores.result()

    def fidelity_loss(self):
        """``(loss, targets)`` of label-free training to reproduce a model: ``targets``
        turns the original's outputs into the training targets. KL divergence of the
        class distributions for a classifier (softmax output; on logits the
        cross-entropy to the original's softmax, which differs from it by a constant),
        mean squared error between the outputs otherwise.

        >>> import keras
        >>> reg = resolve(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
        >>> reg.fidelity_loss()[0]
        'mean_squared_error'
        """
        import keras

        if self.kind == CLASSIFICATION and self.from_logits:
            import tensorflow as tf

            return (keras.losses.CategoricalCrossentropy(from_logits=True),
                    lambda out: tf.nn.softmax(tf.cast(out, "float32")))
        if self.kind == CLASSIFICATION:
            return keras.losses.KLDivergence(), lambda out: out
        return "mean_squared_error", lambda out: out

    def own_metrics(self, outputs, y) -> dict:
        """The task's other metrics (``auc``, ``mape``, the model's own...) on outputs,
        by name; those :meth:`score` already gives, and any Keras cannot compute on
        these outputs, are left out.

        >>> import keras
        >>> reg = resolve(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]),
        ...               metrics=["mae", "mape"])
        >>> reg.own_metrics(np.array([[1.0], [3.0]]), np.array([2.0, 2.0]))
        {'mape': 50.0}
        """
        import keras

        out, scores = np.asarray(outputs, np.float32), {}
        y = np.asarray(y)
        if self.kind != CLASSIFICATION:
            y = y.astype(np.float32).reshape(out.shape)
        for metric in self.metrics:
            name = _metric_name(metric)
            if name in _SCORED:
                continue
            try:
                fn = _fresh_metric(metric)
                if isinstance(fn, keras.metrics.Metric):
                    fn.update_state(y, out)
                    value = float(np.asarray(fn.result()))
                else:
                    value = float(np.mean(np.asarray(fn(y, out))))
            except Exception:  # noqa: BLE001, S112 - not computable on these outputs
                continue
            scores[name] = value
        return scores


    def fit_to_teacher(self, student, teacher, data, *, epochs: int,
                       learning_rate: float = 1e-3, batch_size: int = 64,
                       verbose: int | str = 0, callbacks=None, temperature: float = 1.0):
        """Label-free fine-tuning: train ``student`` in place to reproduce ``teacher``'s
        outputs on ``data``'s inputs (its targets, if any, are not used).

        The loss is the task's fidelity: KL divergence between the softened class
        distributions for a classifier (on logits, ``keras.distillation``'s
        ``LogitsDistillation``; on the probabilities themselves for a softmax output),
        mean squared error between the outputs otherwise. Masks and other variable
        constraints of ``student`` hold (the optimizer applies them).

        Example:

        >>> task.fit_to_teacher(pruned, original, unlabelled, epochs=3)  # doctest: +SKIP

        Args:
            student: keras.Model, trained in place.
            teacher: keras.Model, never modified (a copy is frozen inside).
            data: a :class:`compress.data.Dataset` (or streamed one), labelled or not.
            epochs: int. learning_rate: float, default 1e-3 (Adam). batch_size: int,
            default 64. verbose: Keras ``verbose``. callbacks: list or None.
            temperature: float, default 1.0. Softmax temperature of the KL term.

        Returns:
            The Keras ``History``.
        """
        import keras

        from compress import training

        if self.kind == CLASSIFICATION and self.from_logits:
            term = keras.distillation.LogitsDistillation(temperature=temperature,
                                                         loss=keras.losses.KLDivergence())
        elif self.kind == CLASSIFICATION:
            term = keras.distillation.FeatureDistillation(loss=keras.losses.KLDivergence())
        else:
            term = keras.distillation.FeatureDistillation(loss="mse")
        frozen = training.copy_model(teacher)
        try:
            distiller = keras.distillation.Distiller(
                teacher=frozen, student=student, distillation_losses=[term],
                student_loss_weight=0.0, name="fidelity")
        except ValueError as exc:
            raise CompressError(f"label-free fine-tuning: {' '.join(str(exc).split())}"
                                ) from exc
        # Keras wants the student's own loss; with weight 0 and no labels it is not used.
        distiller.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=_fresh(self.loss))
        if hasattr(data, "fit_args"):
            args = data.fit_args(batch_size)
        else:
            args = {"x": data.x_train, "batch_size": batch_size, "validation_data": data.x_val}
        validation = args.get("validation_data")
        if isinstance(validation, tuple):  # the labels play no part: inputs only
            validation = validation[0]
        return training.fit_model(
            distiller, args["x"], None, batch_size=args.get("batch_size"),
            validation_data=validation, epochs=epochs, callbacks=callbacks,
            verbose=verbose, shuffle=args.get("batch_size") is not None, target=student,
            advice="lower the learning rate")


class _Scores:
    """:meth:`Task.score` and :meth:`Task.own_metrics` accumulated over batches."""

    def __init__(self, task: Task):
        self.task, self.n, self.sums, self.metrics, self.means = task, 0, {}, {}, {}
        for metric in task.metrics:
            name = _metric_name(metric)
            if name in _SCORED:
                continue
            try:
                fn = _fresh_metric(metric)
            except Exception:  # noqa: BLE001, S112 - not a metric Keras can build
                continue
            self.metrics[name] = fn

    def add(self, outputs, y) -> None:
        import keras

        out = np.asarray(outputs)
        n = len(out)
        if n == 0:
            return
        elements = max(int(np.size(out)), 1) if self.task.kind == REGRESSION else n
        for key, value in self.task.score(out, y).items():
            self.sums[key] = self.sums.get(key, 0.0) + value * elements
        yt = np.asarray(y)
        if self.task.kind != CLASSIFICATION:
            yt = yt.astype(np.float32).reshape(out.shape)
        for name, fn in list(self.metrics.items()):
            try:
                if isinstance(fn, keras.metrics.Metric):
                    fn.update_state(yt, out.astype(np.float32))
                else:
                    value = float(np.mean(np.asarray(fn(yt, out.astype(np.float32)))))
                    self.means[name] = self.means.get(name, 0.0) + value * n
            except Exception:  # noqa: BLE001 - not computable on these outputs
                del self.metrics[name]
                self.means.pop(name, None)
        self.n += n
        self.elements = getattr(self, "elements", 0) + elements

    def result(self) -> dict:
        import keras

        if self.n == 0:
            raise CompressError("cannot score a model on empty data")
        scores = {k: v / self.elements for k, v in self.sums.items()}
        own = {}
        for name, fn in self.metrics.items():
            if isinstance(fn, keras.metrics.Metric):
                own[name] = float(np.asarray(fn.result()))
            elif name in self.means:
                own[name] = self.means[name] / self.n
        if own:
            scores["metrics"] = own
        return scores


def _fresh_metric(metric):
    """A Keras metric by name or object, with fresh state; a plain function as it is."""
    import keras

    fn = keras.metrics.get(metric) if isinstance(metric, str) else metric
    if isinstance(fn, type):
        fn = fn()
    if isinstance(fn, keras.metrics.Metric):
        fn = type(fn).from_config(fn.get_config())  # fresh state
    return fn


def loss_name(loss) -> str:
    """The snake-case name of a Keras loss given as a name, a function or an object.

    >>> loss_name("mse"), loss_name("huber")
    ('mean_squared_error', 'huber')
    """
    if isinstance(loss, str):
        name = loss
    else:
        name = getattr(loss, "name", None) or getattr(loss, "__name__", None) or \
            type(loss).__name__
    name = _snake(str(name))
    return _SHORT.get(name, name)


def _metric_name(metric) -> str:
    if isinstance(metric, str):
        return metric
    return getattr(metric, "name", None) or getattr(metric, "__name__", type(metric).__name__)


def _snake(name: str) -> str:
    if name.islower() or "_" in name:
        return name
    out = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return out.replace("k_l_", "kl_")


def per_sample_loss(loss):
    """A callable ``(y_true, y_pred) -> per-sample losses`` (no reduction over the batch)
    for a Keras loss name, function or ``keras.losses.Loss`` object.

    >>> import numpy as np
    >>> per_sample_loss("mse")(np.array([[1.0], [2.0]]), np.array([[1.0], [4.0]])).numpy()
    array([0., 4.])
    """
    import keras

    if isinstance(loss, keras.losses.Loss):
        return loss.call
    return keras.losses.get(loss) if isinstance(loss, str) else loss


def _fresh(loss):
    """A loss object for a new compile (a ``keras.losses.Loss`` instance is rebuilt from
    its config, so two models never share one)."""
    import keras

    if isinstance(loss, keras.losses.Loss):
        try:
            return type(loss).from_config(loss.get_config())
        except Exception:  # noqa: BLE001 - a custom loss without a config: share it
            return loss
    return loss


def output_activation(model) -> str:
    """The name of the activation that ends the model (``"linear"`` when none)."""
    import keras

    last = model.layers[-1] if getattr(model, "layers", None) else None
    while last is not None and isinstance(last, (keras.layers.Dropout, keras.layers.Reshape,
                                                 keras.layers.Flatten)):
        index = model.layers.index(last)
        last = model.layers[index - 1] if index > 0 else None
    if isinstance(last, keras.layers.Softmax):
        return "softmax"
    if isinstance(last, keras.layers.Activation):
        act = last.activation
    else:
        act = getattr(last, "activation", None)
    name = getattr(act, "__name__", None) or "linear"
    return str(name)


def _units(model) -> int:
    shape = tuple(model.outputs[0].shape) if getattr(model, "outputs", None) else ()
    return int(shape[-1]) if shape and shape[-1] is not None else 1


def _integer_labels(y, units: int) -> bool:
    y = np.asarray(y)
    if y.size == 0:
        return True
    if y.ndim > 1 and int(np.prod(y.shape[1:])) != 1:
        return False
    if np.issubdtype(y.dtype, np.integer):
        return True
    return bool(np.all(np.isfinite(y)) and np.all(y == np.round(y)) and y.min() >= 0
                and y.max() < max(units, 2))


def _kind_of_loss(name: str, units: int, inferred: str) -> str:
    """The kind a loss trains for; ``inferred`` (from the output) for a loss it does not
    know (a custom one)."""
    if name in _CLASSIFY:
        return CLASSIFICATION
    if name in _BINARY:
        return BINARY if units == 1 else MULTILABEL
    return REGRESSION if name in _REGRESS else inferred


def resolve(model, loss: str | None = None, metrics: list | None = None, y=None) -> Task:
    """The task ``model`` is fine-tuned and scored on (see the module docstring).

    Args:
        model: keras.Model (compiled or not).
        loss: str or None, default None. A Keras loss name that overrides the model's.
        metrics: list of str or None, default None. Keras metric names.
        y: array or None, default None. Targets: they tell a logits classifier from a
            multi-output regression, and are checked against the task.

    Raises:
        CompressError: an unknown loss or metric name; targets the task cannot take
            (real-valued or negative targets given to a classifier).
    """
    import keras

    if len(getattr(model, "outputs", None) or ()) > 1:  # one Task per output
        return resolve_outputs(model, loss, metrics, y)
    units = _units(model)
    activation = output_activation(model)
    probabilities = activation in ("softmax", "sigmoid")
    if metrics is not None:
        for name in metrics:
            try:
                keras.metrics.get(name)
            except (ValueError, TypeError):
                raise CompressError(f"metrics '{name}': not a Keras metric name (for example "
                                    "accuracy, mae, mse, auc)") from None
    own = getattr(model, "loss", None) if getattr(model, "compiled", False) else None
    if loss is not None:
        try:
            keras.losses.get(loss)
        except (ValueError, TypeError):
            raise CompressError(f"loss '{loss}': not a Keras loss name (for example mse, mae, "
                                "huber, binary_crossentropy, sparse_categorical_crossentropy)"
                                ) from None
        name = loss_name(loss)
        kind = _kind_of_loss(name, units, REGRESSION)
        if name == "sparse_categorical_crossentropy" or (
                name == "categorical_crossentropy" and y is not None
                and np.asarray(y).ndim == 1):
            loss_obj = keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)
        elif name == "categorical_crossentropy":
            loss_obj = keras.losses.CategoricalCrossentropy(from_logits=not probabilities)
        elif name == "binary_crossentropy":
            loss_obj = keras.losses.BinaryCrossentropy(from_logits=not probabilities)
        else:
            loss_obj = loss
        task = Task(kind, loss_obj, list(metrics) if metrics is not None
                    else _DEFAULT_METRICS[kind], "options", not probabilities)
    elif own is not None and not isinstance(own, (list, tuple, dict)):
        name = loss_name(own)
        kind = _kind_of_loss(name, units, _inferred(activation, units, y, metrics).kind)
        own_metrics = _compiled_metrics(model)
        reason = "the model's own loss"
        rank = len(model.outputs[0].shape) if getattr(model, "outputs", None) else 2
        if name in _ONE_HOT_LOSSES and kind == CLASSIFICATION and \
                not _one_hot_rows(y, units, rank):
            # keras.io's MNIST convnet: compiled on one-hot rows, given class numbers here
            own, reason = on_class_numbers(own), "the model's own loss, on class numbers"
        task = Task(kind, own, list(metrics) if metrics is not None else own_metrics,
                    "model", not probabilities, reason=reason)
    else:
        task = _inferred(activation, units, y, metrics,
                         features=_features(model) if y is None else None)
        decided = task.reason.endswith(("targets", "labels"))  # the targets decided
        if decided and isinstance(y, TargetSample) and not y.whole:  # ... from a head
            task = dataclasses.replace(task, reason=f"{task.reason} (judged from the "
                                       f"first {len(y)} targets)")
    task = dataclasses.replace(task, units=units)
    if y is not None:
        check_targets(task, y)
    return task


#: Keras losses that take one-hot rows; a model compiled with one is fine-tuned on the class
#: numbers the data gives (:func:`on_class_numbers`).
_ONE_HOT_LOSSES = ("categorical_crossentropy", "categorical_focal_crossentropy",
                   "categorical_hinge")


def _one_hot_rows(y, units: int, rank: int = 2) -> bool:
    """Whether targets ``y`` are one-hot rows for a ``units``-class output of ``rank``
    dimensions: shaped like it (a mask of class numbers is one dimension short, even
    where its width happens to equal ``units``).

    >>> _one_hot_rows(np.zeros((4, 3)), 3), _one_hot_rows(np.zeros((4, 8, 3)), 3, rank=4)
    (True, False)
    """
    if y is None:
        return False
    shape = np.shape(y)
    return len(shape) == rank and shape[-1] == units > 1


def on_class_numbers(loss):
    """``loss``, a Keras loss on one-hot rows (a name, function or object), taking class
    numbers instead (:class:`compress.losses.OnClassNumbers`): its name and keyword
    arguments (``from_logits``, ``label_smoothing``, focal ``gamma``) are kept.

    Example:

    >>> on_class_numbers("categorical_crossentropy").name
    'categorical_crossentropy'
    """
    from compress.losses import OnClassNumbers

    return OnClassNumbers(loss, name=loss_name(loss))


def _compiled_metrics(model) -> list:
    """The metrics ``model`` was compiled with: names, and Keras's own metric objects
    (``BinaryAccuracy(name="acc")``), rebuilt from their saved configs; [] when any of
    them is not a Keras metric (a custom class or function is not rebuilt from a file)."""
    import keras

    config = model.get_compile_config() if hasattr(model, "get_compile_config") else {}
    metrics = (config or {}).get("metrics")
    if not isinstance(metrics, (list, tuple)):
        return []
    out = []
    for metric in metrics:
        if isinstance(metric, str):
            out.append(metric)
        elif isinstance(metric, dict) and metric.get("module") == "keras.metrics" \
                and not metric.get("registered_name") \
                and hasattr(keras.metrics, str(metric.get("class_name"))):
            try:
                out.append(getattr(keras.metrics, metric["class_name"]).from_config(
                    metric.get("config") or {}))
            except (TypeError, ValueError):
                return []
        else:
            return []
    return out


def _features(model) -> str | None:
    """How ``model``'s one output shows it to be hidden features rather than class scores
    (a backbone's hidden states, an embedding model), or None: it comes straight out of a
    normalization layer, or the model is a KerasHub ``Backbone``. Without labels, such an
    output is scored by its error, not by agreeing argmaxes of its features."""
    import keras

    outputs = getattr(model, "outputs", None) or []
    layer = getattr(getattr(outputs[0], "_keras_history", None), "operation", None) \
        if len(outputs) == 1 else None
    kind = type(layer).__name__
    norm = isinstance(layer, (keras.layers.LayerNormalization, keras.layers.BatchNormalization,
                              keras.layers.GroupNormalization, keras.layers.UnitNormalization)
                      ) or kind.endswith(("LayerNorm", "RMSNorm", "Normalization"))
    if norm:
        return f"normalization layer '{layer.name}' ({kind})"
    if any(c.__name__ == "Backbone" and c.__module__.startswith("keras_hub")
           for c in type(model).__mro__):
        return f"KerasHub backbone {type(model).__name__}"
    return None


def _inferred(activation: str, units: int, y, metrics, features: str | None = None) -> Task:
    import keras

    targets = None if y is None else np.asarray(y)
    if features and activation == "linear" and units > 1 and targets is None:
        return Task(REGRESSION, "mean_squared_error",
                    list(metrics) if metrics is not None else _DEFAULT_METRICS[REGRESSION],
                    "inferred", False, f"the {units}-unit output of the {features}: hidden "
                    "features, not class scores")
    if activation == "softmax" or (activation == "linear" and units > 1 and (
            targets is None or _integer_labels(targets, units))):
        logits = activation != "softmax"
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=logits)
        if targets is not None and targets.ndim == 2 and targets.shape[1] == units > 1 \
                and activation == "softmax" and not _integer_labels(targets, units):
            loss = keras.losses.CategoricalCrossentropy(from_logits=False)
        kind = CLASSIFICATION
        reason = ("the softmax output" if not logits
                  else f"the {units}-unit linear output (logits) with integer labels"
                  if targets is not None else
                  f"the {units}-unit linear output, taken as logits: no labels to tell")
    elif activation == "sigmoid":
        kind = BINARY if units == 1 else MULTILABEL
        loss = keras.losses.BinaryCrossentropy()
        reason = "the one-unit sigmoid output" if units == 1 else \
            f"the {units}-unit sigmoid output"
        logits = False
    else:
        kind, loss, logits = REGRESSION, "mean_squared_error", False
        reason = (f"the one-unit {activation} output" if units == 1
                  else f"the {units}-unit {activation} output with real-valued targets")
    return Task(kind, loss, list(metrics) if metrics is not None else _DEFAULT_METRICS[kind],
                "inferred", logits, reason)


#: Targets read from the head of a split to infer and check the task (a stream is not read
#: whole for it).
SAMPLE_TARGETS = 1024


class TargetSample(np.ndarray):
    """Targets read from the head of a split (:func:`sample_targets`): ``whole`` is False
    when the split has more, so that an inference they decide says it saw only these."""

    whole = True


def sample_targets(data, split: str = "train", n: int = SAMPLE_TARGETS):
    """Up to ``n`` targets of ``data``'s ``split`` as an array, read from its head (a
    stream is never read further); None without data, without labels, or with several
    outputs' targets (dicts, lists).

    >>> sample_targets(None) is None
    True
    >>> from compress.data import Dataset
    >>> ds = Dataset("d", np.zeros((3000, 2)), np.ones(3000), None, None, None, None, 2)
    >>> y = sample_targets(ds)
    >>> len(y), y.whole
    (1024, False)
    """
    if data is None or not getattr(data, "labelled", True):
        return None
    if hasattr(data, "head"):
        # n + 1 read: the extra one tells whether the split holds more than the sample.
        _, y = data.head(split, n + 1)
    else:
        y = getattr(data, f"y_{split}", None)
        y = None if y is None else y[:n + 1]
    if y is None or isinstance(y, (dict, list, tuple)):
        return None
    y = np.asarray(y)
    out = y[:n].view(TargetSample)
    out.whole = len(y) <= n
    return out


def check_targets(task: Task, y) -> None:
    """Refuse targets the task cannot learn from, in one line (a regression target given to
    a classifier trains at a loss of 0 or crashes inside Keras).

    >>> import keras
    >>> clf = resolve(keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, "softmax")]))
    >>> check_targets(clf, np.array([0.25, 0.5]))
    Traceback (most recent call last):
    ...
    compress.errors.CompressError: targets: a classifier needs integer class labels in [0, 3), got real values such as 0.25 (a regression target? give --loss mse, or a model with a linear output)
    """
    y = np.asarray(y)
    if y.size == 0 or y.dtype == object:
        return
    units = task.units
    if task.loss_name == "categorical_crossentropy":  # one-hot targets
        return
    if task.kind == CLASSIFICATION and ((y.ndim <= 2 and int(np.prod(y.shape[1:])) == 1) or (
            task.loss_name == "sparse_categorical_crossentropy" and y.ndim > 1)):
        flat = y.reshape(-1)
        if not np.issubdtype(flat.dtype, np.number):
            return
        bad = ~np.isfinite(flat.astype(np.float64)) | (flat != np.round(flat))
        if bad.any():
            raise CompressError(
                f"targets: a classifier needs integer class labels in [0, {units}), got real "
                f"values such as {flat[bad][0]:g} (a regression target? give --loss mse, or "
                "a model with a linear output)")
        if flat.min() < 0 or (units > 1 and flat.max() >= units):
            raise CompressError(f"targets: labels go from {flat.min():g} to {flat.max():g} but "
                                f"the classifier has {units} outputs (classes 0 to "
                                f"{units - 1})")
    if task.kind in (BINARY, MULTILABEL) and np.issubdtype(y.dtype, np.number) and (
            y.min() < 0 or y.max() > 1):
        raise CompressError(f"targets: a {task.kind} output needs targets in [0, 1], got "
                            f"{y.min():g} to {y.max():g} (a regression target? give --loss "
                            "mse)")


# --------------------------------------------------------------------------------------
# Several outputs: one Task per output. resolve() returns a MultiOutputTask for a model
# with more than one output. Each output's task, first match wins: the user's loss (for
# every output, as Keras applies one loss), the loss the model was compiled with for that
# output (a dict or list), else inferred from that output's layer. Fine-tuning compiles
# the per-output losses (and the model's loss weights); reports score each output on its
# own terms, as {"outputs": {name: scores}} plus "NAME accuracy" / "NAME mse" entries of
# "metrics" (the report table shows them).

MULTI_OUTPUT = "multi-output"


def output_names(model) -> list[str]:
    """The model's output names in ``model.outputs`` order."""
    from compress.data.arrays import output_names as names

    return names(model)


def by_output(names: list[str], value, what: str = "outputs") -> dict:
    """``value`` (a dict keyed by output name, a list/tuple in output order, or one array
    for one output) as a dict ``{name: array}`` in ``names`` order.

    A dict whose keys are not the names (an artifact's ``output_0``, ``Identity:0``...)
    is taken in its own order when it has as many entries.

    >>> by_output(["a", "b"], [np.zeros(1), np.ones(1)])["b"]
    array([1.])
    """
    if isinstance(value, dict):
        if all(n in value for n in names):
            return {n: value[n] for n in names}
        missing = [n for n in names if n not in value]
        if any(k in names for k in value):  # named after the outputs, some left out
            raise CompressError(
                f"{what}: none for output{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(n) for n in missing)} (given: "
                f"{', '.join(repr(k) for k in value)}); every output needs its own "
                f"(in an .npz: {', '.join(f'y_train/{n}' for n in missing)})")
        values = list(value.values())
    elif isinstance(value, (list, tuple)):
        values = list(value)
    else:
        values = [value]
    if len(values) != len(names):
        raise CompressError(f"{what}: {len(values)} array{'s' if len(values) != 1 else ''} "
                            f"for {len(names)} outputs ({', '.join(names)})")
    return dict(zip(names, values))


def _output_layer(model, index: int):
    history = getattr(model.outputs[index], "_keras_history", None)
    return getattr(history, "operation", None) if history is not None else None


@dataclasses.dataclass(frozen=True)
class MultiOutputTask:
    """One :class:`Task` per output, used where a single Task would be.

    Example:

    >>> import keras
    >>> x = keras.Input((4,), name="x")
    >>> h = keras.layers.Dense(8, activation="relu")(x)
    >>> model = keras.Model(x, {"cls": keras.layers.Dense(3, activation="softmax",
    ...                                                   name="cls")(h),
    ...                         "score": keras.layers.Dense(1, name="score")(h)})
    >>> task = resolve(model)
    >>> [(name, t.kind) for name, t in task.tasks.items()]
    [('cls', 'classification'), ('score', 'regression')]
    >>> task.score({"cls": np.array([[0.1, 0.8, 0.1]]), "score": np.array([[2.0]])},
    ...            {"cls": np.array([1]), "score": np.array([1.0])})["outputs"]
    {'cls': {'accuracy': 1.0}, 'score': {'mse': 1.0, 'mae': 1.0}}

    Args:
        tasks: dict. Output name -> Task, in the model's output order.
        source: str. ``"options"``, ``"model"`` or ``"inferred"``.
        loss_weights: dict or None. The model's own loss weights per output.
    """

    tasks: dict
    source: str
    loss_weights: dict | None = None
    kind: str = MULTI_OUTPUT
    from_logits: bool = False
    units: int = 0

    @property
    def is_classifier(self) -> bool:
        return False  # argmax of several outputs together means nothing

    @property
    def has_accuracy(self) -> bool:
        return False

    @property
    def loss(self) -> dict:
        return {n: t.loss for n, t in self.tasks.items()}

    @property
    def metrics(self) -> dict:
        return {n: list(t.metrics) for n, t in self.tasks.items()}

    @property
    def loss_name(self) -> str:
        return ", ".join(f"{n}: {t.loss_name}" for n, t in self.tasks.items())

    def describe(self) -> str:
        """One line: each output's kind, loss and metrics."""
        parts = [f"{n} {t.kind} (loss {t.loss_name}, metrics "
                 f"{', '.join(_metric_name(m) for m in t.metrics) or 'none'})"
                 for n, t in self.tasks.items()]
        why = {"options": "given", "model": "the model's own losses"}.get(self.source,
                                                                        "inferred per output")
        return f"{MULTI_OUTPUT}: {'; '.join(parts)} ({why})"

    def compile(self, model, learning_rate: float = 1e-3, optimizer: str = "adam",
                momentum: float = 0.9) -> None:
        """Compile ``model`` with each output's loss and metrics (and the model's own loss
        weights)."""
        from compress.training import make_optimizer

        kwargs = {"loss_weights": dict(self.loss_weights)} if self.loss_weights else {}
        model.compile(optimizer=make_optimizer(optimizer, learning_rate, momentum),
                      loss={n: _fresh(t.loss) for n, t in self.tasks.items()},
                      metrics={n: list(t.metrics) for n, t in self.tasks.items()}, **kwargs)

    def score(self, outputs, y) -> dict:
        """Each output scored by its own task: ``{"outputs": {name: scores}, "metrics":
        {"NAME key": value}}``."""
        names = list(self.tasks)
        outs, ys = by_output(names, outputs), by_output(names, y, "targets")
        return _flat({n: self.tasks[n].score(outs[n], ys[n]) for n in names})

    def evaluate(self, model, x, y) -> dict:
        """:meth:`score` of ``model``'s outputs on ``(x, y)``."""
        from compress.training import predict

        return self.score(predict(model, x), y)

    def evaluate_data(self, model, data, split: str = "test", batch_size: int = 256,
                      predict=None) -> dict:
        """:meth:`evaluate` on a whole split, batch by batch (a stream is never held)."""
        from compress.data.streaming import iter_batches
        from compress.training import predict as keras_predict

        run = predict or (lambda x: keras_predict(model, x))
        names = list(self.tasks)
        scores = {n: _Scores(t) for n, t in self.tasks.items()}
        for x, y in iter_batches(data, split, batch_size):
            outs, ys = by_output(names, run(x)), by_output(names, y, "targets")
            for n in names:
                scores[n].add(np.asarray(outs[n]), np.asarray(ys[n]))
        return _flat({n: s.result() for n, s in scores.items()})

    def fidelity_loss(self):
        """``(losses, targets)``: each output's label-free loss; ``targets`` maps the
        original's outputs (a dict by name) to training targets."""
        pairs = {n: t.fidelity_loss() for n, t in self.tasks.items()}
        return ({n: p[0] for n, p in pairs.items()},
                lambda out: {n: pairs[n][1](v) for n, v in by_output(list(pairs), out).items()})

    def fit_to_teacher(self, student, teacher, data, *, epochs: int,
                       learning_rate: float = 1e-3, batch_size: int = 64,
                       verbose: int | str = 0, callbacks=None, temperature: float = 1.0):
        """Label-free fine-tuning of a multi-output ``student``: each output learns the
        teacher's with its own fidelity loss (KL for classifiers, MSE otherwise), on the
        training inputs (arrays)."""
        import keras

        from compress import training

        if getattr(data, "streaming", False):
            raise CompressError("label-free fine-tuning of a model with several outputs "
                                "needs the data as arrays (npz:, NumPy), not a stream")
        names = list(self.tasks)
        losses = {}
        for n, t in self.tasks.items():
            if t.kind == CLASSIFICATION:
                losses[n] = (keras.losses.CategoricalCrossentropy(from_logits=True)
                             if t.from_logits else keras.losses.KLDivergence())
            else:
                losses[n] = "mean_squared_error"

        def targets(x):
            out = by_output(names, training.predict(teacher, x))
            return {n: (_softmax(v) if self.tasks[n].kind == CLASSIFICATION
                        and self.tasks[n].from_logits else v) for n, v in out.items()}

        student.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=losses)
        validation = data.x_val if data.size("val") else None
        return training.fit_model(
            student, data.x_train, targets(data.x_train), batch_size=batch_size,
            validation_data=None if validation is None else (validation,
                                                             targets(validation)),
            epochs=epochs, callbacks=callbacks, verbose=verbose,
            advice="lower the learning rate")


def _softmax(v):
    e = np.exp(v - v.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _flat(per: dict) -> dict:
    metrics = {}
    for name, scores in per.items():
        for key, value in scores.items():
            if isinstance(value, dict):  # the task's own metrics
                metrics.update({f"{name} {k}": v for k, v in value.items()})
            else:
                metrics[f"{name} {key}"] = value
    return {"outputs": per, "metrics": metrics}


def resolve_outputs(model, loss: str | None = None, metrics: list | None = None,
                    y=None) -> MultiOutputTask:
    """One task per output of ``model`` (see :class:`MultiOutputTask`).

    Args:
        model: keras.Model with several outputs.
        loss: str or None. One Keras loss name for every output.
        metrics: list or None. Keras metric names for every output.
        y: dict / list of targets or None: checked per output.
    """
    names = output_names(model)
    own = getattr(model, "loss", None) if getattr(model, "compiled", False) else None
    if isinstance(own, (list, tuple)):
        own = dict(zip(names, own))
    own_metrics = _own_metrics(model, names)
    config = model.get_compile_config() if hasattr(model, "get_compile_config") else None
    weights = (config or {}).get("loss_weights")
    if isinstance(weights, (list, tuple)):
        weights = dict(zip(names, weights))
    ys = by_output(names, y, "targets") if y is not None else {}
    tasks = {}
    source = "options" if loss is not None else "model" if isinstance(own, dict) \
        else "inferred"
    for i, name in enumerate(names):
        single = _OneOutput(model.outputs[i], _output_layer(model, i),
                            own.get(name) if isinstance(own, dict) and loss is None else None,
                            own_metrics.get(name))
        task = resolve(single, loss, metrics if metrics is not None else
                       (own_metrics.get(name) if single.loss is not None else None),
                       y=ys.get(name))
        tasks[name] = dataclasses.replace(task, units=int(model.outputs[i].shape[-1] or 1))
    return MultiOutputTask(tasks, source, weights if isinstance(weights, dict) else None)


def _own_metrics(model, names: list[str]) -> dict:
    config = model.get_compile_config() if hasattr(model, "get_compile_config") else None
    metrics = (config or {}).get("metrics")
    if isinstance(metrics, (list, tuple)) and len(metrics) == len(names):
        metrics = dict(zip(names, metrics))
    if not isinstance(metrics, dict):
        return {}
    return {n: ([m] if isinstance(m, str) else list(m)) for n, m in metrics.items()
            if isinstance(m, str) or (isinstance(m, (list, tuple)) and
                                      all(isinstance(v, str) for v in m))}


class _OneOutput:
    """A stand-in for a one-output model, so that :func:`resolve` reads one output's
    layer, width and compiled loss."""

    def __init__(self, tensor, layer, loss, metrics):
        self.outputs = [tensor]
        self.layers = [layer] if layer is not None else []
        self.loss = loss
        self.compiled = loss is not None
        self._metrics = metrics or []

    def get_compile_config(self):
        return {"metrics": list(self._metrics)}


def fidelity_outputs(model, reference, data, split: str = "test",
                     batch_size: int = 256) -> dict:
    """Label-free fidelity of ``model`` to ``reference`` (the original), output by output:
    ``{"outputs": {name: {rel_l2_error, sqnr_db[, top1_agreement]}}, "metrics": {"NAME
    sqnr_db": ...}}`` plus the worst ``rel_l2_error`` and ``sqnr_db`` at the top level.

    >>> fidelity_outputs(pruned, original, unlabelled, "test")["outputs"]  # doctest: +SKIP
    {'cls': {'rel_l2_error': 0.04, 'sqnr_db': 27.9, 'top1_agreement': 0.98}, ...}
    """
    from compress.agreement import output_comparison
    from compress.data.streaming import iter_batches
    from compress.training import predict

    names = output_names(reference)
    got, expected = {n: [] for n in names}, {n: [] for n in names}
    for x, _ in iter_batches(data, split, batch_size):
        for store, m in ((got, model), (expected, reference)):
            for n, v in by_output(names, predict(m, x)).items():
                store[n].append(np.asarray(v))
    if not expected[names[0]]:
        raise CompressError("cannot score a model on empty data")
    task = resolve(reference)
    classifier = {n: t.is_classifier for n, t in getattr(task, "tasks", {}).items()}
    check = output_comparison({n: np.concatenate(v) for n, v in got.items()},
                              {n: np.concatenate(v) for n, v in expected.items()},
                              classifier, names)
    per = {n: {k: v for k, v in c.items() if k in ("rel_l2_error", "sqnr_db",
                                                     "top1_agreement")}
           for n, c in check["outputs"].items()}
    metrics = {f"{n} {k}": v for n, c in per.items() for k, v in c.items()}
    return {"rel_l2_error": check["rel_l2_error"], "sqnr_db": check["sqnr_db"],
            "outputs": per, "metrics": metrics}
