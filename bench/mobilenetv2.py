"""The second benchmark model (issue 20): keras.applications MobileNetV2 trained on animals.

MobileNetV2 (alpha 0.35, ``weights=None``, randomly initialised, 32x32x3 input, 10
classes) trained on ``animals`` (Animal-MNIST, 28x28 grayscale silhouettes, each image
zero-padded by 2 pixels to 32x32 and tiled to 3 channels), with the same seeded
train/val/test split as :func:`compress.data.load_data`. It is trained once and cached
(the ``.keras`` file and the prepared arrays as ``.npz``) under ``cache_dir``, so a later
case loads it in seconds; unlike the LeNet baselines of :mod:`bench.baselines`, the cache
survives between runs (a full training costs about ten minutes on 2 cores). Delete the
folder to retrain.

Example:

>>> from bench.mobilenetv2 import trained_mobilenetv2    # doctest: +SKIP
>>> model, ds = trained_mobilenetv2()                    # doctest: +SKIP
>>> ds.x_train.shape, ds.num_classes                     # doctest: +SKIP
((7200, 32, 32, 3), 10)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

CACHE_DIR = Path(__file__).resolve().parent / "out" / "cache"
SEED = 0
ALPHA = 0.35
INPUT_SHAPE = (32, 32, 3)
# Full training: cosine decay over EPOCHS (best validation weights kept); quick: 1 epoch on
# 600 training images (seconds).
EPOCHS, QUICK_EPOCHS = 30, 0  # quick: untrained (it only exercises the code paths)
LEARNING_RATE = 3e-3
BATCH_SIZE = 64


def build_mobilenetv2():
    """An untrained keras.applications MobileNetV2 (alpha 0.35, 32x32x3, 10 classes)."""
    import keras

    model = keras.applications.MobileNetV2(input_shape=INPUT_SHAPE, alpha=ALPHA,
                                           weights=None, classes=10)
    # The application's BatchNorm momentum (0.999) averages over ~1,000 steps, more than
    # a few epochs of 113 steps give: 0.99 lets the moving statistics follow training.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.99
    return model


def animals_32x32x3(seed: int = SEED):
    """``animals`` with every 28x28x1 image padded to 32x32 and tiled to 3 channels."""
    import dataclasses

    from compress.data import load_data

    ds = load_data("animals", seed)

    def fit(x):
        x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
        return np.ascontiguousarray(np.repeat(x, 3, axis=-1), dtype="float32")

    return dataclasses.replace(ds, x_train=fit(ds.x_train), x_val=fit(ds.x_val),
                               x_test=fit(ds.x_test))


def _paths(quick: bool, cache_dir: Path) -> tuple[Path, Path]:
    stem = f"mobilenetv2-a{ALPHA}-animals-s{SEED}-q{int(quick)}"
    return cache_dir / f"{stem}.keras", cache_dir / f"{stem}.npz"


def _save_data(ds, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    np.savez(tmp, x_train=ds.x_train, y_train=ds.y_train, x_val=ds.x_val, y_val=ds.y_val,
             x_test=ds.x_test, y_test=ds.y_test)
    os.replace(tmp, path)


def _load_data(path: Path):
    from compress.data.arrays import Dataset

    with np.load(path, allow_pickle=False) as f:
        a = {k: f[k] for k in f.files}
    return Dataset("animals-32x32x3", a["x_train"], a["y_train"], a["x_val"], a["y_val"],
                   a["x_test"], a["y_test"], 10)


def trained_mobilenetv2(quick: bool = False, cache_dir=CACHE_DIR):
    """MobileNetV2 (alpha 0.35) trained on animals at 32x32x3, and its prepared dataset.

    Trained on the first call (seed 0: Adam, cosine learning rate from 3e-3, 30 epochs,
    the best validation-loss weights kept; quick: untrained, 600 images) and cached in
    ``cache_dir``; every call returns a fresh uncompiled copy loaded from the file, so
    callers cannot disturb each other.

    Args:
        quick: bool, default False. No training, a subset (600 train, 300 test): quick runs only exercise the code.
        cache_dir: str or Path, default ``bench/out/cache``.

    Returns:
        ``(model, ds)``: a keras.Model (softmax outputs) and a
        :class:`compress.data.Dataset` of 32x32x3 float32 images in [0, 1].
    """
    import keras

    from compress import training

    cache_dir = Path(cache_dir)
    model_path, data_path = _paths(quick, cache_dir)
    if model_path.exists() and data_path.exists():
        return (training.copy_model(keras.models.load_model(model_path, compile=False)),
                _load_data(data_path))
    cache_dir.mkdir(parents=True, exist_ok=True)
    ds = animals_32x32x3(SEED)
    if quick:
        ds = ds.take(600, 300)
    training.set_seed(SEED)
    model = build_mobilenetv2()
    training.compile_classifier(model, learning_rate=LEARNING_RATE)
    from compress.callbacks import CosineSchedule

    epochs = QUICK_EPOCHS if quick else EPOCHS
    best = keras.callbacks.EarlyStopping(monitor="val_loss", patience=epochs,
                                         restore_best_weights=True)
    if epochs:
        training.fit(model, ds, epochs=epochs, batch_size=BATCH_SIZE, verbose=0,
                     callbacks=[CosineSchedule(peak_lr=LEARNING_RATE, floor=1e-5), best])
    # Atomic: cases in parallel child processes may train it at the same time.
    tmp = model_path.with_name(f".{model_path.stem}.{os.getpid()}.keras")
    model.save(tmp)
    os.replace(tmp, model_path)
    _save_data(ds, data_path)
    return (training.copy_model(keras.models.load_model(model_path, compile=False)),
            _load_data(data_path))


if __name__ == "__main__":  # python -m bench.mobilenetv2 [--quick]: train, report accuracy
    import sys
    import time

    from compress.quiet import import_tensorflow

    import_tensorflow()
    from compress import training

    t0 = time.perf_counter()
    q = "--quick" in sys.argv
    m, d = trained_mobilenetv2(quick=q)
    print(f"MobileNetV2 animals 32x32x3 quick={q}: test accuracy "
          f"{training.accuracy(m, d.x_test, d.y_test):.4f}, val "
          f"{training.accuracy(m, d.x_val, d.y_val):.4f} ({time.perf_counter() - t0:.0f} s)")
