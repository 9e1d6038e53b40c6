"""compress.distillation.driver: distill() on keras.distillation, logits, constraints, errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from compress import training
from compress.distillation import (
    DISTILL_OPTIONS,
    copy_with_constraints,
    distill,
    logits_model,
    make_distiller,
    teacher_output_kind,
)
from compress.errors import CompressError


def _mlp(hidden=(32, 16), activation="softmax", name="mlp", classes=10):
    layers = [keras.Input((64,))]
    layers += [keras.layers.Dense(h, activation="relu", name=f"fc{i + 1}")
               for i, h in enumerate(hidden)]
    layers.append(keras.layers.Dense(classes, activation=activation, name="predictions"))
    return keras.Sequential(layers, name=name)


@pytest.fixture(scope="module")
def flat_digits(digits):
    from compress.data import prepare

    return prepare(_mlp(), digits)


@pytest.fixture(scope="module")
def teacher(flat_digits):
    training.set_seed(0)
    model = _mlp((64, 32), name="teacher")
    training.compile_classifier(model, learning_rate=3e-3)
    training.fit(model, flat_digits, epochs=8, verbose=0)
    return model


class KeepZeros(keras.constraints.Constraint):
    """Holds the zeros of a mask, as pruning does."""

    def __init__(self, mask):
        self.mask = np.asarray(mask, dtype="float32")

    def __call__(self, w):
        return w * self.mask


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def test_logits_model_is_exact_for_a_softmax_teacher(teacher, flat_digits):
    before = _weights(teacher)
    logits = logits_model(teacher, teacher_output_kind(teacher))
    x = flat_digits.x_test[:32]
    z = np.asarray(logits(x))
    np.testing.assert_allclose(keras.ops.softmax(z).numpy(), np.asarray(teacher(x)), atol=1e-6)
    assert np.abs(z.sum(axis=1) - 1.0).max() > 0.1  # logits, not probabilities
    # The teacher itself is untouched.
    assert teacher.layers[-1].activation.__name__ == "softmax"
    for a, b in zip(before, _weights(teacher)):
        np.testing.assert_array_equal(a, b)


def test_logits_model_from_a_softmax_layer_and_from_forced_probabilities(flat_digits):
    training.set_seed(1)
    inp = keras.Input((64,))
    z = keras.layers.Dense(10, name="dense")(inp)
    with_layer = keras.Model(inp, keras.layers.Softmax(name="softmax")(z))
    assert teacher_output_kind(with_layer) == "probabilities"
    x = flat_digits.x_test[:16]
    exact = np.asarray(logits_model(with_layer, "probabilities")(x))
    np.testing.assert_allclose(exact, np.asarray(keras.Model(inp, z)(x)), atol=1e-5)

    # A softmax hidden behind another layer: "auto" cannot see it, the flag can; the
    # log-probability fallback gives logits up to a per-row constant.
    hidden = keras.Model(inp, keras.layers.Identity(name="id")(keras.layers.Softmax()(z)))
    assert teacher_output_kind(hidden) == "logits"
    approx = np.asarray(logits_model(hidden, "probabilities")(x))
    shift = approx - exact
    np.testing.assert_allclose(shift, shift[:, :1] * np.ones_like(shift), atol=1e-4)


def test_distill_trains_a_copy_and_keeps_the_output_activation(teacher, flat_digits):
    training.set_seed(0)
    student = _mlp((16, 8), name="student")
    student_before, teacher_before = _weights(student), _weights(teacher)
    out, info = distill(teacher, student, flat_digits, epochs=2, learning_rate=3e-3)
    assert out is not student
    for a, b in zip(student_before, _weights(student)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(teacher_before, _weights(teacher)):
        np.testing.assert_array_equal(a, b)
    assert teacher.trainable and student.layers[-1].activation.__name__ == "softmax"
    assert out.layers[-1].activation.__name__ == "softmax"
    p = np.asarray(out(flat_digits.x_test[:8]))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert any(not np.array_equal(a, b) for a, b in zip(student_before, _weights(out)))
    assert info["teacher_outputs"] == "probabilities" and info["epochs_run"] == 2
    assert set(info["history"]) >= {"loss", "distillation_loss", "student_loss"}
    import json

    json.dumps(info)


def test_teacher_alone_teaches_without_labels(teacher, flat_digits):
    """alpha=1 ignores the labels: any accuracy above chance came from the teacher."""
    training.set_seed(0)
    _out, info = distill(teacher, _mlp((32, 16), name="student"), flat_digits, alpha=1.0,
                        temperature=2.0, epochs=6, learning_rate=3e-3)
    assert info["teacher_accuracy"] > 0.85
    assert info["student_accuracy"] > 0.75
    assert max(info["history"]["student_loss"]) == 0.0  # the label term was never computed


def test_constraints_of_the_student_hold_during_distillation(teacher, flat_digits):
    training.set_seed(0)
    student = _mlp((16, 8), name="student")
    rng = np.random.default_rng(0)
    mask = (rng.random(student.get_layer("fc1").kernel.shape) > 0.9).astype("float32")
    student.get_layer("fc1").kernel.assign(student.get_layer("fc1").kernel * mask)
    student.get_layer("fc1").kernel.constraint = KeepZeros(mask)
    student.get_layer("fc2").kernel.constraint = keras.constraints.NonNeg()
    out, info = distill(teacher, student, flat_digits, epochs=2, learning_rate=1e-2)
    assert info["constrained_variables"] == 2
    k1, k2 = np.asarray(out.get_layer("fc1").kernel), np.asarray(out.get_layer("fc2").kernel)
    assert np.all(k1[mask == 0] == 0.0)
    assert not np.allclose(k1[mask == 1], np.asarray(student.get_layer("fc1").kernel)[mask == 1])
    assert k2.min() >= 0.0 and np.count_nonzero(k2) > 0
    assert isinstance(out.get_layer("fc2").kernel.constraint, keras.constraints.NonNeg)
    # The given student still has its own untouched zeros and constraint.
    assert student.get_layer("fc1").kernel.constraint is not None


def test_copy_with_constraints_carries_variable_constraints():
    model = _mlp((8, 4))
    model.get_layer("fc1").kernel.constraint = keras.constraints.NonNeg()
    clone = copy_with_constraints(model)
    assert isinstance(clone.get_layer("fc1").kernel.constraint, keras.constraints.NonNeg)
    assert clone.get_layer("fc2").kernel.constraint is None


def test_logits_teacher_and_logits_student(flat_digits):
    training.set_seed(0)
    teacher = _mlp((32,), activation=None, name="logit_teacher")
    training.compile_classifier(teacher, learning_rate=3e-3)
    training.fit(teacher, flat_digits, epochs=4, verbose=0)
    assert teacher_output_kind(teacher) == "logits"
    out, info = distill(teacher, _mlp((16,), activation=None), flat_digits, epochs=2,
                        learning_rate=3e-3)
    assert info["teacher_outputs"] == "logits" and info["student_outputs"] == "logits"
    assert out.layers[-1].activation.__name__ == "linear"
    # 2 epochs: 0.31 to 0.52 over seeds 0-4 (chance 0.1)
    assert info["student_accuracy"] > 0.25


def test_distiller_loss_is_hintons_formula(teacher, flat_digits):
    """The Distiller we build computes alpha*T^2*KL(p_t^T || p_s^T) + (1-alpha)*CE(y, p_s)."""
    training.set_seed(0)
    t_logits = logits_model(teacher, "probabilities")
    student = _mlp((16,), activation=None)
    T, alpha = 3.0, 0.7
    distiller = make_distiller(t_logits, student, T, alpha)
    distiller.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = flat_digits.x_train[:64], flat_digits.y_train[:64]
    got = float(distiller.compute_loss(x, y, student(x), training=False))

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    zt, zs = np.asarray(t_logits(x), "float64"), np.asarray(student(x), "float64")
    pt, ps = softmax(zt / T), softmax(zs / T)
    kl = np.mean(np.sum(pt * np.log(pt / ps), axis=1))
    ce = np.mean(-np.log(softmax(zs)[np.arange(len(y)), y]))
    np.testing.assert_allclose(got, alpha * T**2 * kl + (1 - alpha) * ce, rtol=1e-4)


def test_feature_pairs_pull_intermediate_features_together(teacher, flat_digits):
    x = flat_digits.x_test[:128]

    def feature_mse(model):
        t = keras.Model(teacher.inputs[0], teacher.get_layer("fc2").output)(x)
        s = keras.Model(model.inputs[0], model.get_layer("fc2").output)(x)
        return float(np.mean((np.asarray(t) - np.asarray(s)) ** 2))

    runs = {}
    for pairs in (None, ["fc2:fc2"]):
        training.set_seed(0)
        student = _mlp((16, 32), name="student")  # fc2 as wide as the teacher's
        out, info = distill(teacher, student, flat_digits, epochs=3, learning_rate=3e-3,
                            feature_pairs=pairs)
        runs[bool(pairs)] = feature_mse(out)
    assert info["feature_pairs"] == ["fc2:fc2"]
    assert runs[True] < 0.85 * runs[False]  # 2.16 vs 2.87 when written (deterministic)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.0}, "temperature: must be > 0.0"),
    ({"temperature": -1.0}, "temperature"),
    ({"alpha": 1.5}, "alpha: must be in [0.0, 1.0]"),
    ({"alpha": -0.1}, "alpha"),
    ({"teacher_outputs": "scores"}, "teacher_outputs"),
    ({"feature_pairs": ["fc2"]}, "TEACHER_LAYER:STUDENT_LAYER"),
    ({"feature_pairs": ["fc2:nope"]}, "student has no layer 'nope'"),
    ({"feature_pairs": ["fc1:fc1"]}, "differ"),
])
def test_bad_options_are_one_line_errors(teacher, flat_digits, kwargs, message):
    with pytest.raises(CompressError) as err:
        distill(teacher, _mlp((16, 8)), flat_digits, epochs=1, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_mismatched_or_non_classifier_models_are_refused(teacher, flat_digits):
    with pytest.raises(CompressError, match="output .* differ"):
        distill(teacher, _mlp((16,), classes=12), flat_digits, epochs=1)
    small_input = keras.Sequential([keras.Input((32,)), keras.layers.Dense(10)])
    with pytest.raises(CompressError, match="input .* differ"):
        distill(teacher, small_input, flat_digits, epochs=1)
    relu = _mlp((16,), activation="relu", name="rectified")  # (sigmoids: multi-label)
    with pytest.raises(CompressError, match="ends in a 'relu' activation: not class logits"):
        distill(relu, _mlp((8,), activation="relu"), flat_digits, epochs=1)


def test_a_regressor_distills_on_mse_to_its_teacher(cli, tmp_path):
    """A one-unit regressor (a forecaster, a TCN) was refused: "logits distillation does
    not apply". It now distills as models with several outputs do: MSE to the teacher's
    outputs plus the model's own loss; the report scores MSE and MAE, and names no
    temperature (there are no classes to soften)."""
    import json

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(900, 8)).astype("float32")
    y = (x @ rng.normal(size=8) + np.sin(3 * x[:, 0])).astype("float32")[:, None]
    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(64, "relu"),
                                keras.layers.Dense(64, "relu"), keras.layers.Dense(1)],
                               name="reg")
    teacher.compile(keras.optimizers.Adam(3e-3), "mse")
    teacher.fit(x[:700], y[:700], epochs=40, batch_size=32, verbose=0)
    teacher.save(tmp_path / "reg.keras")
    np.savez(tmp_path / "reg.npz", x_train=x[:600], y_train=y[:600], x_val=x[600:700],
             y_val=y[600:700], x_test=x[700:], y_test=y[700:])
    r = cli("distill", tmp_path / "reg.keras", "-o", tmp_path / "small.keras", "--data",
            f"npz:{tmp_path}/reg.npz", "--width", "0.25", "--epochs", "30",
            "--learning-rate", "0.003", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)["pass"]
    assert info["temperature_used"] is False and "MSE to the teacher" in info["loss"]
    assert info["student_params"] < info["teacher_params"] / 4
    losses = info["history"]["loss"]  # logged as trained (it read 0.0 every epoch)
    assert losses[-1] < losses[0] and min(losses) > 0
    variance = float(np.var(y[700:]))
    assert info["teacher_scores"]["mse"] < 0.1 * variance
    assert info["student_scores"]["mse"] < 0.3 * variance  # learned, from the teacher
    text = cli("distill", tmp_path / "reg.keras", "-o", tmp_path / "small2.keras", "--data",
               f"npz:{tmp_path}/reg.npz", "--width", "0.25", "--epochs", "1").output
    assert "T=" not in text and "loss: MSE to the teacher's outputs" in " ".join(text.split())


def test_a_several_unit_regressor_or_logit_tagger_is_not_taken_for_class_logits():
    """Three linear units compiled with MSE (or four logit tags with a binary
    cross-entropy from logits) went down the softmax path: with labels a Keras rank error
    ("target.ndim - 1"), without labels softmax-KL and cross-entropy on the teacher's
    argmax, a student 1.5 dB from its teacher."""
    from compress.distillation import distill, width_student
    from compress.distillation.driver import per_output

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 3)) + np.array([2.0, -1.0, 0.5])).astype("float32")
    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, "relu"),
                                keras.layers.Dense(3)], name="reg3")
    teacher.compile(keras.optimizers.Adam(3e-3), "mse")
    teacher.fit(x[:500], y[:500], epochs=30, verbose=0)
    tagger = keras.models.clone_model(teacher)
    tagger.compile("adam", keras.losses.BinaryCrossentropy(from_logits=True))
    assert per_output(teacher) and per_output(tagger)
    uncompiled = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    assert per_output(uncompiled, (x, y)) and not per_output(uncompiled)  # targets decide
    for data in ((x[:500], y[:500]), x[:500]):  # labelled, then the teacher's outputs only
        student, info = distill(teacher, width_student(teacher, 0.5), data, epochs=40,
                                learning_rate=3e-3)
        assert "MSE to the teacher" in info["loss"]
        got, want = student.predict(x[500:], verbose=0), teacher.predict(x[500:], verbose=0)
        assert np.mean((got - want) ** 2) < 0.1 * np.var(want)


def test_a_student_whose_output_activation_differs_from_the_teachers_is_refused(cli,
                                                                                  tmp_path):
    """A sigmoid teacher and a linear student: it trained the student's raw outputs on the
    teacher's probabilities, and the report scored it as a regressor in one table and as
    a classifier in another."""
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(200, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, "relu"),
                                keras.layers.Dense(1, "sigmoid")], name="binary")
    teacher.compile("adam", "binary_crossentropy")
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, "relu"),
                                keras.layers.Dense(1, name="score")], name="linear")
    teacher.save(tmp_path / "t.keras")
    student.save(tmp_path / "s.keras")
    np.savez(tmp_path / "d.npz", x_train=x[:150], y_train=y[:150], x_test=x[150:],
             y_test=y[150:])
    result = cli("distill", tmp_path / "t.keras", "-o", tmp_path / "out.keras", "--student",
                 tmp_path / "s.keras", "--data", f"npz:{tmp_path}/d.npz", "--epochs", "1")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "error: student 'linear' output 'score' ends in linear and the teacher's in "
        "sigmoid: the student learns the teacher's outputs and is scored on its task; give "
        "the student the teacher's output activation"), result.output
    assert "loss:" not in result.output  # refused before the student-alone baseline
    assert not (tmp_path / "out.keras").exists()


def test_a_multi_label_teacher_distills_label_by_label():
    """A multi-label head (5 sigmoids, binary cross-entropy) was refused: "ends in a
    'sigmoid' activation ... pass teacher_outputs='logits' to force it", which would
    have softened the labels as if they were one softmax. It distills as a regressor's
    output does: MSE to the teacher's probabilities plus its own loss."""
    from compress.distillation import distill, width_student
    from compress.distillation.driver import per_output

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 12)).astype("float32")
    y = (x @ rng.normal(size=(12, 5)) > 0.5).astype("float32")
    teacher = keras.Sequential([keras.Input((12,)), keras.layers.Dense(32, "relu"),
                                keras.layers.Dense(5, "sigmoid")], name="tags")
    teacher.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    teacher.fit(x[:500], y[:500], epochs=20, verbose=0)
    assert per_output(teacher)
    student, info = distill(teacher, width_student(teacher, 0.5), (x[:500], y[:500]),
                            epochs=15, learning_rate=3e-3)
    assert info["temperature_used"] is False and "MSE to the teacher" in info["loss"]
    agree = np.mean((student.predict(x[500:], verbose=0) > 0.5) ==
                    (teacher.predict(x[500:], verbose=0) > 0.5))
    assert agree > 0.85  # label by label, the student learned the teacher's answers


