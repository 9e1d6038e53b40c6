"""``compress share``: hash and k-means from files, reports, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import file_digest


def test_share_hash_writes_a_loadable_smaller_model(cli, mlp_file, tmp_path):
    import keras

    import compress  # noqa: F401
    from compress.sharing.hashing import HashedDense

    path, ds = mlp_file
    digest = file_digest(path)
    out = tmp_path / "hashed.keras"
    result = cli("share", path, "-o", out, "--method", "hash", "--factor", "0.25",
                 "--data", "digits", "--epochs", "2", "--init", "scratch", "--dropout",
                 "0.2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["pass"]["method"] == "hash"
    assert report["pass"]["init"] == "scratch" and report["pass"]["dropout"] == 0.2
    assert report["after"]["params"] < 0.35 * report["before"]["params"]
    assert report["pass"]["bits_per_weight"] == pytest.approx(8.0, rel=0.02)
    assert file_digest(path) == digest
    loaded = keras.models.load_model(out)
    assert isinstance(loaded.get_layer("fc1"), HashedDense)
    assert loaded.get_layer("fc1").dropout == 0.0 and loaded.get_layer("fc2").dropout == 0.2
    acc = float(np.mean(np.argmax(loaded.predict(ds.x_test, verbose=0), -1) == ds.y_test))
    assert acc == pytest.approx(report["after"]["accuracy"], abs=1e-6)


def test_share_kmeans_reports_bits_and_distinct_values(cli, mlp_file, tmp_path):
    import keras

    path, _ = mlp_file
    out = tmp_path / "clustered.keras"
    result = cli("share", path, "-o", out, "--method", "kmeans", "--clusters", "4",
                 "--data", "digits", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["pass"]["index_bits"] == 2
    loaded = keras.models.load_model(out)
    assert np.unique(np.asarray(loaded.get_layer("fc1").kernel)).size <= 4
    assert report["after"]["accuracy"] > 0.5


@pytest.mark.parametrize("args, message", [
    (["--method", "hash", "--factor", "1.5"], "factor"),
    (["--method", "hash", "--factor", "0"], "factor"),
    (["--method", "kmeans", "--clusters", "1"], "clusters"),
    (["--method", "kmeans", "--clusters", "100000"], "clusters"),
    (["--method", "hash", "--layers", "flatten"], "'flatten': matches no shareable layer"),
    (["--method", "hash", "--layers", "fc"], "layers 'fc': matches no shareable layer"),
    (["--method", "hash", "--epochs", "2"], "needs --data"),
    (["--method", "hash", "--dropout", "1"], "dropout"),
])
def test_share_refuses_bad_input(cli, mlp_file, tmp_path, args, message):
    path, _ = mlp_file
    out = tmp_path / "out.keras"
    result = cli("share", path, "-o", out, *args)
    assert result.exit_code == 1
    assert message in result.output and result.output.count("\n") == 1
    assert not out.exists()


def test_share_refuses_unhashable_layer_and_existing_output(cli, cnn_file, tmp_path):
    path, _ = cnn_file
    out = tmp_path / "out.keras"
    result = cli("share", path, "-o", out, "--layers", "bn1")
    assert result.exit_code == 1 and "cannot be hashed" in result.output
    out.write_bytes(b"keep")
    result = cli("share", path, "-o", out)
    assert result.exit_code == 1 and out.read_bytes() == b"keep"
