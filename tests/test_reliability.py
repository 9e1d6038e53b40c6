"""The hostile and faulty input catalogue: every command and the Python API refuse it the
same way, and leave everything as they found it.

Each case runs in a sandbox of its own (:class:`_Sandbox`): its current directory, a
private ``$TMPDIR`` and the folder its output is named in are fresh, and the folders
holding its inputs are snapshotted (every file's digest, every link's target). Each
case checks: the exit code (1 for runtime refusals, 2 for usage errors), exactly one
``error:`` line on stderr (and no Python warning a user's terminal would show), no
traceback, every input byte-for-byte unchanged and none deleted, nothing left in the
output folder, ``$TMPDIR`` or the current directory, nothing written anywhere else,
and no code run from a hostile file: each such file (a ``Lambda``, a SavedModel op, a
pickle, a YAML Python tag) would write a marker file if it ran, and no marker may exist.
Set ``COMPRESS_RELIABILITY_TABLE=path.md`` to also write the summary table, with totals
computed from these checks, used in ``docs/reliability.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

RESULTS = []  # one dict per case: what it ran, returned and said, and what its checks found
# Files that hostile inputs write if their code ever runs (in the catalogue folder).
MARKERS = ("executed-lambda.txt", "written-by-savedmodel.txt", "executed-by-yaml.txt",
           "executed-by-pickle.txt")


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

    marker = str(d / "executed-lambda.txt")
    lam = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                            keras.layers.Lambda(_marking_lambda(marker)),
                            keras.layers.Dense(10, activation="softmax")])
    lam.save(d / "lambda.keras")
    lam.save(d / "lambda.h5")  # the legacy format has Lambdas too
    os.remove(marker)

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
    header = ",".join(f"p{i}" for i in range(64)) + ",y\n"
    rows = ["".join(f"{v:.3f}," for v in rng.random(64)) + f"{i % 10}\n" for i in range(40)]
    (d / "binary.csv").write_bytes(bytes(range(256)) * 8)
    (d / "ragged.csv").write_text(header + "".join(rows[:20]) + "0.5,0.5,3\n" + "".join(rows[20:]))
    hole = rows[:9] + ["," + rows[9].split(",", 1)[1]] + rows[10:]  # line 11: no p0
    (d / "hole.csv").write_text(header + "".join(hole))
    (d / "narrow.csv").write_text("a,b,y\n" + "".join(f"{i},{i * 2},{i % 10}\n"
                                                        for i in range(40)))
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
    _hostile_archives_and_data(d, mlp_file[0], cnn_file[0])
    _recipes(d, mlp_file[0])
    return f


def _marking_lambda(marker: str):
    """A Lambda function that leaves ``marker`` each time it runs (building a model runs
    it once). The path is in its closure, which Keras stores with its code."""
    return lambda t: (open(marker, "a").close(), t * 2.0)[1]


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
        f"model: !!python/object/apply:os.system ['touch {d}/executed-by-yaml.txt']\n"
        "steps: []\n")


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
             y_train=np.eye(12, dtype="int64")[rng.integers(0, 12, 40)])
    backup = d / "other_checkpoint" / "fit1"
    backup.mkdir(parents=True)
    (backup / "training_metadata.json").write_text(json.dumps(
        {"epoch": 1, "batch": 0, "command": "0" * 64, "fit": None, "callbacks": []}))


class _RunsWhenUnpickled:
    """Unpickling this object opens (creates) a marker file: pickles are code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "a")


