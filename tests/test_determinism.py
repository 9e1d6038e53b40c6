"""The same command with the same seed gives the same weights (prune, share, distill,
quantize calibration) on the same machine."""

import hashlib

import numpy as np
import pytest


def _weights(path):
    import keras

    import compress  # noqa: F401  (registers HashedDense)

    return [np.asarray(w) for w in keras.models.load_model(path).weights]


COMMANDS = {
    "prune": ["prune", "{model}", "-o", "{out}.keras", "--data", "digits", "--sparsity", "0.7",
              "--schedule", "gradual", "--epochs", "1", "--seed", "3"],
    "share": ["share", "{model}", "-o", "{out}.keras", "--data", "digits", "--factor", "0.25",
              "--epochs", "1", "--seed", "3"],
    "distill": ["distill", "{model}", "-o", "{out}.keras", "--data", "digits", "--width", "0.5",
                "--epochs", "1", "--no-baseline", "--seed", "3"],
    "quantize": ["quantize", "{model}", "-o", "{out}.tflite", "--data", "digits", "--mode",
                 "int8", "--no-latency", "--seed", "3"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_same_seed_same_result(name, cli, mlp_file, tmp_path):
    outputs = []
    for run in ("a", "b"):
        args = [a.format(model=mlp_file[0], out=tmp_path / run) for a in COMMANDS[name]]
        result = cli(*args, "--json")
        assert result.exit_code == 0, result.output
        outputs.append(next(tmp_path.glob(f"{run}.*")))
    if outputs[0].suffix == ".tflite":
        digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in outputs]
        assert digests[0] == digests[1]  # calibration picked the same ranges, byte for byte
    else:
        for a, b in zip(_weights(outputs[0]), _weights(outputs[1])):
            np.testing.assert_array_equal(a, b)
