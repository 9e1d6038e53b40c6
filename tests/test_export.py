"""compress.export: ONNX and TFLite artifacts agree with Keras in the real runtimes."""

import os

import numpy as np
import pytest

from compress import export, io, runtime
from compress.errors import CompressError


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_small_cnn_export_parity_on_256_inputs(tmp_path, fmt):
    from compress import training
    from compress.data import load_data, prepare
    from compress.models import build

    training.set_seed(0)
    model = build("small-cnn", width=0.25)
    ds = prepare(model, load_data("mnist5k", seed=0)).take(256, 256)
    training.compile_classifier(model)
    training.fit(model, ds, epochs=1, verbose=0)
    saved = tmp_path / "cnn.keras"
    model.save(saved)
    loaded = io.load_model(saved)  # a freshly loaded, never-called model must export too
    x = ds.x_test[:256]
    check = export.export(loaded, tmp_path / f"cnn.{fmt}", x=x)
    assert check["samples"] == 256
    assert check["max_abs_diff"] <= 1e-4
    assert check["top1_agreement"] == 1.0
    got = runtime.run_artifact(tmp_path / f"cnn.{fmt}", x)
    np.testing.assert_allclose(got, training.predict(loaded, x), atol=1e-4)


def test_export_refuses_existing_output_and_keeps_it(tmp_path, mlp_file):
    model = io.load_model(mlp_file[0])
    out = tmp_path / "m.onnx"
    out.write_bytes(b"precious")
    with pytest.raises(CompressError, match="already exists"):
        export.export_onnx(model, out)
    assert out.read_bytes() == b"precious"


def test_disagreement_beyond_tolerance_writes_nothing(tmp_path, mlp_file):
    model = io.load_model(mlp_file[0])
    x = mlp_file[1].x_test[:32]
    with pytest.raises(CompressError, match="disagrees with Keras"):
        export.export_tflite(model, tmp_path / "m.tflite", x=x, atol=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_runtime_latency_is_measured(tmp_path, mlp_file):
    model = io.load_model(mlp_file[0])
    path = tmp_path / "m.tflite"
    export.export_tflite(model, path)
    ms = runtime.runtime_latency_ms(path, (8, 8, 1), batch=1, threads=1, runs=10)
    assert 0.0 < ms < 1000.0


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_export_artifact_returns_verified_bytes_and_writes_nothing(mlp_file, tmp_path,
                                                                   monkeypatch, fmt):
    model = io.load_model(mlp_file[0])
    ds = mlp_file[1]
    monkeypatch.chdir(tmp_path)
    content, info = export.export_artifact(model, ds, format=fmt, samples=100)
    assert list(tmp_path.iterdir()) == [] and not os.listdir(".")
    assert info["format"] == fmt and info["bytes"] == len(content)
    assert info["samples"] == 100 and info["top1_agreement"] == 1.0
    np.testing.assert_allclose(runtime.run_artifact(content, ds.x_test[:100], fmt=fmt),
                               model.predict(ds.x_test[:100], verbose=0), atol=1e-4)
    # the writer is the same export followed by an atomic write
    written = export.export(model, tmp_path / f"m.{fmt}", x=ds.x_test[:100])
    assert written["bytes"] == (tmp_path / f"m.{fmt}").stat().st_size
    assert written["max_abs_diff"] == info["max_abs_diff"]


def test_export_artifact_checks_its_options_and_disagreement(mlp_file):
    model = io.load_model(mlp_file[0])
    with pytest.raises(CompressError, match="export.format: must be one of onnx, tflite"):
        export.export_artifact(model, format="coreml")
    with pytest.raises(CompressError, match="export.atol: must be >= 0.0"):
        export.export_artifact(model, atol=-1.0)
    with pytest.raises(CompressError, match="model 'mlp': exported model disagrees with Keras"):
        export.export_artifact(model, mlp_file[1], format="tflite", atol=1e-12)


def test_verification_inputs_are_the_test_split_else_seeded_random(mlp_file):
    model = io.load_model(mlp_file[0])
    ds = mlp_file[1]
    x = export.verification_inputs(model, ds, samples=50)
    np.testing.assert_array_equal(x, ds.x_test[:50])
    a = export.verification_inputs(model, None, samples=7, seed=3)
    b = export.verification_inputs(model, None, samples=7, seed=3)
    c = export.verification_inputs(model, None, samples=7, seed=4)
    assert a.shape == (7, 8, 8, 1) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_format_for_an_output_path():
    assert export.format_for("m.TFLITE") == "tflite"
    assert export.format_for("m.onnx", {"format": None}) == "onnx"
    assert export.format_for(None, {}) == "onnx"
    assert export.format_for("m.tflite", {"format": "onnx"}) == "onnx"  # the suffix check
    with pytest.raises(CompressError, match="m.bin: cannot tell the format"):  # is io's
        export.format_for("m.bin", {})
