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


def test_a_symbolic_link_loop_and_a_broken_link_are_named(tmp_path):
    loop = tmp_path / "loop.keras"
    os.symlink(loop.name, loop)
    with pytest.raises(CompressError, match="symbolic link loop"):
        io.load_model(loop)
    broken = tmp_path / "broken.keras"
    os.symlink("gone.keras", broken)
    with pytest.raises(CompressError, match="broken symbolic link .*gone.keras"):
        io.load_model(broken)


def _zip_with(path, members):
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("member,size,expected", [
    ("config.json", 100 * 2**20, "config.json unpacks to 100.0 MiB"),
    ("metadata.json", 40 * 2**20, "metadata.json unpacks to"),
    ("model.weights.h5", 200 * 2**20, "model.weights.h5 unpacks to 200.0 MiB from"),
])
def test_a_zip_bomb_is_refused_before_a_byte_is_inflated(tmp_path, monkeypatch, member, size,
                                                         expected):
    import zipfile

    members = {"config.json": b"{}", "model.weights.h5": b"", member: b" " * size}
    path = _zip_with(tmp_path / "bomb.keras", members)
    assert path.stat().st_size < size / 100
    inflated = []
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *a, **k: inflated.append(a))
    with pytest.raises(CompressError) as err:
        io.load_model(path)
    assert expected in str(err.value) and "refusing" in str(err.value)
    assert inflated == []  # decided on the central directory alone


def test_assets_that_unpack_too_far_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "MAX_ASSETS_BYTES", 2**20)
    path = _zip_with(tmp_path / "assets.keras", {"config.json": b"{}", "model.weights.h5": b"",
                                                 "assets/a.bin": os.urandom(2**20),
                                                 "assets/b.bin": os.urandom(16)})
    with pytest.raises(CompressError, match="assets/ unpacks to"):
        io.load_model(path)


def test_an_unreadable_model_file_is_one_line(tmp_path, mlp_file):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = tmp_path / "locked.keras"
    path.write_bytes(Path(mlp_file[0]).read_bytes())
    path.chmod(0)
    with pytest.raises(CompressError, match="cannot read"):
        io.load_model(path)


# -- writing: any legal name, full disks (issue 17) ----------------------------------------
def _name_max(folder) -> int:
    return os.pathconf(folder, "PC_NAME_MAX")


def test_the_longest_legal_name_is_written(tmp_path):
    name = "n" * (_name_max(tmp_path) - len(".keras")) + ".keras"
    with io.atomic_path(io.check_output(tmp_path / name)) as tmp:
        assert len(tmp.name) < 40 and tmp.name.endswith(".partial.keras")  # short, own name
        tmp.write_bytes(b"whole")
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_name_longer_than_the_file_system_allows_is_refused(tmp_path):
    limit = _name_max(tmp_path)
    with pytest.raises(CompressError, match=f"file name is {limit + 1} bytes; this file "
                                            f"system allows {limit}"):
        io.check_output(tmp_path / ("n" * (limit + 1 - len(".keras")) + ".keras"))


def test_a_name_that_is_not_utf8_is_written(tmp_path):
    name = os.fsdecode(b"model-\xff.keras")  # as Python gets it from the command line
    io.write_bytes(io.check_output(tmp_path / name), b"whole")
    assert os.listdir(os.fsencode(tmp_path)) == [b"model-\xff.keras"]


def test_a_full_disk_is_refused_before_the_write(tmp_path, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(io.shutil, "disk_usage",
                        lambda folder: SimpleNamespace(total=2**30, used=2**30 - 4096, free=4096))
    with pytest.raises(CompressError, match="not enough free space in"):
        io.write_bytes(tmp_path / "out.bin", b"x" * 100_000)
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_is_one_line_and_leaves_nothing(tmp_path, mlp_file, monkeypatch):
    import errno

    import keras

    def disk_fills(self, filepath, *args, **kwargs):
        Path(filepath).write_bytes(b"PK\x03\x04 half an archive")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    model = io.load_model(mlp_file[0])
    monkeypatch.setattr(keras.Model, "save", disk_fills)
    with pytest.raises(CompressError,
                       match=r"out\.keras: cannot write \(No space left on device\)"):
        io.save_model(model, tmp_path / "out.keras")
    assert list(tmp_path.iterdir()) == []


def test_an_h5_is_written_as_keras_writes_it(tmp_path, mlp_file):
    """.h5 files are built in memory (HDF5 on a disk that fills crashes the process)."""
    model = io.load_model(mlp_file[0])
    ours = io.save_model(model, tmp_path / "ours.h5")
    model.save(tmp_path / "keras.h5")
    again = io.load_model(ours)
    assert [layer.get_config() for layer in again.layers] == \
        [layer.get_config() for layer in io.load_model(tmp_path / "keras.h5").layers]
    for got, want in zip(again.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keras.h5", "ours.h5"]


def test_a_stateful_recurrent_model_is_refused_in_one_line(cli, tmp_path):
    """A streaming model (GRU(stateful=True), batch size fixed at 4) failed in every
    command with Keras's "the batch size of the input sequences must be the same as the
    batch size of the initial state" (an unexpected ValueError)."""
    import keras

    inp = keras.Input((5, 3), batch_size=4)
    h = keras.layers.GRU(4, stateful=True, name="gru")(inp)
    keras.Model(inp, keras.layers.Dense(2, name="out")(h)).save(tmp_path / "st.keras")
    with pytest.raises(CompressError, match=r"stateful recurrent layers \(gru\) carry state"):
        io.load_model(tmp_path / "st.keras")
    out = tmp_path / "out.keras"
    result = cli("prune", tmp_path / "st.keras", "-o", out, "--sparsity", "0.5")
    assert result.exit_code == 1 and "compress a copy built with stateful=False" in \
        result.output and "unexpected" not in result.output
    assert not out.exists()
