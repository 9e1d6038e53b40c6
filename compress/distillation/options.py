"""The options of distillation, shared by ``compress distill``, recipes and Python.

:data:`DISTILL_OPTIONS` is the distill step's schema (the CLI flags, the recipe step,
``distill_step``'s keyword arguments); :data:`DISTILL_TRAINING_OPTIONS` is the part of it
that trains a given student (``distill``'s keyword arguments): one declaration of each
option. Kept apart from the Keras code so that the CLI can build its flags without
importing TensorFlow (``compress --help`` stays fast).

Example:

>>> from compress.distillation.options import DISTILL_OPTIONS
>>> DISTILL_OPTIONS.validate({"temperature": 2})["alpha"]
0.9
"""

from compress.options import Option, Schema
from compress.passes import Pass

_OPTIONS = [
    Option("temperature", float, 4.0, "softmax temperature T of the soft targets",
           low=0.0, low_inclusive=False),
    Option("alpha", float, 0.9, "weight of the distillation term (1 - alpha weighs the "
           "cross-entropy on labels)", low=0.0, high=1.0),
    Option("epochs", int, 10, "training epochs of the student", low=1),
    Option("learning_rate", float, 1e-3, "Adam learning rate of the student",
           low=0.0, low_inclusive=False),
    Option("batch_size", int, 64, "training batch size", low=1),
    Option("student", str, None, "student model file (default: derive one from the teacher)",
           file=True),
    Option("width", float, None, "derive the student by scaling every hidden Dense/Conv "
           "width by this factor", low=0.0, low_inclusive=False, high=4.0),
    Option("depth", int, None, "derive the student by dropping this many hidden blocks",
           low=1),
    Option("teacher_outputs", str, "auto", "what the teacher outputs (auto: softmax last "
           "activation means probabilities)", choices=("auto", "logits", "probabilities")),
    Option("feature_pairs", list, None, "intermediate layers to match with MSE, as "
           "TEACHER_LAYER:STUDENT_LAYER pairs"),
    Option("augment", str, "none", "consistent teaching (Beyer et al. 2022): train on "
           "randomly shifted images, the teacher scoring the same shifted view as the student "
           "(and the baseline trained on the same batches)", choices=("none", "shift")),
    Option("shift", int, 2, "largest random shift in pixels with --augment shift", low=1),
    Option("baseline", bool, True, "also train the same student on labels alone (same "
           "epochs), to report what distillation adds"),
    Option("seed", int, 0, "seed set before the baseline and before distillation, so both "
           "see the same shuffles (the CLI's --seed)", low=0, cli=False),
]

# Options of the step (which student, what is reported, seeding), not of training a
# given student.
STEP_OPTIONS = ("student", "width", "depth", "baseline", "seed")

DISTILL_OPTIONS = Schema("distill", _OPTIONS)
DISTILL_TRAINING_OPTIONS = Schema("distill", [o for o in _OPTIONS
                                              if o.name not in STEP_OPTIONS])


def needs_data(opts: dict) -> list[str]:
    """Distillation always trains the student on data."""
    return ["distillation"]


PASS = Pass("distill", "train a smaller student on the model's soft targets (Hinton et al.)",
            "compress.distillation.step:distill_step", DISTILL_OPTIONS, needs_data=needs_data,
            trains=True, takes_callbacks=True, loads_files=True, order=50)
