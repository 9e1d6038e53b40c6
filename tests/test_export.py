"""compress.export: ONNX and TFLite artifacts agree with Keras in the real runtimes."""

import numpy as np
import pytest

from compress import export, io
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
    got = export.run_artifact(tmp_path / f"cnn.{fmt}", x)
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
    ms = export.runtime_latency_ms(path, (8, 8, 1), batch=1, threads=1, runs=10)
    assert 0.0 < ms < 1000.0
