"""Knowledge distillation (Hinton et al. 2015) driven through ``keras.distillation``.

The loss is Keras's own: ``keras.distillation.Distiller`` with a
``LogitsDistillation`` term (plus ``FeatureDistillation`` terms for named layer pairs).
What this module adds around it is what a compression workflow needs:

- teachers and students that end in a softmax (most saved classifiers) are trained on
  their logits, exactly: the last layer's softmax is switched off on private copies
  during training, and the returned student keeps the output activation it came with;
- the student is a copy (the input is never mutated) whose variables keep the
  ``constraint`` of the given student's variables, so a pruned student's zeros stay zero
  (Keras 3 optimizers apply ``variable.constraint`` after each update);
- the KL term gets a ``keras.losses.KLDivergence`` instance: with its default
  ``loss="kl_divergence"`` string, ``LogitsDistillation`` receives the plain function,
  misses its ``isinstance(..., KLDivergence)`` branch and compares the scaled logits
  themselves, without softmax or the ``T**2`` factor;
- one-line :class:`~compress.errors.CompressError` messages for bad input, and a
  JSON-ready ``info`` dict.

The total loss is ``alpha * T**2 * KL(softmax(z_t / T) || softmax(z_s / T)) +
(1 - alpha) * CE(y, softmax(z_s))`` (``Distiller(student_loss_weight=1 - alpha)``).

Example:

>>> from compress.distillation import distill, width_student
>>> student = width_student(teacher, width=0.25)                    # doctest: +SKIP
>>> student, info = distill(teacher, student, ds, temperature=4.0,  # doctest: +SKIP
...                         alpha=0.9, epochs=10)
>>> info["student_accuracy"]                                        # doctest: +SKIP
0.951
"""

from __future__ import annotations

import keras

from compress.data import as_dataset, prepare
from compress.distillation.augment import augmented_batches, check_augment
from compress.distillation.options import DISTILL_OPTIONS, DISTILL_TRAINING_OPTIONS
from compress.errors import CompressError

# Probabilities below this are treated as this when no exact logits can be had
# (log(1e-12) = -27.6: far below any useful logit, and finite).
_PROB_FLOOR = 1e-12


