"""The bad-input catalogue: every command and the Python API refuse bad input the same way.

Each case checks: the exit code (1 for runtime refusals, 2 for usage errors), exactly one
``error:`` line on stderr and no traceback, every input file byte-for-byte unchanged, and
no output file left behind. Set ``COMPRESS_RELIABILITY_TABLE=path.md`` to also write the
summary table used in ``docs/reliability.md``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import file_digest

RESULTS = []


@pytest.fixture(scope="module")
def files(tmp_path_factory, mlp_file, cnn_file):
    """Every bad (and good) input of the catalogue, written once."""
    import keras

    d = tmp_path_factory.mktemp("catalogue")
    f = {"mlp": str(mlp_file[0]), "cnn": str(cnn_file[0]), "dir": str(d),
         "long": "n" * 300}  # a file name longer than any file system allows
    (d / "empty.keras").write_bytes(b"")
    (d / "notes.h5").write_text("this is text, not a model\n")
    data = Path(mlp_file[0]).read_bytes()
    (d / "cut.keras").write_bytes(data[: len(data) // 3])
    (d / "garbage.keras").write_bytes(os.urandom(4096))
    (d / "model.pt").write_bytes(b"\x00" * 16)
    (d / "not_saved_model").mkdir()
    model = keras.models.load_model(mlp_file[0])
    model.save_weights(d / "w.weights.h5")
    os.rename(d / "w.weights.h5", d / "weights_only.h5")

    lam = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                            keras.layers.Lambda(lambda t: t * 2.0),
                            keras.layers.Dense(10, activation="softmax")])
    lam.save(d / "lambda.keras")

    @keras.saving.register_keras_serializable(package="catalogue")
    class Mystery(keras.layers.Layer):
        def call(self, x):
            return x

    custom = keras.Sequential([keras.Input((8, 8, 1)), Mystery(), keras.layers.Flatten(),
                               keras.layers.Dense(10, activation="softmax")])
    custom.save(d / "custom.keras")
    keras.saving.get_custom_objects().pop("catalogue>Mystery")

    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                      keras.layers.Activation("softmax")]).save(d / "noprune.keras")
    a, b = keras.Input((8, 8, 1)), keras.Input((4,))
    merged = keras.layers.Concatenate()([keras.layers.Flatten()(a), b])
    keras.Model([a, b], keras.layers.Dense(10, activation="softmax")(merged)).save(
        d / "two_inputs.keras")
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, padding="same")]).save(
        d / "regressor.keras")
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                      keras.layers.Dense(5, activation="softmax")]).save(d / "five.keras")

    rng = np.random.default_rng(0)
    np.savez(d / "shape.npz", x_train=rng.random((40, 5, 5)).astype("float32"),
             y_train=rng.integers(0, 10, 40))
    np.savez(d / "labels.npz", x_train=rng.random((40, 8, 8, 1)).astype("float32"),
             y_train=np.full(40, 25))
    nan = rng.random((40, 8, 8, 1)).astype("float32")
    nan[3, 2, 2, 0] = np.nan
    np.savez(d / "nan.npz", x_train=nan, y_train=rng.integers(0, 10, 40))
    np.savez(d / "emptydata.npz", x_train=np.zeros((0, 8, 8, 1), "float32"),
             y_train=np.zeros(0, "int64"))
    np.savez(d / "strings.npz", x_train=np.array(["a"] * 40), y_train=rng.integers(0, 10, 40))
    (d / "unknown_key.yaml").write_text(
        "model: lenet300\ndata: digits\nstepz:\n  - prune: {sparsity: 0.5}\n")
    (d / "wrong_type.yaml").write_text(
        "model: lenet300\ndata: digits\nsteps:\n  - prune: {sparsity: lots}\n")
    (d / "bad_ref.yaml").write_text(
        f"model: {d}/missing.keras\ndata: digits\nsteps:\n  - prune: {{sparsity: 0.5}}\n")
    (d / "bad_student.yaml").write_text(
        "model: lenet300\ndata: digits\nbaseline: {epochs: 1}\nsubset: 100\nsteps:\n"
        f"  - distill: {{student: {d}/nobody.keras, epochs: 1}}\n")
    (d / "broken.yaml").write_text("model: [unclosed\n")
    _hostile_loading_inputs(d)
    _faulty_inputs(d, mlp_file[0])
    return f


def _hostile_loading_inputs(d):
    """A SavedModel that writes a file when served, a zip bomb, a link loop, YAML bombs."""
    import zipfile

    import tensorflow as tf

    class Writes(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, 8, 8, 1), tf.float32)])
        def serve(self, x):
            tf.io.write_file(str(d / "written-by-savedmodel.txt"), "pwned")  # must never run
            return {"out": tf.reshape(x, (-1, 64))[:, :10]}

    writes = Writes()
    tf.saved_model.save(writes, str(d / "writes_file_savedmodel"),
                        signatures={"serving_default": writes.serve})
    with zipfile.ZipFile(d / "zip_bomb.keras", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", b" " * (100 * 2**20))  # 100 MiB from about 100 KB
        zf.writestr("model.weights.h5", b"")
    os.symlink("link_loop.keras", d / "link_loop.keras")
    levels = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"] + [
        f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 7)]
    (d / "alias_bomb.yaml").write_text("model: lenet300\ndata: digits\n" + "\n".join(levels)
                                       + "\nsteps:\n  - prune: {sparsity: *l6}\n")
    (d / "python_tag.yaml").write_text(
        "model: !!python/object/apply:os.system ['echo hacked']\nsteps: []\n")


def _faulty_inputs(d, mlp_path):
    """A model with NaN weights, npz files with unequal splits, another command's backup."""
    import json

    import keras

    model = keras.models.load_model(mlp_path)
    kernel = np.asarray(model.get_layer("fc2").kernel).copy()
    kernel[1, 2], kernel[3, 4] = np.nan, np.inf
    model.get_layer("fc2").kernel.assign(kernel)
    model.save(d / "nan_weights.keras")
    rng = np.random.default_rng(1)

    def split(n_x, n_y, **more):
        return {"x_train": rng.random((100, 8, 8, 1)).astype("float32"),
                "y_train": rng.integers(0, 10, 100), "x_test": rng.random((n_x, 8, 8, 1)),
                "y_test": rng.integers(0, 10, n_y), **more}

    np.savez(d / "ragged_test.npz", **split(50, 40))
    np.savez(d / "ragged_val.npz", **split(50, 50, x_val=rng.random((30, 8, 8, 1)),
                                          y_val=rng.integers(0, 10, 20)))
    np.savez(d / "one_hot.npz", x_train=rng.random((40, 8, 8, 1)).astype("float32"),
             y_train=np.eye(10, dtype="int64")[rng.integers(0, 10, 40)])
    backup = d / "other_checkpoint" / "fit1"
    backup.mkdir(parents=True)
    (backup / "training_metadata.json").write_text(json.dumps(
        {"epoch": 1, "batch": 0, "command": "0" * 64, "fit": None, "callbacks": []}))


