"""The distill step as the CLI and recipes run it: student from options, baseline, distill.

:func:`distill_from_options` is the one place that turns :data:`DISTILL_OPTIONS` into a
run: it loads (with the caller's ``unsafe``) or derives the student, trains the
labels-only baseline when ``baseline`` is on, and distills. ``compress distill`` and the
recipe step both call it; :func:`distill_step` is its pass-shaped form.

Example:

>>> from compress.distillation import distill_step
>>> student, info = distill_step(teacher, ds, width=0.25, epochs=10)   # doctest: +SKIP
>>> info["distilled_accuracy"] - info["student_alone_accuracy"]        # doctest: +SKIP
0.012
"""

from __future__ import annotations

from compress.distillation.augment import check_augment
from compress.distillation.driver import check_compatible, copy_with_constraints, distill
from compress.distillation.options import DISTILL_OPTIONS, DISTILL_TRAINING_OPTIONS
from compress.distillation.students import make_student


def train_alone(student, data, epochs: int = 10, learning_rate: float = 1e-3,
                batch_size: int = 64, verbose: int | str = 0, augment: str = "none",
                shift: int = 2):
    """A copy of ``student`` trained on the labels alone (cross-entropy, Adam).

    The reference distillation is measured against: same initial weights, same epochs,
    same optimizer, same augmentation, no teacher. Variable constraints are kept, as in
    :func:`distill`.

    Example:

    >>> alone = train_alone(student, ds, epochs=20, augment="shift")   # doctest: +SKIP

    Args:
        student: keras.Model. Never modified.
        data: compress.data.Dataset prepared for the model.
        epochs: int, default 10.
        learning_rate: float, default 1e-3.
        batch_size: int, default 64.
        verbose: int or str, default 0.
        augment: str, default ``"none"``. ``"shift"``: the randomly shifted batches
            :func:`distill` trains on with ``augment="shift"`` (hard labels only here).
        shift: int, default 2. Largest shift in pixels.
    """
    from compress import training
    from compress.distillation.augment import augmented_batches

    check_augment(augment, shift, student.inputs[0].shape[1:])
    model = copy_with_constraints(student)
    from compress.task import resolve, sample_targets

    resolve(student, y=sample_targets(data)).compile(model, learning_rate=learning_rate)
    if augment == "none":
        training.fit(model, data, epochs=epochs, batch_size=batch_size, verbose=verbose)
    else:
        has_val = data.size("val") is None or data.size("val") > 0  # None: a stream
        training.fit_model(
            model, augmented_batches(data, None, augment, shift, batch_size),  # streamed
            epochs=epochs, verbose=verbose, shuffle=False,
            validation_data=data.batches("val", batch_size) if has_val else None)
    # Hand back an uncompiled model like distill() does (a compiled one saves its optimizer).
    return copy_with_constraints(model)


def distill_step(teacher, data, *more, callbacks=None, verbose: int | str = 0,
                 unsafe: bool = False, **options):
    """Build the student the options ask for, distill it, and compare with it trained alone.

    The pass-shaped form of :func:`distill_from_options` (which ``compress distill``
    and the recipe step call, and which also returns the student trained alone).

    Example:

    >>> student, info = distill_step(teacher, ds, student="small.keras",   # doctest: +SKIP
    ...                              temperature=2.0, baseline=False)

    Args:
        teacher: keras.Model. Never modified.
        data: compress.data.Dataset prepared for the teacher.
        callbacks: list of keras callbacks, default None. Passed to :func:`distill`.
        verbose: int or str, default 0. Keras ``fit`` verbosity.
        unsafe: bool, default False. Load a ``student`` file with Keras safe_mode off.
        **options: see ``DISTILL_OPTIONS``: ``student`` (a model file), ``width``,
            ``depth`` (the default student is ``width=0.25``), ``temperature``, ``alpha``,
            ``epochs``, ``learning_rate``, ``batch_size``, ``teacher_outputs``,
            ``feature_pairs``, ``augment`` and ``shift`` (consistent teaching on shifted
            images; the baseline then trains on the same shifted batches), ``baseline``
            (True: also train the student alone and report both accuracies), ``seed``
            (0: set before each training run, so the baseline and the distilled student
            see the same shuffles).

    Returns:
        ``(student_model, info)`` as :func:`distill`, with ``student_source`` and, with a
        baseline, ``student_alone_accuracy`` and ``gap_closed``.

    Raises:
        CompressError: bad options or models, before any training.
    """
    import keras

    from compress.errors import CompressError

    if more or isinstance(data, keras.Model):  # distill(teacher, student, data)
        raise CompressError("compress.distill(teacher, data, **options) builds its student "
                            "from the options (student='file.keras', width, depth); to "
                            "distill into a student model of yours, call "
                            "compress.distillation.distill(teacher, student, data)")
    distilled, _, info = distill_from_options(teacher, data, options, callbacks=callbacks,
                                              verbose=verbose, unsafe=unsafe)
    return distilled, info


