"""Knowledge distillation on ``keras.distillation``: a teacher's soft targets train a student.

- :func:`distill` trains a copy of a student on a teacher's temperature-softened outputs
  and the labels (Hinton, Vinyals and Dean, 2015), through ``keras.distillation.Distiller``.
- :func:`width_student`, :func:`depth_student` and :func:`make_student` derive students.
- ``distill(..., augment="shift")`` is consistent teaching (Beyer et al. 2022): teacher
  and student see the same randomly shifted images (:func:`augmented_batches`).
- :func:`distill_from_options` runs the CLI command and the recipe step from
  :data:`DISTILL_OPTIONS` (student from options, a labels-only baseline, then
  :func:`distill`); :func:`distill_step` is its pass-shaped form.
- Every fit goes through ``compress.training.fit_model``, so ``--checkpoint-dir``,
  ``--keep-last-good`` and ``--strategy`` (``compress.training_context``) apply.

Example:

>>> from compress.distillation import distill, width_student
>>> student, info = distill(teacher, width_student(teacher, 0.25), ds)   # doctest: +SKIP
"""

import importlib

# name -> module; loaded on first use so that importing the package (the CLI does, for
# DISTILL_OPTIONS) does not import Keras.
_WHERE = {
    "DISTILL_OPTIONS": "compress.distillation.options",
    "DISTILL_TRAINING_OPTIONS": "compress.distillation.options",
    "augmented_batches": "compress.distillation.augment",
    "check_augment": "compress.distillation.augment",
    "check_compatible": "compress.distillation.driver",
    "copy_with_constraints": "compress.distillation.driver",
    "distill": "compress.distillation.driver",
    "logits_model": "compress.distillation.driver",
    "make_distiller": "compress.distillation.driver",
    "teacher_output_kind": "compress.distillation.driver",
    "distill_from_options": "compress.distillation.step",
    "distill_step": "compress.distillation.step",
    "train_alone": "compress.distillation.step",
    "depth_student": "compress.distillation.students",
    "make_student": "compress.distillation.students",
    "width_student": "compress.distillation.students",
}

__all__ = [
    "DISTILL_OPTIONS",
    "DISTILL_TRAINING_OPTIONS",
    "augmented_batches",
    "check_augment",
    "check_compatible",
    "copy_with_constraints",
    "depth_student",
    "distill",
    "distill_from_options",
    "distill_step",
    "logits_model",
    "make_distiller",
    "make_student",
    "teacher_output_kind",
    "train_alone",
    "width_student",
]


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'compress.distillation' has no attribute '{name}'")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_WHERE))