# (id, argv template, exit code, words expected in the one error line)
CLI_CASES = [
    ("inspect-missing", ["inspect", "{dir}/missing.keras"], 1, "no such file"),
    ("inspect-empty", ["inspect", "{dir}/empty.keras"], 1, "empty file"),
    ("inspect-text-as-h5", ["inspect", "{dir}/notes.h5"], 1, "not an HDF5 file"),
    ("inspect-truncated", ["inspect", "{dir}/cut.keras"], 1, "corrupt"),
    ("inspect-garbage", ["inspect", "{dir}/garbage.keras"], 1, "corrupt"),
    ("inspect-weights-only", ["inspect", "{dir}/weights_only.h5"], 1, "weights only"),
    ("inspect-custom-layer", ["inspect", "{dir}/custom.keras"], 1, "unknown custom layer"),
    ("inspect-lambda-safe-mode", ["inspect", "{dir}/lambda.keras"], 1, "--unsafe"),
    ("inspect-wrong-suffix", ["inspect", "{dir}/model.pt"], 1, "unsupported model file type"),
    ("inspect-dir-not-savedmodel", ["inspect", "{dir}/not_saved_model"], 1, "not a SavedModel"),
    ("inspect-unknown-data", ["inspect", "{mlp}", "--data", "cifar10"], 1, "unknown dataset"),
    ("inspect-data-shape", ["inspect", "{mlp}", "--data", "npz:{dir}/shape.npz"], 1,
     "do not fit model input"),
    ("inspect-labels-range", ["inspect", "{mlp}", "--data", "npz:{dir}/labels.npz"], 1,
     "labels go up to 25"),
    ("inspect-nan-data", ["inspect", "{mlp}", "--data", "npz:{dir}/nan.npz"], 1, "NaN or inf"),
    ("inspect-empty-data", ["inspect", "{mlp}", "--data", "npz:{dir}/emptydata.npz"], 1,
     "is empty"),
    ("inspect-string-data", ["inspect", "{mlp}", "--data", "npz:{dir}/strings.npz"], 1,
     "non-numeric"),
    ("inspect-missing-npz", ["inspect", "{mlp}", "--data", "npz:{dir}/nope.npz"], 1,
     "no such data file"),
    ("inspect-regressor", ["inspect", "{dir}/regressor.keras", "--data", "digits"], 1,
     "not a classifier"),
    ("inspect-two-inputs", ["inspect", "{dir}/two_inputs.keras", "--data", "digits"], 1,
     "has 2 inputs"),
    ("inspect-too-few-classes", ["inspect", "{dir}/five.keras", "--data", "digits"], 1,
     "only 5 outputs"),
    ("export-out-is-dir", ["export", "{mlp}", "-o", "{dir}", "--format", "onnx"], 1,
     "is a directory"),
    ("export-out-is-input", ["export", "{mlp}", "-o", "{mlp}", "--format", "onnx", "--force"],
     1, "is the input"),
    ("export-exists", ["export", "{mlp}", "-o", "{cnn}", "--format", "onnx"], 1, ""),
    ("export-unwritable", ["export", "{mlp}", "-o", "/proc/m.onnx"], 1, "not writable"),
    ("export-no-folder", ["export", "{mlp}", "-o", "{dir}/no/such/m.onnx"], 1, "does not exist"),
    ("export-suffix-mismatch", ["export", "{mlp}", "--format", "onnx", "-o", "{out}.tflite"], 1,
     "must end with .onnx"),
    ("export-unknown-suffix", ["export", "{mlp}", "-o", "{out}.bin"], 1, "cannot tell the format"),
    ("export-bad-format", ["export", "{mlp}", "--format", "coreml", "-o", "{out}.onnx"], 2, ""),
    ("prune-sparsity-1", ["prune", "{mlp}", "-o", "{out}.keras", "--sparsity", "1.0"], 1,
     "--sparsity: must be in"),
    ("prune-sparsity-negative", ["prune", "{mlp}", "-o", "{out}.keras", "--sparsity", "-0.1"],
     1, "--sparsity"),
    ("prune-regex-matches-nothing", ["prune", "{mlp}", "-o", "{out}.keras", "--layers",
                                     "nothing_like_this"], 1, "nothing_like_this"),
    ("prune-no-prunable-layers", ["prune", "{dir}/noprune.keras", "-o", "{out}.keras"], 1,
     "prunable"),
    ("prune-obd-without-data", ["prune", "{mlp}", "-o", "{out}.keras", "--method", "obd"], 1,
     "--data"),
    ("prune-finetune-without-data", ["prune", "{mlp}", "-o", "{out}.keras", "--epochs", "2"], 1,
     "--data"),
    ("prune-data-mismatch", ["prune", "{mlp}", "-o", "{out}.keras", "--data", "mnist5k",
                             "--method", "obd"], 1, "do not fit model input"),
    ("prune-negative-epochs", ["prune", "{mlp}", "-o", "{out}.keras", "--epochs", "-1"], 1,
     "--epochs"),
    ("prune-wrong-output-suffix", ["prune", "{mlp}", "-o", "{out}.onnx"], 1, "must end with"),
    ("prune-bad-method", ["prune", "{mlp}", "-o", "{out}.keras", "--method", "random"], 2, ""),
    ("prune-two-inputs", ["prune", "{dir}/two_inputs.keras", "-o", "{out}.keras"], 1,
     "has 2 input(s)"),
    ("export-two-inputs", ["export", "{dir}/two_inputs.keras", "-o", "{out}.onnx"], 1,
     "single-input, single-output"),
    ("prune-structured-two-four", ["prune", "{mlp}", "-o", "{out}.keras", "--structured",
                                   "--two-four"], 1, "choose one"),
    ("export-quantize-int8-without-data", ["export", "{mlp}", "-o", "{out}.tflite",
                                           "--quantize", "int8"], 1, "use mode dynamic"),
    ("export-negative-atol", ["export", "{mlp}", "-o", "{out}.onnx", "--atol", "-1"], 1,
     "--atol: must be >= 0.0"),
    ("share-factor-0", ["share", "{mlp}", "-o", "{out}.keras", "--factor", "0"], 1, "--factor"),
    ("share-factor-above-1", ["share", "{mlp}", "-o", "{out}.keras", "--factor", "1.5"], 1,
     "--factor"),
    ("share-clusters-1", ["share", "{mlp}", "-o", "{out}.keras", "--method", "kmeans",
                          "--clusters", "1"], 1, "--clusters"),
    ("share-clusters-too-many", ["share", "{mlp}", "-o", "{out}.keras", "--method", "kmeans",
                                 "--clusters", "100000"], 1, "clusters"),
    ("share-unhashable-layers", ["share", "{cnn}", "-o", "{out}.keras", "--layers", "bn1"], 1,
     "bn1"),
    ("quantize-int8-without-data", ["quantize", "{mlp}", "-o", "{out}.tflite"], 1, "--data"),
    ("quantize-calibration-shape", ["quantize", "{mlp}", "-o", "{out}.tflite", "--data",
                                    "mnist5k"], 1, "do not fit model input"),
    ("quantize-unknown-suffix", ["quantize", "{mlp}", "-o", "{out}.bin", "--mode", "dynamic"], 1,
     ""),
    ("quantize-bad-mode", ["quantize", "{mlp}", "-o", "{out}.tflite", "--mode", "int4"], 2, ""),
    ("distill-temperature-0", ["distill", "{mlp}", "-o", "{out}.keras", "--data", "digits",
                               "--temperature", "0"], 1, "--temperature"),
    ("distill-alpha-above-1", ["distill", "{mlp}", "-o", "{out}.keras", "--data", "digits",
                               "--alpha", "1.5"], 1, "--alpha"),
    ("distill-output-shapes", ["distill", "{mlp}", "-o", "{out}.keras", "--data", "digits",
                               "--student", "{dir}/five.keras", "--epochs", "1"], 1, "output"),
    ("distill-non-classifier", ["distill", "{dir}/regressor.keras", "-o", "{out}.keras",
                                "--data", "digits"], 1, "classifier"),
    ("distill-without-data", ["distill", "{mlp}", "-o", "{out}.keras"], 1, "--data"),
    ("cascade-without-data", ["cascade", "{mlp}", "-o", "{out}.keras"], 1, "--data"),
    ("cascade-unknown-model", ["cascade", "resnet9000", "-o", "{out}.keras", "--data",
                               "digits"], 1, "resnet9000"),
    ("run-missing-recipe", ["run", "{dir}/nope.yaml", "-o", "{out}"], 1, "no such recipe"),
    ("run-unknown-key", ["run", "{dir}/unknown_key.yaml", "-o", "{out}"], 1,
     "stepz: unknown recipe key"),
    ("run-wrong-type", ["run", "{dir}/wrong_type.yaml", "-o", "{out}"], 1,
     "steps[0].prune.sparsity: must be a number"),
    ("run-bad-model-reference", ["run", "{dir}/bad_ref.yaml", "-o", "{out}"], 1, "no such file"),
    ("run-bad-student-reference", ["run", "{dir}/bad_student.yaml", "-o", "{out}"], 1,
     "steps[0].distill.student"),
    ("run-invalid-yaml", ["run", "{dir}/broken.yaml", "-o", "{out}"], 1, "not valid YAML"),
    ("run-bad-override", ["run", "{dir}/wrong_type.yaml", "--set", "steps[9].x=1", "-o",
                          "{out}"], 1, "no item"),
    ("inspect-savedmodel-writes-file", ["inspect", "{dir}/writes_file_savedmodel"], 1,
     "runs op 'WriteFile'"),
    ("inspect-zip-bomb", ["inspect", "{dir}/zip_bomb.keras"], 1,
     "config.json unpacks to 100.0 MiB"),
    ("inspect-symlink-loop", ["inspect", "{dir}/link_loop.keras"], 1, "symbolic link loop"),
    ("inspect-negative-seed", ["inspect", "{mlp}", "--seed", "-1"], 1,
     "--seed: must be in [0, 4294967295], got -1"),
    ("run-yaml-alias-bomb", ["run", "{dir}/alias_bomb.yaml", "-o", "{out}"], 1,
     "aliases expand to more than 10000 values"),
    ("run-python-tag", ["run", "{dir}/python_tag.yaml", "-o", "{out}"], 1, "is a Python tag"),
    ("run-negative-index", ["run", "{dir}/wrong_type.yaml", "--set",
                            "steps[-1].prune.sparsity=0.5", "-o", "{out}"], 1,
     "negative indexes such as [-1] are not supported"),
    ("prune-name-too-long", ["prune", "{mlp}", "-o", "{out}-{long}.keras"], 1,
     "this file system allows"),
    ("export-name-too-long", ["export", "{mlp}", "-o", "{out}-{long}.onnx"], 1,
     "this file system allows"),
    ("prune-keep-last-good-too-long", ["prune", "{mlp}", "-o", "{out}.keras", "--data",
                                       "digits", "--epochs", "1", "--keep-last-good",
                                       "{out}-{long}.keras"], 1,
     "this file system allows"),
    ("prune-nan-weights", ["prune", "{dir}/nan_weights.keras", "-o", "{out}.keras",
                           "--sparsity", "0.5"], 1, "layer 'fc2' has 2 NaN or infinite weights"),
    ("export-nan-weights", ["export", "{dir}/nan_weights.keras", "-o", "{out}.onnx"], 1,
     "NaN or infinite weights in fc2/kernel"),
    ("prune-quality-inf", ["prune", "{mlp}", "-o", "{out}.keras", "--quality", "inf"], 1,
     "--quality must be a finite number"),
    ("prune-quality-zeros-a-layer", ["prune", "{mlp}", "-o", "{out}.keras", "--quality", "1e9"],
     1, "would zero every weight of"),
    ("prune-quality-and-sparsity", ["prune", "{mlp}", "-o", "{out}.keras", "--quality", "1",
                                    "--sparsity", "0.5"], 1, "give one of them"),
    ("inspect-npz-test-lengths", ["inspect", "{mlp}", "--data", "npz:{dir}/ragged_test.npz"], 1,
     "the test split has 50 samples in 'x_test' but 40 labels in 'y_test'"),
    ("inspect-npz-val-lengths", ["inspect", "{mlp}", "--data", "npz:{dir}/ragged_val.npz"], 1,
     "the val split has 30 samples in 'x_val' but 20 labels in 'y_val'"),
    ("inspect-npz-one-hot", ["inspect", "{mlp}", "--data", "npz:{dir}/one_hot.npz"], 1,
     "one-hot labels"),
    ("prune-checkpoint-of-another-command", ["prune", "{mlp}", "-o", "{out}.keras", "--data",
                                             "digits", "--epochs", "1", "--checkpoint-dir",
                                             "{dir}/other_checkpoint"], 1,
     "was made by another command or model; use a new --checkpoint-dir or delete it"),
]