def distill_from_options(teacher, data, options: dict, *, callbacks=None,
                         verbose: int | str = 0, unsafe: bool = False):
    """Run the distill step from its options; the CLI and the recipe step both call this.

    Example:

    >>> distilled, alone, info = distill_from_options(              # doctest: +SKIP
    ...     teacher, ds, {"width": 0.25, "epochs": 10, "seed": 0})

    Args:
        teacher: keras.Model. Never modified.
        data: compress.data.Dataset prepared for the teacher.
        options: dict. Validated by :data:`DISTILL_OPTIONS` (see :func:`distill_step`).
        callbacks, verbose, unsafe: as :func:`distill_step`.

    Returns:
        ``(distilled, alone, info)``: the distilled student, the same student trained on
        the labels alone (None without ``baseline``), and :func:`distill_step`'s info.
    """
    from compress import io, training

    opts = DISTILL_OPTIONS.validate(options)
    from compress.data import as_dataset, prepare

    data = as_dataset(data)  # a tf.data.Dataset, arrays, (x, y), a name: one form
    given = io.load_model(opts["student"], unsafe=unsafe) if opts["student"] else None
    from compress.distillation.driver import per_output

    multi = per_output(teacher, data)
    if multi and given is None and opts["width"] is None and opts["depth"] is None:
        student, source = pruned_student(teacher, data)
    else:
        student = make_student(teacher, student=given, width=opts["width"],
                               depth=opts["depth"])
        source = None
    if multi:  # before the student-alone baseline trains
        from compress.distillation.driver import check_output_activations

        check_output_activations(teacher, student)
    else:
        check_compatible(teacher, student, data, opts["teacher_outputs"],
                         opts["feature_pairs"])
    data = prepare(teacher, data)  # the models are checked first, in their own words
    if not multi:
        check_augment(opts["augment"], opts["shift"], student.inputs[0].shape[1:])
    fit = {k: opts[k] for k in DISTILL_TRAINING_OPTIONS.names()}
    alone = None
    # No labels: nothing to train the student alone on (said in the info).
    unlabelled = opts["baseline"] and not getattr(data, "labelled", True)
    if opts["baseline"] and not unlabelled:
        training.set_seed(opts["seed"])
        alone = train_alone(student, data, opts["epochs"], opts["learning_rate"],
                            opts["batch_size"], verbose=verbose, augment=opts["augment"],
                            shift=opts["shift"])
    training.set_seed(opts["seed"])
    distilled, info = distill(teacher, student, data, callbacks=callbacks, verbose=verbose,
                              **fit)
    info["student_source"] = (opts["student"] or source or
                              (f"depth -{opts['depth']}" if opts["depth"] else
                               f"width x{opts['width'] or 0.25:g}"))
    if unlabelled:
        info["baseline"] = "skipped: the data has no labels to train the student alone on"
    if alone is not None and "student_scores" in info:  # several outputs: own scores
        info["student_alone_scores"] = info_scores(alone, teacher, data)
    if alone is not None and "student_accuracy" in info:
        alone_acc = training.accuracy(alone, data.x_test, data.y_test)
        info["student_alone_accuracy"] = alone_acc
        gap = info["teacher_accuracy"] - alone_acc
        info["gap_closed"] = (info["student_accuracy"] - alone_acc) / gap if gap > 0 else None
    return distilled, alone, info


def info_scores(model, teacher, data) -> dict:
    """``model``'s scores on the test split, on the teacher's task (per output)."""
    from compress.task import resolve, sample_targets

    return resolve(teacher, y=sample_targets(data)).evaluate_data(model, data, "test")


def pruned_student(teacher, data, fraction: float = 0.5):
    """``(student, source)``: the default student of a model that no builder can shrink
    (several inputs or outputs): a structurally pruned copy of the teacher (``fraction``
    of the prunable units removed), else, when structured pruning cannot shrink it, the
    width-scaled copy (x0.5, fresh weights).
    """
    from compress.errors import CompressError
    from compress.pruning import prune

    try:
        student, _ = prune(teacher, data, structured=True, sparsity=fraction)
        if student.count_params() < teacher.count_params():
            return student, f"structurally pruned copy ({fraction:.0%} of the units removed)"
    except CompressError:
        pass
    note = f"width x{fraction:g} (structured pruning could not shrink it)"
    return make_student(teacher, width=fraction), note