def distill(teacher, student, data, *, callbacks=None, verbose: int | str = 0, **options):
    """Train a copy of ``student`` to match ``teacher``'s softened outputs and the labels.

    Example:

    >>> student, info = distill(teacher, width_student(teacher, 0.25), ds,  # doctest: +SKIP
    ...                         temperature=4.0, alpha=0.9, epochs=10)

    Args:
        teacher: keras.Model. A trained classifier (logits or softmax probabilities).
            Never modified.
        student: keras.Model. The model to train (fresh, or pruned/hashed: its variables'
            ``constraint`` is kept on the copy). Never modified.
        data: compress.data.Dataset. Prepared for the teacher (``compress.data.prepare``);
            integer labels; the ``val`` split is used for validation.
        callbacks: list of keras.callbacks.Callback, default None. Passed to
            ``Distiller.fit``; their ``self.model`` is the ``Distiller`` (the student is
            ``self.model.student``).
        verbose: int or str, default 0. Keras ``fit`` verbosity.
        **options: validated by :data:`DISTILL_TRAINING_OPTIONS` (the training part of
            ``DISTILL_OPTIONS``): ``temperature`` (4.0, softmax temperature T > 0),
            ``alpha`` (0.9, weight of the distillation term in [0, 1]; 0 is plain
            cross-entropy training, 1 uses the teacher only), ``epochs`` (10),
            ``learning_rate`` (1e-3, Adam), ``batch_size`` (64), ``teacher_outputs``
            (``"auto"``: probabilities when the teacher's last activation is a softmax;
            or ``"logits"``, ``"probabilities"``), ``feature_pairs`` (None; a list of
            ``"teacher_layer:student_layer"`` strings, each adding an MSE
            ``keras.distillation.FeatureDistillation`` term of weight 1 between two
            layers' outputs of the same shape), ``augment`` (``"none"``; ``"shift"``
            trains on randomly shifted images, new shifts every epoch, the teacher
            scoring the same shifted view the student sees: "consistent teaching", Beyer
            et al. 2022; needs image inputs; validation is on the unshifted val split;
            the order and shifts follow TensorFlow's global seed) and ``shift`` (2,
            largest shift in pixels).

    Returns:
        ``(student_model, info)``: a plain Keras model with the given student's
        architecture and output activation, and a JSON-ready dict (options, the teacher
        output kind, per-epoch history, test accuracies of teacher and student).

    Raises:
        CompressError: bad options, different input or output shapes, a teacher that is
            not a classifier, unknown or mismatched feature layers, NaN loss.
    """
    opts = DISTILL_TRAINING_OPTIONS.validate(options)
    data = as_dataset(data)  # a tf.data.Dataset, arrays, (x, y), a name: one form
    if per_output(teacher, data):
        return distill_outputs(teacher, student, data, callbacks=callbacks, verbose=verbose,
                               **opts)
    kind, student_kind, pairs = check_compatible(teacher, student, data,
                                                 opts["teacher_outputs"], opts["feature_pairs"])
    data = prepare(teacher, data)  # the models are checked first, in their own words
    check_augment(opts["augment"], opts["shift"], student.inputs[0].shape[1:])

    teacher_logits = logits_model(teacher, kind)
    trained = copy_with_constraints(student)
    student_logits, restore = _logits_view(trained, student_kind)
    _check_feature_pairs(teacher_logits, student_logits, pairs)

    from compress import training

    distiller = make_distiller(teacher_logits, student_logits, opts["temperature"],
                               opts["alpha"], pairs)
    distiller.compile(
        optimizer=keras.optimizers.Adam(opts["learning_rate"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    stream = data.fit_args(opts["batch_size"])  # arrays, or streamed batches
    if not getattr(data, "labelled", True):  # the teacher's top-1 stands in for labels
        stream = _teacher_labels(teacher, stream, data, opts["augment"])
    # The student gets its output activation back when training ends, before a NaN stop
    # saves it (--keep-last-good), and in any case once the fit is left.
    back = keras.callbacks.LambdaCallback(on_train_end=lambda logs: restore())
    fit_args = {"epochs": opts["epochs"], "verbose": verbose,
                "callbacks": list(callbacks or []) + [back],
                "validation_data": stream["validation_data"],
                "target": trained,  # NaN: keep (and save) the student's last good weights
                "advice": "distill: lower the learning rate or the temperature, or check "
                          "the data"}
    try:
        if opts["augment"] == "none":
            history = training.fit_model(distiller, stream["x"], stream["y"],
                                         batch_size=stream["batch_size"],
                                         shuffle=stream["batch_size"] is not None,
                                         **fit_args)
        else:
            # The Distiller calls the teacher on each batch it trains on: same shifted view.
            history = training.fit_model(distiller, augmented_batches(  # streamed
                data, None, opts["augment"], opts["shift"],
                opts["batch_size"]), shuffle=False, **fit_args)
    finally:
        restore()

    info = {
        "temperature": opts["temperature"],
        "alpha": opts["alpha"],
        "epochs": opts["epochs"],
        "epochs_run": len(history.history.get("loss", [])),
        "learning_rate": opts["learning_rate"],
        "batch_size": opts["batch_size"],
        "augment": opts["augment"],
        "shift": opts["shift"] if opts["augment"] != "none" else None,
        "teacher_outputs": kind,
        "student_outputs": student_kind,
        "feature_pairs": [f"{t}:{s}" for t, s in pairs],
        "teacher_params": int(teacher.count_params()),
        "student_params": int(trained.count_params()),
        "constrained_variables": sum(v.constraint is not None for v in trained.weights),
        "history": {k: [float(x) for x in v] for k, v in history.history.items()},
    }
    from compress.data.streaming import has_samples

    if data.labelled and has_samples(data, "test"):
        # the teacher's task, scored batch by batch (a stream is never held): accuracy
        # for a classifier, MSE/MAE for a regression
        from compress.task import resolve

        task = resolve(teacher)
        for who, model in (("teacher", teacher), ("student", trained)):
            scores = task.evaluate_data(model, data, "test")
            info.update({f"{who}_{k}": v for k, v in scores.items() if k != "metrics"})
    return trained, info


def _teacher_labels(teacher, stream, data, augment: str) -> dict:
    """:meth:`fit_args` of unlabelled in-memory data with the teacher's top-1 classes as
    the labels (the student-loss term then learns the teacher's hard decisions).

    Raises:
        CompressError: unlabelled streamed data, or ``augment`` (labels of shifted views).
    """
    import numpy as np

    from compress.training import predict

    if stream["batch_size"] is None or augment != "none":
        raise CompressError(f"{data.name}: has no labels; distill takes unlabelled data only "
                            "in memory and without --augment (the teacher's top-1 classes "
                            "become the labels): give labelled data")
    val = stream["validation_data"]
    return {**stream, "y": np.argmax(predict(teacher, stream["x"]), -1),
            "validation_data": None if val is None or isinstance(val, tuple) else
            (val, np.argmax(predict(teacher, val), -1))}


def several_io(model) -> bool:
    """Whether ``model`` has several inputs or several outputs."""
    return len(getattr(model, "inputs", None) or ()) > 1 or \
        len(getattr(model, "outputs", None) or ()) > 1


def per_output(model, data=None) -> bool:
    """Whether ``model`` distills with :func:`distill_outputs` (the teacher's outputs
    matched by their own task) rather than by softened logits: several inputs or
    outputs, or one output that is not one vector of 2 or more classes (a regressor, a
    forecaster, a one-unit binary head, a multi-label head of sigmoids, a segmenter's
    output at every position). A vector of linear units is a regression or a multi-label
    head when its task says so (:func:`compress.task.resolve`: its compiled loss, or
    ``data``'s targets), not logits of one class vector.

    >>> import keras
    >>> per_output(keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]))
    True
    >>> per_output(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]))
    False
    """
    if several_io(model):
        return True
    outputs = getattr(model, "outputs", None)
    if not outputs:
        return False  # no signature: check_compatible says so
    shape = tuple(outputs[0].shape[1:])
    if len(shape) != 1 or shape[0] is None or shape[0] < 2:
        return True
    # units that each answer on their own (multi-label sigmoids): no softmax over classes
    layers = getattr(model, "layers", None)
    activation = _activation_name(layers[-1]) if layers else None
    if activation == "sigmoid":
        return True
    if activation not in (None, "linear"):  # softmax; relu etc. are refused there
        return False
    from compress.task import CLASSIFICATION, resolve, sample_targets

    if data is not None and not hasattr(data, "head"):
        data = as_dataset(data)
    try:  # a compiled MSE, or real-valued targets: no class vector to soften
        return resolve(model, y=sample_targets(data)).kind != CLASSIFICATION
    except CompressError:  # targets the model cannot take: the distillation says so
        return False


def _like(y, out):
    """Labels ``y`` of a one-unit output (a sigmoid binary head) given one per sample,
    shaped ``(batch, 1)`` like the output, in its dtype: a loss function called directly
    (not through ``compile``) refuses the ranks apart."""
    import tensorflow as tf

    if len(y.shape) == len(out.shape) - 1 and out.shape[-1] == 1:
        return tf.cast(tf.expand_dims(y, -1), out.dtype)
    return y


def distill_outputs(teacher, student, data, *, callbacks=None, verbose: int | str = 0,
                    **options):
    """:func:`distill` for models with several inputs or outputs, or an output that is
    not a class vector (:func:`per_output`: a regressor): a per-output loss.

    Each output of the student learns its teacher's output and its labels: for a
    classifier output ``alpha * T**2 * KL(softmax(z_t / T) || softmax(z_s / T)) +
    (1 - alpha) * its own loss`` (logits taken as ``log`` of a softmax output), for any
    other output ``alpha * MSE(teacher, student) + (1 - alpha) * its own loss`` (the
    model's own per-output losses, :class:`compress.task.MultiOutputTask`). Without labels only the
    teacher terms train. Options as :func:`distill` (``feature_pairs`` and ``augment``
    are refused here).

    Example:

    >>> student, info = distill_outputs(teacher, student, ds, epochs=5)   # doctest: +SKIP
    >>> info["outputs"]["score"]["mse"]                                   # doctest: +SKIP
    0.41
    """
    import tensorflow as tf

    from compress import training
    from compress.task import by_output, output_names, resolve, sample_targets

    opts = DISTILL_TRAINING_OPTIONS.validate(options)
    if opts["feature_pairs"] or opts["augment"] != "none":
        raise CompressError("distill: feature_pairs and augment take single-input, "
                            "single-output models; leave them out for this model")
    for role, m in (("teacher", teacher), ("student", student)):
        if getattr(m, "inputs", None) is None:
            raise CompressError(f"{role} '{m.name}': has no input signature (subclassed); "
                                "give --input-shape")
    if [tuple(t.shape[1:]) for t in teacher.inputs] != \
            [tuple(t.shape[1:]) for t in student.inputs] or \
            [tuple(t.shape[1:]) for t in teacher.outputs] != \
            [tuple(t.shape[1:]) for t in student.outputs]:
        raise CompressError(f"teacher '{teacher.name}' and student '{student.name}' differ "
                            "in their inputs or outputs; the student must take the "
                            "teacher's inputs and give its outputs")
    check_output_activations(teacher, student)
    data = prepare(teacher, data)
    task = resolve(teacher, y=sample_targets(data))
    tasks = getattr(task, "tasks", None) or {output_names(teacher)[0]: task}
    names = list(tasks)
    trained = copy_with_constraints(student)
    frozen = copy_with_constraints(teacher)
    frozen.trainable = False
    temperature, alpha = opts["temperature"], opts["alpha"]
    label_losses = {n: keras.losses.get(t.loss) if isinstance(t.loss, str) else t.loss
                    for n, t in tasks.items()}

    def logits(t, out):
        out = tf.cast(out, "float32")
        return out if t.from_logits else tf.math.log(tf.maximum(out, _PROB_FLOOR))

    class _OutputDistiller(keras.Model):
        def __init__(self):
            super().__init__(name="output_distiller")
            self.student, self.teacher = trained, frozen
            # Keras logs its own (never updated) loss tracker under "loss" in place of a
            # returned "loss": the loss is tracked here, or every epoch logged 0.0 and the
            # NaN stop could not fire.
            self._loss_mean = keras.metrics.Mean(name="loss")

        @property
        def metrics(self):
            return [self._loss_mean]

        def call(self, x, training=False):
            return self.student(x, training=training)

        def train_step(self, batch):
            x, y = (batch[0], batch[1]) if isinstance(batch, tuple) and len(batch) > 1 \
                else (batch, None)
            soft = by_output(names, self.teacher(x, training=False))
            with tf.GradientTape() as tape:
                out = by_output(names, self.student(x, training=True))
                ys = by_output(names, y, "targets") if y is not None else {}
                total = 0.0
                for n, t in tasks.items():
                    if t.kind == "classification":
                        kd = keras.losses.KLDivergence()(
                            tf.nn.softmax(logits(t, soft[n]) / temperature),
                            tf.nn.softmax(logits(t, out[n]) / temperature)) * temperature ** 2
                    else:
                        kd = keras.losses.MeanSquaredError()(soft[n], out[n])
                    term = alpha * kd
                    if n in ys and alpha < 1.0:
                        term += (1.0 - alpha) * tf.reduce_mean(
                            label_losses[n](_like(ys[n], out[n]), out[n]))
                    total += term
            variables = self.student.trainable_variables
            self.optimizer.apply(tape.gradient(total, variables), variables)
            self._loss_mean.update_state(total)
            return {"loss": self._loss_mean.result()}

    classes = any(t.kind == "classification" for t in tasks.values())
    distiller = _OutputDistiller()
    distiller.compile(optimizer=keras.optimizers.Adam(opts["learning_rate"]))
    stream = data.fit_args(opts["batch_size"])
    history = training.fit_model(
        distiller, stream["x"], stream["y"], batch_size=stream["batch_size"],
        shuffle=stream["batch_size"] is not None, epochs=opts["epochs"], verbose=verbose,
        callbacks=callbacks, target=trained,
        advice="distill: lower the learning rate or the temperature, or check the data")
    info = {"temperature": temperature, "alpha": alpha, "epochs": opts["epochs"],
            "epochs_run": len(history.history.get("loss", [])),
            "learning_rate": opts["learning_rate"], "batch_size": opts["batch_size"],
            "augment": "none", "shift": None, "teacher_outputs": "per output",
            "student_outputs": "per output", "feature_pairs": [],
            "loss": ("per output: KL on softened classes, MSE otherwise"
                     if classes else "MSE to the teacher's outputs")
                    + ((", plus the own loss" if classes else ", plus the model's own loss")
                       if data.labelled else " (no labels: the teacher's outputs alone)"),
            "temperature_used": classes,
            "alpha_used": bool(data.labelled),  # without labels: the teacher's term alone
            "teacher_params": int(teacher.count_params()),
            "student_params": int(trained.count_params()),
            "constrained_variables": sum(v.constraint is not None for v in trained.weights),
            "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}
    if data.labelled and data.size("test"):
        info["teacher_scores"] = task.evaluate_data(teacher, data, "test")
        info["student_scores"] = task.evaluate_data(trained, data, "test")
    return trained, info


def check_compatible(teacher, student, data, teacher_outputs: str = "auto",
                     feature_pairs=None) -> tuple[str, str, list]:
    """Refuse a teacher/student/data combination :func:`distill` cannot train, cheaply.

    Front-ends call it before any other work (the CLI trains a baseline first).

    Args:
        teacher: keras.Model.
        student: keras.Model.
        data: compress.data.Dataset, prepared for the teacher.
        teacher_outputs: str, default ``"auto"``. See :func:`teacher_output_kind`.
        feature_pairs: list, default None. See :func:`distill`.

    Returns:
        ``(teacher_kind, student_kind, pairs)``: ``"logits"`` or ``"probabilities"`` for
        each model, and the feature pairs as ``(teacher_layer, student_layer)`` tuples.

    Raises:
        CompressError: one line naming what does not fit.
    """
    pairs = _parse_pairs(feature_pairs)
    _check_models(teacher, student, data)
    kind = teacher_output_kind(teacher, teacher_outputs)
    student_kind = _student_output_kind(student)
    _check_feature_pairs(teacher, student, pairs)
    return kind, student_kind, pairs


def make_distiller(teacher_logits, student_logits, temperature: float, alpha: float,
                   feature_pairs=()):
    """The (uncompiled) ``keras.distillation.Distiller`` that :func:`distill` trains.

    Both models must output logits (see :func:`logits_model`). The KL term is given a
    ``keras.losses.KLDivergence`` instance, the only form for which ``LogitsDistillation``
    applies the softmax and the ``T**2`` factor.

    Args:
        teacher_logits: keras.Model. Frozen by the Distiller (pass a copy).
        student_logits: keras.Model. Trained in place.
        temperature: float. Softmax temperature T.
        alpha: float. Weight of the distillation terms (``student_loss_weight = 1 - alpha``).
        feature_pairs: list of ``(teacher_layer, student_layer)``, default ``()``. One MSE
            ``FeatureDistillation`` term of weight 1 each.
    """
    losses = [keras.distillation.LogitsDistillation(
        temperature=temperature, loss=keras.losses.KLDivergence())]
    losses += [keras.distillation.FeatureDistillation(
        loss="mse", teacher_layer_name=t, student_layer_name=s) for t, s in feature_pairs]
    try:
        return keras.distillation.Distiller(
            teacher=teacher_logits, student=student_logits, distillation_losses=losses,
            student_loss_weight=1.0 - alpha, name="distiller")
    except ValueError as exc:
        raise CompressError(f"distill: {' '.join(str(exc).split())}") from exc


def teacher_output_kind(teacher, teacher_outputs: str = "auto") -> str:
    """``"logits"`` or ``"probabilities"``: what ``teacher`` outputs.

    Args:
        teacher: keras.Model. A classifier.
        teacher_outputs: str, default ``"auto"``. A forced answer, or ``"auto"``: a
            softmax last activation means probabilities, a linear one logits.

    Raises:
        CompressError: ``"auto"`` and a last activation that is neither (sigmoid, relu...):
            not a single-label classifier's output.
    """
    from compress.training import outputs_probabilities

    teacher_outputs = DISTILL_OPTIONS.options["teacher_outputs"].check(teacher_outputs,
                                                                       "teacher_outputs")
    if teacher_outputs in ("logits", "probabilities"):
        return teacher_outputs
    if outputs_probabilities(teacher):
        return "probabilities"
    act = _activation_name(teacher.layers[-1])
    if act in (None, "linear"):
        return "logits"
    raise CompressError(f"teacher '{teacher.name}' ends in a '{act}' activation: not class "
                        "logits or softmax probabilities, so logits distillation does not "
                        "apply (pass teacher_outputs='logits' to force it)")


def logits_model(teacher, kind: str):
    """A private copy of ``teacher`` that outputs logits.

    A last softmax activation is switched off on the copy, and a last ``Softmax`` layer
    is cut off: both give the exact logits. Other probability outputs go through
    ``log(clip(p, 1e-12, 1))``, which equals the logits up to a per-sample constant
    (softmax ignores it) wherever no probability underflows.

    Args:
        teacher: keras.Model. Never modified.
        kind: str. ``"logits"`` or ``"probabilities"`` (see :func:`teacher_output_kind`).
    """
    from compress.training import copy_model

    try:
        model = copy_model(teacher)
    except Exception as exc:
        raise CompressError(f"teacher '{teacher.name}': could not copy it for distillation "
                            f"({type(exc).__name__}: {exc})") from exc
    if kind == "logits":
        return model
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return keras.Model(model.inputs[0], last.input, name=f"{model.name}_logits")
    if _activation_name(last) == "softmax":
        last.activation = keras.activations.linear
        return model
    logits = _LogProbabilities(name="log_probabilities")(model.outputs[0])
    return keras.Model(model.inputs[0], logits, name=f"{model.name}_logits")


def copy_with_constraints(model):
    """A copy of ``model`` whose variables carry the originals' ``constraint`` objects.

    ``compress.training.copy_model`` rebuilds layers from their config, which keeps a
    layer's ``kernel_constraint`` argument but not a constraint set on a variable
    afterwards (how pruning holds its zeros); this puts those back, by position.
    """
    from compress.training import copy_model

    clone = copy_model(model)
    if len(clone.weights) != len(model.weights):
        raise CompressError(f"model '{model.name}': its copy has a different number of "
                            "variables; cannot carry their constraints over")
    for src, dst in zip(model.weights, clone.weights):
        if src.constraint is not None:
            dst.constraint = src.constraint
    return clone


class _LogProbabilities(keras.layers.Layer):
    """``log(clip(p, floor, 1))``: logits (up to a constant) from probabilities."""

    def __init__(self, floor: float = _PROB_FLOOR, **kwargs):
        super().__init__(**kwargs)
        self.floor = floor

    def call(self, p):
        return keras.ops.log(keras.ops.clip(p, self.floor, 1.0))

    def get_config(self):
        return {**super().get_config(), "floor": self.floor}


def check_output_activations(teacher, student) -> None:
    """Refuse, in one line, a student one of whose outputs ends in another activation
    than the teacher's (a linear student of a sigmoid teacher would learn probabilities
    as raw outputs, and be scored as a regressor in one place and a classifier in
    another). For :func:`distill_outputs`; the softmax path takes a logits student."""
    for (_, t_act), (name, s_act) in zip(output_activations(teacher),
                                         output_activations(student)):
        if t_act is not None and s_act is not None and t_act != s_act:
            raise CompressError(
                f"student '{student.name}' output '{name}' ends in {s_act} and the "
                f"teacher's in {t_act}: the student learns the teacher's outputs and is "
                f"scored on its task; give the student the teacher's output activation")


def output_activations(model) -> list:
    """Per output of ``model``, ``(the name of the layer making it, its activation)``:
    ``"linear"`` for none, ``"softmax"`` for a ``Softmax`` layer, None for a layer with
    no activation of its own (a Reshape, an Add).

    >>> output_activations(keras.Sequential([keras.Input((4,)),
    ...                                      keras.layers.Dense(2, name="out")]))
    [('out', 'linear')]
    """
    found = []
    for tensor in getattr(model, "outputs", None) or ():
        history = getattr(tensor, "_keras_history", None)
        layer = history.operation if history is not None else None
        name = getattr(layer, "name", None)
        if isinstance(layer, keras.layers.Softmax):
            found.append((name, "softmax"))
        elif isinstance(layer, keras.layers.Layer) and hasattr(layer, "activation"):
            found.append((name, _activation_name(layer) or "linear"))
        else:
            found.append((name, None))
    return found


def _activation_name(layer) -> str | None:
    act = getattr(layer, "activation", None)
    return None if act is None else getattr(act, "__name__", str(act))


def _student_output_kind(student) -> str:
    from compress.training import outputs_probabilities

    if outputs_probabilities(student):
        return "probabilities"
    act = _activation_name(student.layers[-1])
    if act in (None, "linear"):
        return "logits"
    raise CompressError(f"student '{student.name}' ends in a '{act}' activation: it must "
                        "output logits or softmax probabilities")


def _logits_view(model, kind):
    """``(logits_model, restore)``: a view of ``model`` that outputs logits, sharing its
    variables, and a function that undoes any change made to ``model`` for it."""
    last = model.layers[-1]
    if kind == "logits":
        return model, lambda: None
    if isinstance(last, keras.layers.Softmax):
        return keras.Model(model.inputs[0], last.input, name=f"{model.name}_logits"), \
            lambda: None
    original = last.activation
    last.activation = keras.activations.linear

    def restore():
        last.activation = original

    return model, restore


def _check_models(teacher, student, data) -> None:
    from compress.data import check_labels
    from compress.training import check_finite

    for role, m in (("teacher", teacher), ("student", student)):
        if not isinstance(m, keras.Model):
            raise CompressError(f"{role}: must be a keras.Model, got {type(m).__name__}")
        check_finite(m, role)
        if getattr(m, "inputs", None) is None or len(m.inputs) != 1 or len(m.outputs) != 1:
            raise CompressError(f"{role} '{m.name}': only single-input, single-output "
                                "functional or Sequential models are supported")
    t_in, s_in = tuple(teacher.inputs[0].shape[1:]), tuple(student.inputs[0].shape[1:])
    if t_in != s_in:
        raise CompressError(f"teacher input {t_in} and student input {s_in} differ; the "
                            "student must take the teacher's inputs")
    t_out, s_out = tuple(teacher.outputs[0].shape[1:]), tuple(student.outputs[0].shape[1:])
    if t_out != s_out:
        raise CompressError(f"teacher output {t_out} and student output {s_out} differ; "
                            "distillation needs the same classes")
    if len(t_out) != 1 or t_out[0] is None or t_out[0] < 2:
        what = ("has an output at every position (a segmenter, a tagger, a decoder); "
                "distillation here matches one class vector per sample" if len(t_out) > 1
                else "is not a vector of 2 or more classes (one unit: a binary or "
                "regression head), so logits distillation does not apply")
        raise CompressError(f"teacher '{teacher.name}' output shape {t_out} {what}; to shrink "
                            "it, use prune --structured or share with --epochs (they "
                            "fine-tune on the model's own loss)")
    check_labels(teacher, data.num_classes, data.name)
    if data.size("train") == 0:
        raise CompressError(f"{data.name}: no training samples")
    if data.sample_shape != t_in:
        raise CompressError(f"{data.name}: samples of shape {data.sample_shape} "
                            f"do not match the models' input {t_in} (use compress.data.prepare)")


def _parse_pairs(pairs) -> list[tuple[str, str]]:
    """``(teacher_layer, student_layer)`` tuples from ``"teacher_layer:student_layer"``."""
    out = []
    for item in DISTILL_OPTIONS.options["feature_pairs"].check(pairs, "feature_pairs") or []:
        t, sep, s = item.partition(":")
        if not sep or not t.strip() or not s.strip():
            raise CompressError(f"feature pair '{item}': must be TEACHER_LAYER:STUDENT_LAYER")
        out.append((t.strip(), s.strip()))
    return out


def _check_feature_pairs(teacher, student, pairs) -> None:
    for t, s in pairs:
        shapes = []
        for role, m, name in (("teacher", teacher, t), ("student", student, s)):
            try:
                shapes.append(tuple(m.get_layer(name).output.shape[1:]))
            except ValueError:
                names = ", ".join(layer.name for layer in m.layers)
                raise CompressError(f"feature pair {t}:{s}: {role} has no layer '{name}' "
                                    f"(layers: {names})") from None
        if shapes[0] != shapes[1]:
            raise CompressError(f"feature pair {t}:{s}: output shapes {shapes[0]} and "
                                f"{shapes[1]} differ; MSE feature distillation needs equal "
                                "shapes")
