"""compress.io: safe loading, one-line errors, atomic and refusing writes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import file_digest

from compress import io
from compress.errors import CompressError


def test_loads_keras_and_h5_with_same_outputs(mlp_file, cnn_file):
    import keras

    for path, ds in (mlp_file, cnn_file):
        model = io.load_model(path)
        reference = keras.models.load_model(path, compile=False)
        x = ds.x_test[:8]
        np.testing.assert_allclose(model.predict(x, verbose=0), reference.predict(x, verbose=0))


@pytest.mark.parametrize("content,expected", [
    (b"", "empty file"),
    (b"this is just text, not a model\n", "not an HDF5 file"),
])
def test_bad_h5_files_are_one_line_errors(tmp_path, content, expected):
    path = tmp_path / "model.h5"
    path.write_bytes(content)
    with pytest.raises(CompressError) as err:
        io.load_model(path)
    assert expected in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(CompressError, match="no such file"):
        io.load_model(tmp_path / "nope.keras")


def test_truncated_keras_archive(tmp_path, mlp_file):
    data = Path(mlp_file[0]).read_bytes()
    path = tmp_path / "cut.keras"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CompressError, match="truncated or corrupt|corrupt"):
        io.load_model(path)


def test_weights_only_h5_is_refused(tmp_path, mlp_file):
    model = io.load_model(mlp_file[0])
    path = tmp_path / "w.weights.h5"
    model.save_weights(path)
    renamed = tmp_path / "w.h5"
    os.rename(path, renamed)
    with pytest.raises(CompressError, match="weights only"):
        io.load_model(renamed)


def test_lambda_layer_refused_in_safe_mode(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2.0),
                              keras.layers.Dense(2)])
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(CompressError, match="--unsafe"):
        io.load_model(path)
    loaded = io.load_model(path, unsafe=True)
    assert len(loaded.layers) == 2


def test_unknown_custom_layer_named(tmp_path):
    import keras

    @keras.saving.register_keras_serializable(package="testonly")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    model = keras.Sequential([keras.Input((4,)), Doubler(name="dbl"), keras.layers.Dense(2)])
    path = tmp_path / "custom.keras"
    model.save(path)
    keras.saving.get_custom_objects().pop("testonly>Doubler")
    with pytest.raises(CompressError, match="unknown custom layer or object 'Doubler'"):
        io.load_model(path)


def test_check_output_refusals(tmp_path, mlp_file):
    existing = tmp_path / "exists.keras"
    existing.write_bytes(b"x")
    with pytest.raises(CompressError, match="already exists; pass --force"):
        io.check_output(existing)
    assert io.check_output(existing, force=True) == existing
    with pytest.raises(CompressError, match="is the input"):
        io.check_output(mlp_file[0], inputs=[mlp_file[0]], force=True)
    with pytest.raises(CompressError, match="is a directory"):
        io.check_output(tmp_path)
    with pytest.raises(CompressError, match="does not exist"):
        io.check_output(tmp_path / "no" / "dir" / "m.keras")
    with pytest.raises(CompressError, match="must end with"):
        io.check_output(tmp_path / "m.txt", suffixes=io.MODEL_SUFFIXES)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    io.write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole" and len(list(tmp_path.iterdir())) == 1


def test_save_model_roundtrip_and_input_untouched(tmp_path, mlp_file):
    path, ds = mlp_file
    before = file_digest(path)
    model = io.load_model(path)
    out = io.save_model(model, tmp_path / "copy.h5", inputs=[path])
    again = io.load_model(out)
    np.testing.assert_allclose(again.predict(ds.x_test[:4], verbose=0),
                               model.predict(ds.x_test[:4], verbose=0))
    assert file_digest(path) == before


def test_loads_h5_saved_by_keras2(tmp_path):
    pytest.importorskip("tf_keras")
    path = tmp_path / "k2.h5"
    script = (
        "import tf_keras as k\n"
        "m = k.Sequential([k.layers.Dense(8, activation='relu', input_shape=(4,)),"
        " k.layers.Dense(3, activation='softmax')])\n"
        f"m.save(r'{path}')\n")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, capture_output=True)
    model = io.load_model(path)
    assert model.count_params() == 4 * 8 + 8 + 8 * 3 + 3
    assert model.predict(np.ones((2, 4), "float32"), verbose=0).shape == (2, 3)
