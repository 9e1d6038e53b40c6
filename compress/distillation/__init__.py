"""Knowledge distillation on ``keras.distillation``: a teacher's soft targets train a student.

- :func:`distill` trains a copy of a student on a teacher's temperature-softened outputs
  and the labels (Hinton, Vinyals and Dean, 2015), through ``keras.distillation.Distiller``.
- :func:`width_student`, :func:`depth_student` and :func:`make_student` derive students.
- :func:`distill_step` runs the CLI command / recipe step from :data:`DISTILL_OPTIONS`
  (student from options, a labels-only baseline, then :func:`distill`).

Example:

>>> from compress.distillation import distill, width_student
>>> student, info = distill(teacher, width_student(teacher, 0.25), ds)   # doctest: +SKIP
"""

from compress.distillation.driver import (
    DISTILL_OPTIONS,
    check_compatible,
    copy_with_constraints,
    distill,
    logits_model,
    make_distiller,
    teacher_output_kind,
)
from compress.distillation.step import distill_from_options, distill_step, train_alone
from compress.distillation.students import depth_student, make_student, width_student

__all__ = [
    "DISTILL_OPTIONS",
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
