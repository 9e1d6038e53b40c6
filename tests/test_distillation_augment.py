"""compress.distillation.augment: shifted batches, and consistent teaching through distill()."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from compress import training
from compress.data import prepare
from compress.distillation import distill, distill_step, train_alone
from compress.distillation.augment import augmented_batches, check_augment
from compress.errors import CompressError


def _dots(n=6, size=7):
    """Images with one lit pixel in the middle, labelled by index."""
    x = np.zeros((n, size, size, 1), "float32")
    x[:, size // 2, size // 2, 0] = np.arange(1, n + 1)
    return x, np.arange(n)


def _positions(batches):
    out = []
    for xb, yb in batches:
        for image, label in zip(xb.numpy(), yb.numpy()):
            (r, c, _), = np.argwhere(image)
            out.append((int(label), int(r), int(c), float(image[r, c, 0])))
    return sorted(out)


def test_shift_moves_each_image_by_whole_pixels_within_the_bound():
    x, y = _dots()
    batches = augmented_batches(x, y, "shift", shift=2, batch_size=4, seed=3)
    seen = set()
    for _ in range(5):
        pos = _positions(batches)
        assert [p[0] for p in pos] == list(range(6))          # every sample, once
        for label, r, c, value in pos:
            assert value == label + 1                          # the image stays with its label
            assert abs(r - 3) <= 2 and abs(c - 3) <= 2         # moved by at most 2 pixels
            seen.add((r, c))
    assert len(seen) > 5    # new shifts every epoch, on both axes


def test_shift_is_repeatable_with_a_seed_and_none_only_shuffles():
    x, y = _dots()
    a = _positions(augmented_batches(x, y, "shift", 1, 4, seed=7))
    b = _positions(augmented_batches(x, y, "shift", 1, 4, seed=7))
    assert a == b
    plain = _positions(augmented_batches(x, y, "none", 1, 4, seed=7))
    assert plain == [(i, 3, 3, i + 1.0) for i in range(6)]


def test_a_fit_on_shifted_batches_is_not_taken_for_an_interrupted_one():
    """Keras took the end of a first epoch of unknown length for an interruption: "Your
    input ran out of data; interrupting training" after every complete first epoch."""
    import warnings

    from compress.data import Dataset

    x, y = _dots()
    data = Dataset("dots", x, y, x[:2], y[:2], x[:2], y[:2], 6)  # read batch by batch
    batches = augmented_batches(data, None, "shift", 1, 4, seed=7)
    assert int(batches.cardinality()) == 2  # 6 samples in batches of 4
    model = keras.Sequential([keras.Input((7, 7, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(6, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(batches, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    assert not [w for w in caught if "ran out of data" in str(w.message)]


def test_shift_of_images_without_a_channel_axis():
    x, y = _dots()
    pos = _positions(augmented_batches(x[..., 0], y, "shift", 1, 6, seed=0)
                     .map(lambda a, b: (a[..., None], b)))
    assert all(abs(r - 3) <= 1 and abs(c - 3) <= 1 for _, r, c, _ in pos)


@pytest.mark.parametrize("augment, shift, shape, message", [
    ("flip", 2, (8, 8, 1), "augment: must be one of none, shift"),
    ("shift", 0, (8, 8, 1), r"shift: must be >= 1"),
    ("shift", 2, (64,), "needs image inputs"),
    ("shift", 8, (8, 8, 1), "too small"),
])
def test_check_augment_refuses_what_cannot_be_shifted(augment, shift, shape, message):
    with pytest.raises(CompressError, match=message):
        check_augment(augment, shift, shape)


def _image_mlp(hidden, name):
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(hidden, activation="relu", name="fc1"),
                             keras.layers.Dense(10, activation="softmax", name="predictions")],
                            name=name)


@pytest.fixture(scope="module")
def image_digits(digits):
    return prepare(_image_mlp(4, "probe"), digits)


def _soft_loss(teacher, student, ds):
    """The KL term of one epoch at a negligible learning rate (the student stays put)."""
    _, info = distill(teacher, student, ds, alpha=1.0, temperature=2.0, epochs=1,
                      learning_rate=1e-9, augment="shift", shift=2)
    assert info["augment"] == "shift" and info["shift"] == 2
    return info["history"]["distillation_loss"][0]


def test_the_teacher_scores_the_same_shifted_view_as_the_student(image_digits):
    training.set_seed(0)
    teacher = _image_mlp(24, "teacher")
    training.compile_classifier(teacher, learning_rate=5e-3)
    training.fit(teacher, image_digits, epochs=2, verbose=0)
    student = training.copy_model(teacher)
    # A student identical to its teacher: zero KL on every batch only if the teacher sees
    # exactly the student's shifted view.
    same = _soft_loss(teacher, student, image_digits)
    # The same weights behind a fixed 1-pixel shift: a different view gives a clear KL.
    moved = keras.Sequential([keras.Input((8, 8, 1)),
                              keras.layers.ZeroPadding2D(((1, 0), (1, 0))),
                              keras.layers.Cropping2D(((0, 1), (0, 1))),
                              keras.layers.Flatten(),
                              keras.layers.Dense(24, activation="relu", name="fc1"),
                              keras.layers.Dense(10, activation="softmax", name="predictions")])
    moved.set_weights(teacher.get_weights())
    other = _soft_loss(moved, student, image_digits)
    assert same < 1e-6
    assert other > 1e-2


def test_distill_step_trains_the_baseline_on_the_same_shifted_batches(image_digits):
    training.set_seed(0)
    teacher = _image_mlp(32, "teacher")
    training.compile_classifier(teacher, learning_rate=5e-3)
    training.fit(teacher, image_digits, epochs=3, verbose=0)
    before = [w.copy() for w in teacher.get_weights()]
    student, info = distill_step(teacher, image_digits, width=0.5, epochs=2,
                                 learning_rate=5e-3, augment="shift", shift=1, seed=0)
    assert info["augment"] == "shift" and info["shift"] == 1
    assert 0.0 <= info["student_alone_accuracy"] <= 1.0
    # it learned from shifted digits: 0.47 to 0.61 over seeds 0-3 (chance 0.1)
    assert info["student_accuracy"] > 0.4
    assert student.get_layer("fc1").units == 16
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_train_alone_on_shifted_batches_learns_and_keeps_constraints(image_digits):
    training.set_seed(1)
    init = _image_mlp(16, "s")
    mask = np.ones_like(init.get_layer("fc1").kernel.numpy())
    mask[:, ::2] = 0.0
    init.get_layer("fc1").kernel.constraint = lambda w: w * mask
    start = training.accuracy(init, image_digits.x_test, image_digits.y_test)
    model = train_alone(init, image_digits, epochs=3, learning_rate=5e-3, augment="shift",
                        shift=1)
    # 8 of 16 hidden units held at zero, 3 epochs of shifted 8x8 digits: well above chance.
    assert training.accuracy(model, image_digits.x_test, image_digits.y_test) > start + 0.15
    assert np.all(model.get_layer("fc1").kernel.numpy()[:, ::2] == 0.0)


def test_distill_refuses_shift_on_flat_inputs_before_training(digits):
    flat = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    ds = prepare(flat, digits)
    with pytest.raises(CompressError, match="needs image inputs"):
        distill(flat, training.copy_model(flat), ds, augment="shift")
    with pytest.raises(CompressError, match="distill.augment"):
        distill(flat, training.copy_model(flat), ds, augment="mixup")
