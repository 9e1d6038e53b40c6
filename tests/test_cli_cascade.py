"""``compress cascade``: builder or file in, trained model out, atomic and refusing overwrite."""

from __future__ import annotations

import json

import keras
import numpy as np

from tests.conftest import file_digest


def test_cascade_from_a_file_writes_a_loadable_trained_model(cli, cnn_file, tmp_path):
    path, ds = cnn_file
    digest = file_digest(path)
    out = tmp_path / "cascade.keras"
    result = cli("cascade", path, "-o", out, "--data", "digits", "--epochs", "1", "--k", "0",
                 "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert [s["stage"] for s in info["pass"]["stages"]] == [1, 2]
    assert info["pass"]["total_epochs"] == 2
    loaded = keras.models.load_model(out, compile=False)
    assert [la.name for la in loaded.layers] == [la.name for la in
                                                 keras.models.load_model(path).layers]
    acc = float(np.mean(np.argmax(loaded.predict(ds.x_test, verbose=0), -1) == ds.y_test))
    assert abs(acc - info["after"]["accuracy"]) < 1e-9
    assert file_digest(path) == digest  # input untouched


def test_cascade_refuses_existing_output_and_missing_data(cli, tmp_path):
    out = tmp_path / "exists.keras"
    out.write_bytes(b"keep")
    result = cli("cascade", "cnn4", "-o", out, "--data", "digits")
    assert result.exit_code == 1 and "already exists" in result.output
    assert out.read_bytes() == b"keep"
    result = cli("cascade", "cnn4", "-o", tmp_path / "x.keras")
    assert result.exit_code == 1 and "--data" in result.output
    result = cli("cascade", "cnn4", "-o", tmp_path / "x.keras", "--data", "digits",
                 "--k", "-1")
    assert result.exit_code == 1 and "--k" in result.output