def test_schema_serves_recipe_steps():
    opts = DISTILL_OPTIONS.validate({"temperature": 2, "width": 0.5})
    assert opts["temperature"] == 2.0 and opts["alpha"] == 0.9 and opts["width"] == 0.5
    with pytest.raises(CompressError, match=r"steps\[1\].distill.temperature"):
        DISTILL_OPTIONS.validate({"temperature": 0}, path="steps[1].distill")
    with pytest.raises(CompressError, match="unknown option"):
        DISTILL_OPTIONS.validate({"temprature": 2})


def test_distill_step_runs_recipe_options(teacher, flat_digits, tmp_path):
    from compress.distillation import distill_step

    path = tmp_path / "small.keras"
    _mlp((8,), name="small").save(path)
    out, info = distill_step(teacher, flat_digits, student=str(path), epochs=1, seed=0,
                             learning_rate=3e-3)
    assert info["student_source"] == str(path) and out.get_layer("fc1").units == 8
    assert 0.0 <= info["student_alone_accuracy"] <= 1.0 and "gap_closed" in info
    out, info = distill_step(teacher, flat_digits, width=0.5, epochs=1, baseline=False)
    assert out.get_layer("fc1").units == 32 and "student_alone_accuracy" not in info
    with pytest.raises(CompressError, match="unknown option"):
        distill_step(teacher, flat_digits, temprature=1.0)
