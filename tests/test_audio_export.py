"""Audio models: a ``keras.layers.MelSpectrogram`` model exports to ONNX.

Keras computes the STFT with TensorFlow's RFFT and takes its real and imaginary parts;
tf2onnx converts an RFFT only when its consumer is ``ComplexAbs``, so the export wrote an
invalid ``RFFT`` node and was refused. The export copy now computes the same STFT as a
strided convolution with DFT kernels (compress.export.stft_by_convolution).
"""

from __future__ import annotations

import numpy as np
import pytest


def _audio(n=64, length=4000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    x = rng.normal(scale=0.2, size=(n, length))
    for i in range(n):
        x[i] += np.sin(t * (0.02 + 0.03 * (i % 4)))
    return x.astype("float32")


@pytest.mark.parametrize("options", [
    {"fft_length": 256, "sequence_stride": 128},
    {"fft_length": 256, "sequence_length": 200, "sequence_stride": 100, "window": "hamming",
     "power_to_db": False, "mag_exp": 1.0},
])
def test_the_spectrogram_itself_exports_to_onnx(tmp_path, options):
    import keras

    from compress.export import export_artifact
    from compress.runtime import run_artifact

    inp = keras.Input((4000,))
    spec = keras.layers.MelSpectrogram(num_mel_bins=32, sampling_rate=4000, **options)(inp)
    model = keras.Model(inp, spec, name="mel")
    x = _audio()
    content, info = export_artifact(model, (x, None), format="onnx", samples=32)
    assert "MelSpectrogram written as a strided convolution" in info["export_copy"]
    got, want = run_artifact(content, x[:32], fmt="onnx"), np.asarray(model(x[:32]))
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, scale)


def test_an_audio_classifier_exports_and_quantizes_to_onnx(tmp_path, cli):
    import keras

    x = _audio(240)
    y = np.arange(240) % 4
    keras.utils.set_random_seed(0)
    inp = keras.Input((4000,), name="audio")
    h = keras.layers.MelSpectrogram(fft_length=256, sequence_stride=128, num_mel_bins=32,
                                    sampling_rate=4000)(inp)
    h = keras.layers.Reshape((32, -1, 1))(h)
    h = keras.layers.Conv2D(8, 3, activation="relu")(h)
    out = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out, name="audio_classifier")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=15, verbose=0)
    path, data = tmp_path / "audio.keras", tmp_path / "audio.npz"
    model.save(path)
    np.savez(data, x_train=x, y_train=y)
    result = cli("export", path, "-o", tmp_path / "a.onnx", "--data", f"npz:{data}")
    assert result.exit_code == 0, result.output
    assert "top-1 agreement 100.00%" in result.output
    result = cli("quantize", path, "-o", tmp_path / "q.onnx", "--data", f"npz:{data}")
    assert result.exit_code == 0, result.output