def _hostile_archives_and_data(d, mlp_path, cnn_path):
    """Zip members named outside the archive, a cut HDF5 file, npz files that are pickles."""
    import pickle
    import shutil
    import zipfile

    for name, member in (("dotdot_member.keras", "../../dotdot-evil.txt"),
                         ("absolute_member.keras", f"{d}/absolute-evil.txt")):
        shutil.copy(mlp_path, d / name)
        with zipfile.ZipFile(d / name, "a") as zf:
            zf.writestr("assets/readme.txt", "an asset, so that Keras extracts the archive")
            zf.writestr(member, "pwned")
    data = Path(cnn_path).read_bytes()
    (d / "cut.h5").write_bytes(data[: len(data) // 2])
    shutil.copy(mlp_path, d / "unreadable.keras")  # its reads are denied by the case
    rng = np.random.default_rng(2)
    touch = _RunsWhenUnpickled(str(d / "executed-by-pickle.txt"))
    (d / "pickle.npz").write_bytes(pickle.dumps({"x_train": touch}, protocol=2))
    np.savez(d / "object.npz", x_train=np.array([touch] * 40, dtype=object),
             y_train=rng.integers(0, 10, 40))
    # labels for one split but not for training (inputs alone would be unlabelled data)
    np.savez(d / "no_labels.npz", x_train=rng.random((40, 8, 8, 1)).astype("float32"),
             y_val=np.zeros(4, int))


def _recipes(d, mlp_path):
    """Recipes: safe mode turned off by the file, a Lambda model, bad data, bad shapes."""
    step = "steps:\n  - prune: {sparsity: 0.5}\n"
    (d / "ok.yaml").write_text(f"model: {mlp_path}\n{step}")
    (d / "unsafe_lambda.yaml").write_text(f"model: {d}/lambda.keras\nunsafe: true\n{step}")
    (d / "lambda_recipe.yaml").write_text(f"model: {d}/lambda.keras\n{step}")
    (d / "labels_recipe.yaml").write_text(f"model: {mlp_path}\ndata: npz:{d}/labels.npz\n{step}")
    (d / "nan_recipe.yaml").write_text(f"model: {mlp_path}\ndata: npz:{d}/nan.npz\n{step}")
    (d / "failing_step.yaml").write_text(
        f"model: {mlp_path}\nsteps:\n  - prune: {{sparsity: 0.5, layers: [no_such_layer]}}\n")
    (d / "list.yaml").write_text("- prune: {sparsity: 0.5}\n")
    (d / "empty.yaml").write_text("")
    (d / "binary.yaml").write_bytes(b"\xff\xfe\xfd\x00" + os.urandom(256))


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
    # the file type first: "needs --data" would send the user after the wrong problem
    ("quantize-not-a-keras-file", ["quantize", "{dir}/model.pt", "-o", "{out}.tflite"], 1,
     "unsupported model file type '.pt'"),
    ("inspect-dir-not-savedmodel", ["inspect", "{dir}/not_saved_model"], 1, "not a SavedModel"),
    ("inspect-unknown-data", ["inspect", "{mlp}", "--data", "cifar10"], 1, "unknown dataset"),
    ("inspect-data-shape", ["inspect", "{mlp}", "--data", "npz:{dir}/shape.npz"], 1,
     "do not fit model input"),
    ("inspect-labels-range", ["inspect", "{mlp}", "--data", "npz:{dir}/labels.npz"], 1,
     "labels go up to 25"),
    ("inspect-nan-data", ["inspect", "{mlp}", "--data", "npz:{dir}/nan.npz"], 1, "NaN or inf"),
    ("inspect-empty-data", ["inspect", "{mlp}", "--data", "npz:{dir}/emptydata.npz"], 1,
     "is empty"),
    ("inspect-binary-csv", ["inspect", "{mlp}", "--data", "{dir}/binary.csv"], 1,
     "not UTF-8 text"),
    ("inspect-ragged-csv", ["inspect", "{mlp}", "--data", "{dir}/ragged.csv", "--label-column",
                            "y"], 1, "line 22 has 3 values, the header 65"),
    ("prune-csv-empty-cell", ["prune", "{mlp}", "-o", "{out}.keras", "--data", "{dir}/hole.csv",
                              "--label-column", "y", "--sparsity", "0.5"], 1,
     "column 'p0' is empty on line 11"),
    ("inspect-csv-columns-shape", ["inspect", "{mlp}", "--data", "{dir}/narrow.csv",
                                   "--label-column", "y"], 1,
     "samples of shape (2,) (2 values) do not fit model input (8, 8, 1)"),
    ("inspect-string-data", ["inspect", "{mlp}", "--data", "npz:{dir}/strings.npz"], 1,
     "the data holds strings, but model input (8, 8, 1) takes float32"),
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
    ("prune-two-inputs-one-array", ["prune", "{dir}/two_inputs.keras", "-o", "{out}.keras",
                                    "--data", "digits"], 1, "has 2 inputs"),
    ("export-two-inputs-one-shape", ["export", "{dir}/two_inputs.keras", "-o", "{out}.onnx",
                                     "--input-shape", "8,8,1"], 1,
     "--input-shape gives one input"),
    ("export-input-shape-contradicts", ["export", "{dir}/five.keras", "-o", "{out}.onnx",
                                        "--input-shape", "8,8,3"], 1, "contradicts model"),
    ("export-input-shape-syntax", ["export", "{dir}/five.keras", "-o", "{out}.onnx",
                                   "--input-shape", "8x8"], 1, "comma-separated"),
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
    ("quantize-bad-mode", ["quantize", "{mlp}", "-o", "{out}.tflite", "--mode", "int3"], 2, ""),
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
    ("inspect-npz-one-hot-wider-than-the-model", ["inspect", "{mlp}", "--data",
                                                  "npz:{dir}/one_hot.npz"], 1,
     "targets of shape (12,) do not match model 'mlp' output (10,)"),
    ("prune-checkpoint-of-another-command", ["prune", "{mlp}", "-o", "{out}.keras", "--data",
                                             "digits", "--epochs", "1", "--checkpoint-dir",
                                             "{dir}/other_checkpoint"], 1,
     "was made by another command or model; use a new --checkpoint-dir or delete it"),
    # Code in files: nothing runs without the user's own --unsafe (each would leave a marker).
    ("run-recipe-unsafe-check", ["run", "{dir}/unsafe_lambda.yaml", "--check"], 1,
     "unsafe: a recipe cannot turn Keras safe mode off by itself"),
    ("run-recipe-unsafe", ["run", "{dir}/unsafe_lambda.yaml", "-o", "{out}"], 1,
     "unsafe: a recipe cannot turn Keras safe mode off by itself"),
    ("run-lambda-model-safe-mode", ["run", "{dir}/lambda_recipe.yaml", "-o", "{out}"], 1,
     "model: {dir}/lambda.keras: contains a Lambda layer"),
    ("prune-lambda-safe-mode", ["prune", "{dir}/lambda.keras", "-o", "{out}.keras"], 1,
     "--unsafe"),
    ("inspect-lambda-h5-safe-mode", ["inspect", "{dir}/lambda.h5"], 1,
     "contains a Lambda layer"),
    ("export-savedmodel-writes-file", ["export", "{dir}/writes_file_savedmodel", "-o",
                                       "{out}.onnx"], 1, "runs op 'WriteFile'"),
    ("quantize-savedmodel-writes-file", ["quantize", "{dir}/writes_file_savedmodel", "-o",
                                         "{out}.tflite", "--mode", "dynamic"], 1,
     "runs op 'WriteFile'"),
    ("inspect-npz-is-a-pickle", ["inspect", "{mlp}", "--data", "npz:{dir}/pickle.npz"], 1,
     "not an .npz file"),
    ("inspect-npz-object-array", ["inspect", "{mlp}", "--data", "npz:{dir}/object.npz"], 1,
     "holds object arrays, which need pickle"),
    # Archives and files made to attack or broken.
    ("inspect-zip-dotdot-member", ["inspect", "{dir}/dotdot_member.keras"], 1,
     "archive member '../../dotdot-evil.txt' points outside the archive"),
    ("inspect-zip-absolute-member", ["inspect", "{dir}/absolute_member.keras"], 1,
     "absolute-evil.txt' points outside the archive"),
    ("inspect-truncated-h5", ["inspect", "{dir}/cut.h5"], 1, "corrupt or truncated HDF5 file"),
    ("inspect-unreadable-input", ["inspect", "{dir}/unreadable.keras"], 1,
     "permission denied"),
    ("inspect-npz-is-a-folder", ["inspect", "{mlp}", "--data", "npz:{dir}/not_saved_model"],
     1, "is a folder, not an .npz file"),
    ("inspect-npz-missing-labels", ["inspect", "{mlp}", "--data", "npz:{dir}/no_labels.npz"],
     1, "missing array 'y_train'"),
    ("prune-nan-data", ["prune", "{mlp}", "-o", "{out}.keras", "--data", "npz:{dir}/nan.npz",
                        "--epochs", "1"], 1, "array 'x_train' contains NaN or inf"),
    ("distill-labels-range", ["distill", "{mlp}", "-o", "{out}.keras", "--data",
                              "npz:{dir}/labels.npz"], 1, "labels go up to 25"),
    # Options: non-finite numbers, impossible students, contradictions.
    ("prune-sparsity-nan", ["prune", "{mlp}", "-o", "{out}.keras", "--sparsity", "nan"], 1,
     "--sparsity: must be a finite number, got nan"),
    ("distill-temperature-inf", ["distill", "{mlp}", "-o", "{out}.keras", "--data", "digits",
                                 "--temperature", "inf"], 1,
     "--temperature: must be a finite number, got inf"),
    ("export-atol-nan", ["export", "{mlp}", "-o", "{out}.onnx", "--atol", "nan"], 1,
     "--atol: must be a finite number, got nan"),
    ("distill-depth-50", ["distill", "{mlp}", "-o", "{out}.keras", "--data", "digits",
                          "--depth", "50", "--epochs", "1"], 1,
     "depth 50: the student can drop at most 1 of the teacher's 2 hidden blocks"),
    ("distill-student-missing", ["distill", "{mlp}", "-o", "{out}.keras", "--data", "digits",
                                 "--student", "{dir}/nobody.keras"], 1, "no such file"),
    ("prune-layers-bad-regex", ["prune", "{mlp}", "-o", "{out}.keras", "--layers", "fc[1"], 1,
     "not a valid regular expression"),
    ("export-sparse-without-quantize", ["export", "{mlp}", "-o", "{out}.tflite", "--sparse"], 1,
     "--sparse is a storage option"),
    ("share-kmeans-finetune-without-data", ["share", "{mlp}", "-o", "{out}.keras", "--method",
                                            "kmeans", "--epochs", "2"], 1, "--data"),
    # Outputs: the input itself, missing or unwritable folders, files where folders go.
    ("quantize-out-is-input", ["quantize", "{mlp}", "-o", "{mlp}", "--mode", "keras-int8",
                               "--data", "digits", "--force"], 1, "output is the input file"),
    ("quantize-no-folder", ["quantize", "{mlp}", "-o", "{dir}/no/such/q.tflite", "--mode",
                            "dynamic"], 1, "does not exist"),
    ("quantize-unwritable", ["quantize", "{mlp}", "-o", "/proc/q.tflite", "--mode", "dynamic"],
     1, "not writable"),
    ("share-out-is-input", ["share", "{mlp}", "-o", "{mlp}", "--force"], 1,
     "output is the input file"),
    ("distill-out-is-input", ["distill", "{mlp}", "-o", "{mlp}", "--data", "digits", "--force"],
     1, "output is the input file"),
    ("cascade-out-is-dir", ["cascade", "{mlp}", "-o", "{dir}", "--data", "digits"], 1,
     "is a directory"),
    ("cascade-unwritable", ["cascade", "lenet300", "-o", "/proc/c.keras", "--data", "digits"], 1,
     "not writable"),
    ("prune-checkpoint-dir-is-file", ["prune", "{mlp}", "-o", "{out}.keras", "--data", "digits",
                                      "--epochs", "1", "--checkpoint-dir", "{dir}/notes.h5"], 1,
     "--checkpoint-dir is a file, not a folder"),
    ("prune-keep-last-good-is-output", ["prune", "{mlp}", "-o", "{out}.keras", "--data",
                                        "digits", "--epochs", "1", "--keep-last-good",
                                        "{out}.keras"], 1,
     "--keep-last-good must differ from the output path"),
    ("prune-keep-last-good-is-input", ["prune", "{mlp}", "-o", "{out}.keras", "--data",
                                       "digits", "--epochs", "1", "--keep-last-good", "{mlp}",
                                       "--force"], 1, "output is the input file"),
    # Recipes: bad files, bad overrides, bad output folders, bad data found before any work.
    ("run-recipe-is-a-list", ["run", "{dir}/list.yaml", "-o", "{out}"], 1,
     "a recipe must be a mapping"),
    ("run-empty-recipe", ["run", "{dir}/empty.yaml", "-o", "{out}"], 1,
     "a recipe must be a mapping"),
    ("run-binary-recipe", ["run", "{dir}/binary.yaml", "-o", "{out}"], 1, "not a text file"),
    ("run-recipe-is-a-folder", ["run", "{dir}/not_saved_model", "-o", "{out}"], 1,
     "is a folder, not a recipe file"),
    ("run-set-bad-path", ["run", "{dir}/wrong_type.yaml", "--set", "steps..x=1", "-o", "{out}"],
     1, "cannot read the path at"),
    ("run-set-without-value", ["run", "{dir}/wrong_type.yaml", "--set",
                               "steps[0].prune.sparsity", "-o", "{out}"], 1,
     "must look like PATH=VALUE"),
    ("run-set-into-a-value", ["run", "{dir}/wrong_type.yaml", "--set", "model.path=x", "-o",
                              "{out}"], 1, "model is not a mapping, so it has no key 'path'"),
    ("run-keep-last-good-is-the-recipes-model", ["run", "{dir}/ok.yaml", "-o", "{out}",
                                                 "--keep-last-good", "{mlp}", "--force"], 1,
     "--keep-last-good is a file the recipe reads"),
    ("run-output-is-a-file", ["run", "{dir}/ok.yaml", "-o", "{dir}/notes.h5"], 1,
     "output exists and is not a folder"),
    ("run-output-not-empty", ["run", "{dir}/ok.yaml", "-o", "{dir}"], 1,
     "output folder is not empty; pass --force"),
    ("run-output-unwritable", ["run", "{dir}/ok.yaml", "-o", "/proc/recipe-out"], 1,
     "not writable"),
    ("run-recipe-labels-range", ["run", "{dir}/labels_recipe.yaml", "-o", "{out}"], 1,
     "labels go up to 25"),
    ("run-recipe-nan-data", ["run", "{dir}/nan_recipe.yaml", "-o", "{out}"], 1,
     "data: {dir}/nan.npz: array 'x_train' contains NaN or inf"),
]


# Cases that need the machine to look different: (what the table says, set-up).
def _deny_reading(name):
    """Make ``{dir}/NAME`` unreadable to this process as ``chmod 000`` would for a user
    (root reads anything, so the denial is simulated where every check asks it)."""
    def setup(monkeypatch, files):
        denied = os.path.join(files["dir"], name)
        real = os.access

        def access(path, mode, *args, **kwargs):
            if os.fspath(path) == denied and mode & os.R_OK:
                return False
            return real(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
    return setup


CASE_SETUP = {"inspect-unreadable-input": ("read permission denied",
                                           _deny_reading("unreadable.keras"))}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folders) -> dict:
    """Every entry under ``folders``: a file's digest, a link's target, or 'folder'."""
    found = {}
    for top in folders:
        for root, dirs, names in os.walk(top):
            for name in dirs + names:
                path = Path(root, name)
                if path.is_symlink():
                    found[str(path)] = "link to " + os.readlink(path)
                elif path.is_dir():
                    found[str(path)] = "folder"
                else:
                    found[str(path)] = _digest(path)
    return found


def _entries(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*")) if folder.exists() else []


# TensorFlow's autograph writes the code it generates to $TMPDIR and removes it when the
# process exits (atexit): in-process cases cannot see that happen, real processes can
# (test_a_real_process_leaves_tmpdir_empty).
_REMOVED_AT_EXIT = re.compile(r"__autograph_generated_file\w*\.py")


def _tmp_entries(folder: Path) -> list[str]:
    return [p for p in _entries(folder) if not _REMOVED_AT_EXIT.fullmatch(Path(p).name)]


@contextlib.contextmanager
def _warnings_a_user_would_see():
    """Record the Python warnings issued inside, under Python's default filters: what a
    user's terminal would print (pytest's own filters would show more, and hide them)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                         ResourceWarning):
            warnings.simplefilter("ignore", category)
        yield seen


class _Sandbox:
    """One case's own folders, and the state it must leave as it found it.

    The case runs with its current directory in ``cwd/``, ``$TMPDIR`` (and Python's
    ``tempfile``) in ``tmp/``, its output named inside ``out/``; the folders of its inputs
    (and ``watch``) are snapshotted before it runs. :meth:`findings` compares.
    """

    def __init__(self, root: Path, files: dict, monkeypatch, watch=()):
        self.root, self.files = Path(root), files
        self.out, self.tmp, self.cwd = self.root / "out", self.root / "tmp", self.root / "cwd"
        for folder in (self.out, self.tmp, self.cwd):
            folder.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv("TMPDIR", str(self.tmp))
        monkeypatch.setattr(tempfile, "tempdir", str(self.tmp))
        monkeypatch.chdir(self.cwd)
        self.watched = [files["dir"], *_model_folders(files), *map(str, watch)]
        self.before = _tree(self.watched)

    @property
    def output(self) -> Path:
        """The output a case names: ``{out}``, ``{out}.keras``, ..."""
        return self.out / "result"

    def findings(self) -> dict:
        """What the case changed: lists of paths, each of which must be empty."""
        after = _tree(self.watched)
        markers = {os.path.join(self.files["dir"], m) for m in MARKERS}
        mine = {self.out, self.tmp, self.cwd}
        return {
            "inputs damaged": [p for p, d in self.before.items() if after.get(p, d) != d],
            "user files deleted": [p for p in self.before if p not in after],
            "leftovers": _entries(self.out) + _tmp_entries(self.tmp) + _entries(self.cwd),
            "written outside": [p for p in after if p not in self.before and p not in markers]
            + [str(p) for p in self.root.iterdir() if p not in mine],
            "executions": sorted(m for m in markers if os.path.lexists(m)),
        }

    def placeholders(self, text: str) -> str:
        """``text`` with this machine's paths written as the table's placeholders."""
        for path, name in ((self.output, "{out}"), (self.root, "{tmp}"),
                           (self.files["dir"], "{dir}"),
                           *((folder, "{models}") for folder in _model_folders(self.files))):
            text = text.replace(str(path), name)
        return text


def _model_folders(files) -> list[str]:
    return sorted({str(Path(files["mlp"]).parent), str(Path(files["cnn"]).parent)})


# What the totals count, in the table's words.
CHECKS = ("tracebacks", "inputs damaged", "leftovers", "written outside",
          "user files deleted", "executions")


def _record(case_id, command, code, line, sandbox, traceback=False, expected=None) -> dict:
    """Add one case to RESULTS (before its assertions: the totals count what was found).

    ``expected(found) -> found`` drops what a case writes by design (a run's report).
    """
    found = sandbox.findings()
    if expected is not None:
        found = expected(found)
    RESULTS.append({"case": case_id, "command": sandbox.placeholders(command),
                    "exit": code, "line": sandbox.placeholders(line),
                    "counts": {"tracebacks": int(bool(traceback)),
                               **{k: len(v) for k, v in found.items()}}})
    return found


def _assert_clean(found: dict) -> None:
    for check, paths in found.items():
        assert paths == [], f"{check}: {paths}"


def _invoke(*args):
    """The CLI in-process, as a user runs it: ``(result, Python warnings it printed)``."""
    from click.testing import CliRunner

    from compress.cli import main

    with _warnings_a_user_would_see() as seen:
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    return result, [f"{w.category.__name__}: {w.message}" for w in seen]


def _said(result, printed_warnings) -> list[str]:
    """The lines a refused command printed to stderr (progress lines aside), warnings
    included."""
    return [line for line in result.stderr.splitlines()
            if line.strip() and not line.startswith(">> ")] + printed_warnings


def _a_traceback(result) -> bool:
    escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
    return escaped or "Traceback" in result.output


@pytest.mark.parametrize("case_id,argv,code,words", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refusal(case_id, argv, code, words, files, tmp_path, monkeypatch):
    sandbox = _Sandbox(tmp_path, files, monkeypatch)
    note, setup = CASE_SETUP.get(case_id, ("", None))
    if setup is not None:
        setup(monkeypatch, files)
    args = [a.format(**files, out=sandbox.output) for a in argv]
    result, printed = _invoke(*args)
    lines = _said(result, printed)
    traceback = _a_traceback(result)
    found = _record(case_id, " ".join(argv) + (f" ({note})" if note else ""),
                    result.exit_code, lines[-1] if lines else "", sandbox, traceback)
    assert not traceback, result.output
    assert result.exit_code == code, result.output
    if code == 1:
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        assert words.format(**files) in lines[0]
    else:  # a usage error: click's usage lines, then its one "Error:" line
        assert [line for line in lines if line.startswith("Error: ")] == lines[-1:], lines
    _assert_clean(found)


def test_a_model_loaded_with_unsafe_can_be_pruned(files, cli, tmp_path):
    """--unsafe holds for the copies the passes make, not only for the first load; and
    the Lambda's marker shows the catalogue would see code that ran."""
    import keras

    marker = Path(files["dir"]) / "executed-lambda.txt"
    out = tmp_path / "pruned.keras"
    try:
        result = cli("prune", f"{files['dir']}/lambda.keras", "-o", out, "--unsafe",
                     "--sparsity", "0.5")
        assert result.exit_code == 0, result.output
        assert marker.exists()  # the user asked for it: the file's code ran
        pruned = keras.models.load_model(out, safe_mode=False)
        assert any(isinstance(layer, keras.layers.Lambda) for layer in pruned.layers)
    finally:
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()


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
                       "is untouched; 'compress --debug inspect ...' shows the traceback)")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: chmod 000 blocks nothing")
def test_an_unreadable_input_is_one_line_and_exit_1(files, tmp_path):
    """It was click's exit 2 with three usage lines (its own readable check)."""
    locked = tmp_path / "locked.keras"
    locked.write_bytes(Path(files["mlp"]).read_bytes())
    locked.chmod(0)
    try:
        result, printed = _invoke("inspect", locked)
        assert result.exit_code == 1, result.output
        assert _said(result, printed) == [
            f"error: {locked}: permission denied (this user cannot read it)"]
    finally:
        locked.chmod(0o600)


def test_run_force_replaces_only_its_own_files(files, tmp_path, monkeypatch):
    """``compress run -o DIR --force`` deleted every name starting with step or report,
    every .png, and such folders whole; now a run that fails half-way after cleaning DIR
    leaves each of the user's files, and the file behind a link named like its report."""
    folder, elsewhere = tmp_path / "results", tmp_path / "elsewhere"
    elsewhere.mkdir()
    precious = elsewhere / "precious.txt"
    precious.write_text("the only copy")
    theirs = {"report-2024-taxes.pdf": b"taxes", "stepmother.jpg": b"photo",
              "holiday.png": b"png", "steps/notes.txt": b"notes", "keep.txt": b"keep",
              "step1-prune.keras.bak": b"a backup", "step9-prune.keras/inside.txt": b"folder"}
    for name, content in theirs.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    os.symlink(precious, folder / "report.json")
    sandbox = _Sandbox(tmp_path / "case", files, monkeypatch, watch=[folder, elsewhere])
    result, printed = _invoke("run", f"{files['dir']}/failing_step.yaml", "-o", folder,
                              "--force")
    lines = _said(result, printed)
    own = re.compile(r"step0-baseline\.keras|report\.(json|md)|report-[a-z-]+\.png")

    def the_runs_own_output(found):
        """The run's baseline and report in its folder are its output (the link named
        report.json included, replaced by the report), not leftovers."""
        return {**found,
                "written outside": [p for p in found["written outside"]
                                    if Path(p).parent != folder or not own.fullmatch(
                                        Path(p).name)],
                "inputs damaged": [p for p in found["inputs damaged"]
                                   if p != str(folder / "report.json")]}

    found = _record("run-force-keeps-user-files",
                    "run {dir}/failing_step.yaml -o DIR --force (DIR: the user's files, a "
                    "link named report.json)", result.exit_code, lines[-1] if lines else "", sandbox,
                    _a_traceback(result), expected=the_runs_own_output)
    assert result.exit_code == 1 and len(lines) == 1, lines
    assert "steps[0].prune: layers 'no_such_layer'" in lines[0]
    for name, content in theirs.items():
        assert (folder / name).read_bytes() == content, name
    assert precious.read_text() == "the only copy"
    _assert_clean(found)


def test_python_api_refusals(files, mlp_file, tmp_path, monkeypatch):
    import math

    import compress
    from compress.errors import CompressError

    model = compress.load_model(files["mlp"])
    ds = mlp_file[1]
    lenet = {"model": "lenet300", "data": "digits", "steps": [{"prune": {"sparsity": 0.5}}]}
    calls = [
        ("load_model text", lambda out: compress.load_model(f"{files['dir']}/notes.h5")),
        ("load_model lambda", lambda out: compress.load_model(f"{files['dir']}/lambda.keras")),
        ("load_model savedmodel writes file",
         lambda out: compress.load_model(f"{files['dir']}/writes_file_savedmodel")),
        ("load_model dotdot member",
         lambda out: compress.load_model(f"{files['dir']}/dotdot_member.keras")),
        ("load_data pickle", lambda out: compress.load_data(f"npz:{files['dir']}/pickle.npz")),
        ("prune obd without data", lambda out: compress.prune(model, None, method="obd")),
        ("prune sparsity 1", lambda out: compress.prune(model, ds, sparsity=1.0)),
        ("prune quality inf", lambda out: compress.prune(model, ds, quality=math.inf)),
        ("hash factor 2", lambda out: compress.hash_model(model, ds, factor=2.0)),
        ("cluster 1", lambda out: compress.cluster_model(model, ds, clusters=1)),
        ("distill T<0", lambda out: compress.distill(model, ds, temperature=-1.0)),
        ("distill T=inf", lambda out: compress.distill(model, ds, temperature=math.inf)),
        ("distill depth 50", lambda out: compress.distill(model, ds, depth=50)),
        ("quantize no data", lambda out: compress.quantize(model, None, mode="int8")),
        ("export exists", lambda out: compress.export_onnx(model, files["cnn"])),
        ("recipe typo", lambda out: compress.run_recipe(
            {**lenet, "steps": [{"prune": {"spars": 1}}]}, output=out)),
        ("recipe unsafe without unsafe=True", lambda out: compress.run_recipe(
            {**lenet, "model": f"{files['dir']}/lambda.keras", "data": None, "unsafe": True},
            output=out)),
        ("recipe lambda model", lambda out: compress.run_recipe(
            {**lenet, "model": f"{files['dir']}/lambda.keras", "data": None}, output=out)),
    ]
    weights = [np.array(w) for w in model.get_weights()]
    for i, (name, call) in enumerate(calls):
        sandbox = _Sandbox(tmp_path / f"call{i}", files, monkeypatch)
        with _warnings_a_user_would_see() as seen, pytest.raises(CompressError) as err:
            call(sandbox.output)
        found = _record(f"api: {name}", name, "CompressError", str(err.value), sandbox)
        assert "\n" not in str(err.value), name
        assert [str(w.message) for w in seen] == [], name
        _assert_clean(found)
    for a, b in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # the model object was never mutated


def test_a_disk_too_full_for_the_output_is_refused_before_writing(files, tmp_path,
                                                                   monkeypatch):
    from types import SimpleNamespace

    from compress import io

    def almost_full(folder):
        return SimpleNamespace(total=2**30, used=2**30 - 8192, free=8192)

    sandbox = _Sandbox(tmp_path, files, monkeypatch)
    monkeypatch.setattr(io.shutil, "disk_usage", almost_full)
    result, printed = _invoke("prune", files["mlp"], "-o", f"{sandbox.output}.h5",
                              "--sparsity", "0.5")
    lines = _said(result, printed)
    found = _record("prune-disk-full", "prune {mlp} -o {out}.h5 (8 KiB free)",
                    result.exit_code, lines[-1] if lines else "", sandbox, _a_traceback(result))
    assert result.exit_code == 1 and len(lines) == 1, lines
    assert "not enough free space in" in lines[0]
    _assert_clean(found)


def test_a_real_process_leaves_tmpdir_empty(files, tmp_path, monkeypatch):
    """A command that loaded and measured a model before it refused leaves nothing in its
    $TMPDIR once the process has exited (autograph's files included)."""
    import subprocess
    import sys

    sandbox = _Sandbox(tmp_path, files, monkeypatch)
    proc = subprocess.run(
        [sys.executable, "-m", "compress.cli", "prune", files["mlp"], "-o",
         f"{sandbox.output}.keras", "--layers", "nothing_like_this"], capture_output=True,
        text=True, timeout=300, check=False, cwd=sandbox.cwd,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    found = _record("prune-regex-real-process",
                    "prune {mlp} -o {out}.keras --layers nothing_like_this (its own process)",
                    proc.returncode, lines[-1] if lines else "", sandbox,
                    "Traceback" in proc.stderr)
    assert proc.returncode == 1 and len(lines) == 1, lines
    assert "nothing_like_this" in lines[0]
    assert _entries(sandbox.tmp) == []  # not even autograph's files
    _assert_clean(found)


@pytest.fixture
def small_disk(tmp_path):
    """A real 160 KiB file system (tmpfs): needs root, skipped where mounting is refused."""
    import shutil
    import subprocess

    folder = tmp_path / "case" / "out"
    folder.mkdir(parents=True)
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


def test_a_disk_that_fills_during_the_write_is_one_line_and_leaves_nothing(
        small_disk, files, tmp_path, monkeypatch):
    """HDF5 crashed the process (SIGSEGV, exit 139, a 28-line h5py traceback) and left
    ``.x.XXXX.partial.h5`` behind. Each run is a real process with its own ``$TMPDIR``."""
    import subprocess
    import sys

    import keras

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    wide = inputs / "wide.keras"  # its .h5 is about 170 KB: more than the disk holds
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(512),
                      keras.layers.Dense(10, activation="softmax")]).save(wide)
    for case_id, script in (("prune-disk-full-real", None),
                            ("prune-disk-fills-while-writing", _DISK_FILLS_WHILE_WRITING)):
        # out/ is the small disk; the input's folder is watched like the catalogue's
        sandbox = _Sandbox(tmp_path / "case", files, monkeypatch, watch=[inputs])
        command = ["-c", script] if script else ["-m", "compress.cli"]
        proc = subprocess.run(
            [sys.executable, *command, "prune", str(wide), "-o", f"{sandbox.output}.h5",
             "--sparsity", "0.5"], capture_output=True, text=True, timeout=300,
            check=False, cwd=sandbox.cwd, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        found = _record(case_id, "prune wide.keras -o {out}.h5 (a 160 KiB disk)",
                        proc.returncode, lines[-1] if lines else "", sandbox,
                        "Traceback" in proc.stderr)
        assert proc.returncode == 1, proc.stderr[-1500:]
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        assert ("not enough free space" if script is None else "No space left on device") \
            in lines[0]
        _assert_clean(found)


def test_write_summary_table():
    target = os.environ.get("COMPRESS_RELIABILITY_TABLE")
    if not target:
        pytest.skip("set COMPRESS_RELIABILITY_TABLE=path.md to write the summary table")
    Path(target).write_text(summary_table(RESULTS))
    assert len(RESULTS) >= 120


def summary_table(results: list[dict]) -> str:
    """The catalogue as Markdown: a sentence with the totals of every check, then one row
    per case and a row of totals."""
    totals = {check: sum(r["counts"][check] for r in results) for check in CHECKS}
    said = ", ".join(f"{totals[check]} {check}" for check in CHECKS)
    sentence = (f"{len(results)} cases tried: {said} (executions: code from a file run "
                "without --unsafe).")
    lines = [sentence, "", "| case | command | exit | what it says |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['case']} | `{r['command']}` | {r['exit']} | "
                     f"{r['line'].replace('|', '/')} |")
    lines.append(f"| **{len(results)} cases** | | | **{said}** |")
    return "\n".join(lines) + "\n"