def _inputs(files) -> dict:
    return {p: file_digest(p) for p in Path(files["dir"]).iterdir() if p.is_file()} | {
        files["mlp"]: file_digest(files["mlp"]), files["cnn"]: file_digest(files["cnn"])}


@pytest.mark.parametrize("case_id,argv,code,words", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refusal(case_id, argv, code, words, files, cli, tmp_path):
    out = tmp_path / "result"
    args = [a.format(**files, out=out) for a in argv]
    before = _inputs(files)
    listing = sorted(os.listdir(files["dir"]))
    result = cli(*args)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    RESULTS.append((case_id, " ".join(argv), result.exit_code,
                    errors[-1] if errors else ""))
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    if code == 1:
        assert len(errors) == 1 and errors[0].startswith("error: "), errors
        assert words in errors[0]
    assert _inputs(files) == before  # inputs untouched
    assert sorted(os.listdir(files["dir"])) == listing  # nothing written beside them
    assert list(tmp_path.iterdir()) == []  # no output, not even a partial one


def test_a_model_loaded_with_unsafe_can_be_pruned(files, cli, tmp_path):
    """--unsafe holds for the copies the passes make, not only for the first load."""
    import keras

    out = tmp_path / "pruned.keras"
    result = cli("prune", f"{files['dir']}/lambda.keras", "-o", out, "--unsafe",
                 "--sparsity", "0.5")
    assert result.exit_code == 0, result.output
    pruned = keras.models.load_model(out, safe_mode=False)
    assert any(isinstance(layer, keras.layers.Lambda) for layer in pruned.layers)


def test_an_upper_case_suffix_is_written(files, cli, tmp_path):
    out = tmp_path / "PRUNED.KERAS"
    result = cli("prune", files["mlp"], "-o", out, "--sparsity", "0.5")
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["PRUNED.KERAS"]


def test_an_unforeseen_failure_is_one_line_and_exit_1(files, cli, monkeypatch):
    import compress.report

    def broken(*args, **kwargs):
        raise ValueError("something\nnobody planned for")

    monkeypatch.setattr(compress.report, "model_report", broken)
    result = cli("inspect", files["mlp"])
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert errors == [("error: unexpected ValueError: something nobody planned for (the input "
                       "is untouched; --debug shows the traceback)")]


def test_python_api_refusals(files, mlp_file, tmp_path):
    import compress
    from compress.errors import CompressError

    model = compress.load_model(files["mlp"])
    ds = mlp_file[1]
    calls = [
        ("load_model text", lambda: compress.load_model(f"{files['dir']}/notes.h5")),
        ("prune obd without data", lambda: compress.prune(model, None, method="obd")),
        ("prune sparsity 1", lambda: compress.prune(model, ds, sparsity=1.0)),
        ("hash factor 2", lambda: compress.hash_model(model, ds, factor=2.0)),
        ("cluster 1", lambda: compress.cluster_model(model, ds, clusters=1)),
        ("distill T<0", lambda: compress.distill(model, ds, temperature=-1.0)),
        ("quantize no data", lambda: compress.quantize(model, None, mode="int8")),
        ("export exists", lambda: compress.export_onnx(model, files["cnn"])),
        ("recipe typo", lambda: compress.run_recipe({"model": "lenet300", "data": "digits",
                                                     "steps": [{"prune": {"spars": 1}}]},
                                                    output=tmp_path / "r")),
    ]
    weights = [np.array(w) for w in model.get_weights()]
    for name, call in calls:
        with pytest.raises(CompressError) as err:
            call()
        assert "\n" not in str(err.value), name
        RESULTS.append((f"api: {name}", name, "CompressError", str(err.value)))
    for a, b in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # the model object was never mutated
    assert not (tmp_path / "q.tflite").exists() and not (tmp_path / "r").exists()


def _one_error_line(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    assert "Traceback" not in result.output
    return errors[0]


def test_a_disk_too_full_for_the_output_is_refused_before_writing(files, cli, tmp_path,
                                                                   monkeypatch):
    from types import SimpleNamespace

    from compress import io

    def almost_full(folder):
        return SimpleNamespace(total=2**30, used=2**30 - 8192, free=8192)

    before = _inputs(files)
    monkeypatch.setattr(io.shutil, "disk_usage", almost_full)
    result = cli("prune", files["mlp"], "-o", tmp_path / "pruned.h5", "--sparsity", "0.5")
    line = _one_error_line(result)
    RESULTS.append(("prune-disk-full", "prune {mlp} -o {out}.h5 (8 KiB free)",
                    result.exit_code, line))
    assert result.exit_code == 1 and "not enough free space in" in line
    assert list(tmp_path.iterdir()) == [] and _inputs(files) == before


@pytest.fixture
def small_disk(tmp_path):
    """A real 160 KiB file system (tmpfs): needs root, skipped where mounting is refused."""
    import shutil
    import subprocess

    folder = tmp_path / "small-disk"
    folder.mkdir()
    mount = shutil.which("mount")
    if mount is None or subprocess.run([mount, "-t", "tmpfs", "-o", "size=160k", "tmpfs",
                                        str(folder)], capture_output=True,
                                       check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True, check=False)


# The disk fills between the free-space check and the end of the write (another program
# writing meanwhile): the check is switched off, the write itself meets ENOSPC.
_DISK_FILLS_WHILE_WRITING = """
import sys
from compress import io
io.check_free_space = lambda path, needs_bytes: None
from compress.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_disk_that_fills_during_the_write_is_one_line_and_leaves_nothing(small_disk,
                                                                          tmp_path):
    """HDF5 crashed the process (SIGSEGV, exit 139, a 28-line h5py traceback) and left
    ``.x.XXXX.partial.h5`` behind."""
    import subprocess
    import sys

    import keras

    wide = tmp_path / "wide.keras"  # its .h5 is about 170 KB: more than the disk holds
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(512),
                      keras.layers.Dense(10, activation="softmax")]).save(wide)
    digest = file_digest(wide)
    for case_id, script in (("prune-disk-full-real", None),
                            ("prune-disk-fills-while-writing", _DISK_FILLS_WHILE_WRITING)):
        command = ["-c", script] if script else ["-m", "compress.cli"]
        proc = subprocess.run([sys.executable, *command, "prune", str(wide), "-o",
                               str(small_disk / "pruned.h5"), "--sparsity", "0.5"],
                              capture_output=True, text=True, timeout=300, check=False,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        errors = [line for line in proc.stderr.splitlines() if line.strip()]
        RESULTS.append((case_id, "prune {dir}/wide.keras -o {out}.h5 (a 160 KiB disk)",
                        proc.returncode, errors[-1] if errors else ""))
        assert proc.returncode == 1, proc.stderr[-1500:]
        assert len(errors) == 1 and errors[0].startswith("error: "), errors
        assert ("not enough free space" if script is None else "No space left on device") \
            in errors[0]
        assert os.listdir(small_disk) == [] and file_digest(wide) == digest


def test_write_summary_table():
    target = os.environ.get("COMPRESS_RELIABILITY_TABLE")
    if not target:
        pytest.skip("set COMPRESS_RELIABILITY_TABLE=path.md to write the summary table")
    lines = ["| case | command | exit | what it says |", "|---|---|---|---|"]
    for case_id, argv, code, message in RESULTS:
        lines.append(f"| {case_id} | `{argv}` | {code} | {message.replace('|', '/')} |")
    Path(target).write_text("\n".join(lines) + "\n")
    assert len(RESULTS) >= 40
