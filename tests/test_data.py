"""compress.data: offline datasets, seeded splits, shape fitting, npz safety."""

import numpy as np
import pytest

from compress.data import fit_to_model, load_data, prepare
from compress.errors import CompressError


def test_mnist5k_split_sizes_and_determinism():
    a, b = load_data("mnist5k", seed=3), load_data("mnist5k", seed=3)
    assert (len(a.x_train), len(a.x_val), len(a.x_test)) == (3600, 400, 1000)
    assert a.x_train.shape[1:] == (28, 28, 1) and a.num_classes == 10
    np.testing.assert_array_equal(a.y_test, b.y_test)
    c = load_data("mnist5k", seed=4)
    assert not np.array_equal(a.y_test, c.y_test)
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0


def test_animals_read_without_unpickling():
    ds = load_data("animals", seed=0)
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 10000
    assert ds.num_classes == 10
    assert ds.x_train.std() > 0.1  # real silhouettes, not zeros


def test_unknown_name():
    with pytest.raises(CompressError, match="unknown dataset"):
        load_data("cifar10")


def test_fit_to_model_flattens_and_refuses(digits):
    import keras

    flat = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    assert fit_to_model(digits.x_test, flat).shape == (len(digits.x_test), 64)
    wrong = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    with pytest.raises(CompressError, match="do not fit model input"):
        fit_to_model(digits.x_test, wrong)


def test_prepare_refuses_too_few_outputs_and_non_classifier(digits):
    import keras

    small = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    with pytest.raises(CompressError, match="only 3 outputs"):
        prepare(small, digits)
    image_out = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(CompressError, match="not a classifier"):
        prepare(image_out, digits)


def test_npz_user_data(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.random((50, 4)).astype("float32"),
             y_train=rng.integers(0, 3, 50))
    ds = load_data(f"npz:{path}", seed=0)
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 50
    assert ds.num_classes <= 3


_TRAIN = {"x_train": np.zeros((20, 2)), "y_train": np.zeros(20, int)}


def test_npz_given_validation_split_is_used(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.random((50, 4)).astype("float32"),
             y_train=rng.integers(0, 3, 50), x_val=np.ones((7, 4)), y_val=np.ones(7, int))
    ds = load_data(f"npz:{path}", seed=0)
    assert len(ds.x_val) == 7 and (ds.x_val == 1).all()  # it was silently dropped
    assert len(ds.x_train) + len(ds.x_test) == 50


def test_npz_of_x_and_y_is_one_training_split(tmp_path):
    # numpy.savez(path, x=x, y=y), the first thing a user writes, was refused for want of
    # 'x_train'
    rng = np.random.default_rng(0)
    x, y = rng.random((50, 4)).astype("float32"), rng.integers(0, 3, 50)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_data(f"npz:{tmp_path / 'd.npz'}", seed=0)
    assert ds.num_classes == 3 and len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 50
    assert sorted(np.concatenate([ds.y_train, ds.y_val, ds.y_test]).tolist()) == sorted(y)
    np.savez(tmp_path / "u.npz", x=x)
    assert load_data(f"npz:{tmp_path / 'u.npz'}", seed=0).y_train is None


@pytest.mark.parametrize("arrays,message", [
    ({"x_train": np.zeros((5, 2)), "y_test": np.zeros(5, int)}, "missing array 'y_train'"),
    ({"x": np.zeros((5, 2)), "labels": np.zeros(5, int)}, "or x and y$"),
    ({"x_train": np.zeros((5, 2))}, "only 5 samples"),  # inputs only: unlabelled, too few
    ({"x_train": np.full((20, 2), np.nan), "y_train": np.zeros(20, int)}, "NaN or inf"),
    ({"x_train": np.zeros((0, 2)), "y_train": np.zeros(0, int)}, "empty"),
    ({"x_train": np.zeros((20, 2)), "y_train": np.full(20, np.inf)}, "'y_train' contain NaN"),
    ({"x_train": np.zeros((20, 2)), "y_train": np.zeros(19, int)}, "has 20 samples"),
    # every split is checked up front (these failed during or after training)
    ({**_TRAIN, "x_test": np.zeros((50, 2)), "y_test": np.zeros(40, int)},
     r"the test split has 50 samples in 'x_test' but 40 labels in 'y_test'$"),
    ({**_TRAIN, "x_test": np.zeros((5, 2)), "y_test": np.zeros(5, int),
      "x_val": np.zeros((30, 2)), "y_val": np.zeros(20, int)},
     "the val split has 30 samples in 'x_val' but 20 labels in 'y_val'"),
    ({**_TRAIN, "x_val": np.zeros((30, 2)), "y_val": np.zeros(20, int)}, "val split has 30"),
    ({**_TRAIN, "x_test": np.zeros((5, 3)), "y_test": np.zeros(5, int)},
     r"'x_test' samples have shape \(3,\) but 'x_train' samples have \(2,\)"),
    ({**_TRAIN, "x_test": np.zeros((5, 2))}, "has 'x_test' but no 'y_test'"),
    # a file of x and y is named by its own keys (it read 'y_train' of a file without one)
    ({"x": np.zeros((20, 2)), "y": np.array(list("ab") * 10)},
     r"array 'y' has non-numeric dtype <U1; give class numbers 0\.\.N-1"),
    ({"x": np.full((20, 2), np.nan), "y": np.zeros(20, int)}, "array 'x' contains NaN"),
    ({"x": np.full((20, 2), np.nan)}, "array 'x' contains NaN"),  # unlabelled
])
def test_npz_bad_inputs(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(CompressError, match=message):
        load_data(f"npz:{path}")


def test_one_hot_npz_labels_are_class_numbers_for_a_classifier_only(tmp_path, digits):
    # keras.io's MNIST convnet saves keras.utils.to_categorical labels: refused before
    import keras

    from compress.data import prepare

    rows = np.eye(10, dtype="float32")
    np.savez(tmp_path / "onehot.npz", x_train=digits.x_train, y_train=rows[digits.y_train],
             x_test=digits.x_test, y_test=rows[digits.y_test])
    softmax = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(10, activation="softmax")])
    np.savez(tmp_path / "numbers.npz", x_train=digits.x_train, y_train=digits.y_train,
             x_test=digits.x_test, y_test=digits.y_test)
    data = prepare(softmax, load_data(f"npz:{tmp_path / 'onehot.npz'}"))
    same = prepare(softmax, load_data(f"npz:{tmp_path / 'numbers.npz'}"))
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(data.split(split)[1], same.split(split)[1])
    assert data.num_classes == 10 and data.y_train.dtype == np.int64
    assert any("one-hot rows of 10 classes: read as class numbers" in n for n in data.notes)
    # a sigmoid output's rows are multi-label targets: they stay rows
    sigmoid = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(10, activation="sigmoid")])
    kept = prepare(sigmoid, load_data(f"npz:{tmp_path / 'onehot.npz'}"))
    assert kept.y_train.ndim == 2 and kept.y_train.shape[1] == 10


def test_npz_with_object_array_refused_without_pickle(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x_train=np.array([{"a": 1}] * 12, dtype=object), y_train=np.zeros(12, int))
    with pytest.raises(CompressError, match="pickle"):
        load_data(f"npz:{path}")


@pytest.mark.parametrize("content", [b"x,y\n1,2\n", b"", b"\x80\x04N."])
def test_a_file_that_is_not_an_npz_archive_is_named_so(tmp_path, content):
    path = tmp_path / "data.npz"
    path.write_bytes(content)
    with pytest.raises(CompressError, match="not an .npz file"):
        load_data(f"npz:{path}")
