"""OBS and OBD beyond Dense and 2-D convolutions (``pruning-obs-layers``): recurrent cells
(input and recurrent kernels, per-step layer Hessians) and transposed convolutions, pruned
one-shot (no retraining) against magnitude pruning at the same sparsity, on three models
trained here from offline data:

- an LSTM reading mnist5k digits row by row (28 steps of 28 pixels), a classifier;
- a GRU forecaster of a seeded noisy sum of sines (24 steps -> the next value), a regressor;
- a convolutional denoising autoencoder of mnist5k (Conv2D down, Conv2DTranspose up),
  trained with binary cross-entropy on pixels in [0, 1] and scored by test MSE.

These layers had no layer Hessian before (OBS and OBD's ``layer`` estimator left them
dense, and pruning did not reach recurrent cells at all). A last table removes whole
recurrent units (structured pruning, which kept LSTM/GRU layers whole before) and times
the smaller float TFLite files in LiteRT. No issue sets a target here: the section
reports the numbers.
"""

from __future__ import annotations

import time

import numpy as np

from bench.harness import Section, table

LEVELS = (0.5, 0.7)
METHODS = {"magnitude": {"method": "magnitude"},
           "OBD (layer Hessians)": {"method": "obd", "estimator": "layer"},
           "OBS (compensated)": {"method": "obs"}}


def _series(n, steps, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(n + steps + 1, dtype="float64")
    s = (np.sin(t / 7.0) + 0.6 * np.sin(t / 3.1 + 1.0) + 0.3 * np.sin(t / 17.0)
         + 0.1 * rng.normal(size=t.size))
    x = np.stack([s[i:i + steps] for i in range(n)])[..., None].astype("float32")
    y = s[steps:steps + n, None].astype("float32")
    return x, y


def row_lstm(epochs: int, samples: int | None = None):
    """``(model, mnist5k, rows)``: an LSTM(48) classifier of mnist5k digits read row by
    row (28 steps of 28 pixels), trained ``epochs`` epochs from seed 0 (on the first
    ``samples`` training rows if given: quick runs)."""
    import keras

    from compress.data import load_data

    keras.utils.set_random_seed(0)
    mnist = load_data("mnist5k", seed=0)
    rows = mnist.x_train.reshape(-1, 28, 28)
    lstm = keras.Sequential([keras.Input((28, 28)), keras.layers.LSTM(48, name="lstm"),
                             keras.layers.Dense(10, activation="softmax", name="out")],
                            name="row_lstm")
    lstm.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                 metrics=["accuracy"])
    lstm.fit(rows[:samples], mnist.y_train[:samples], epochs=epochs, batch_size=64,
             verbose=0)
    return lstm, mnist, rows


def _models(ctx):
    import keras


    epochs = ctx.size(1, 6)  # quick: the harness checked, on fewer samples
    lstm, mnist, rows = row_lstm(epochs, ctx.size(1200, None))

    x, y = _series(4000, 24, seed=0)
    gru = keras.Sequential([keras.Input((24, 1)), keras.layers.GRU(32, name="gru"),
                            keras.layers.Dense(1, name="out")], name="gru_forecaster")
    gru.compile(keras.optimizers.Adam(3e-3), "mse")
    gru.fit(x[:ctx.size(1000, 3000)], y[:ctx.size(1000, 3000)], epochs=epochs + 2,
            batch_size=64, verbose=0)

    rng = np.random.default_rng(0)
    clean = mnist.x_train.astype("float32")
    noisy = np.clip(clean + 0.3 * rng.normal(size=clean.shape), 0, 1).astype("float32")
    L = keras.layers
    ae = keras.Sequential([
        keras.Input((28, 28, 1)),
        L.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="down1"),
        L.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="down2"),
        L.Conv2DTranspose(16, 3, strides=2, padding="same", activation="relu", name="up1"),
        L.Conv2DTranspose(1, 3, strides=2, padding="same", activation="sigmoid", name="up2")],
        name="denoiser")
    ae.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")  # pixels in [0, 1]
    ae.fit(noisy[:ctx.size(1200, None)], clean[:ctx.size(1200, None)], epochs=epochs,
           batch_size=32, verbose=0)
    test_clean = mnist.x_test.astype("float32")
    test_noisy = np.clip(test_clean + 0.3 * rng.normal(size=test_clean.shape), 0,
                         1).astype("float32")
    return {
        "LSTM(48) on mnist5k rows (classifier)": (
            lstm, (rows, mnist.y_train), (mnist.x_test.reshape(-1, 28, 28), mnist.y_test),
            "accuracy"),
        "GRU(32) forecaster, sum of sines (regressor)": (
            gru, (x[:3000], y[:3000]), (x[3000:], y[3000:]), "mse"),
        "Conv2D/Conv2DTranspose denoiser, mnist5k (regressor)": (
            ae, (noisy, clean), (test_noisy, test_clean), "mse"),
    }


def _score(model, data, metric):
    pred = model.predict(data[0], batch_size=256, verbose=0)
    if metric == "accuracy":
        return float(np.mean(np.argmax(pred, -1) == data[1]))
    return float(np.mean((pred - data[1]) ** 2))


def case_obs_layers(ctx) -> Section:
    from compress.pruning import prune

    sec = Section("OBS and OBD beyond Dense and 2-D convolutions: recurrent cells and "
                  "transposed convolutions", issue="#20")
    cal = ctx.size(128, 512)
    structured = []
    for label, (model, train, test, metric) in _models(ctx).items():
        dense = _score(model, test, metric)
        rows = []
        for s in LEVELS[:1] if ctx.quick else LEVELS:  # quick: the harness checked
            for name, opts in METHODS.items():
                t0 = time.perf_counter()
                pruned, info = prune(model, train, sparsity=s, calibration=cal,
                                     bn_recalibrate=False, **opts)
                got = _score(pruned, test, metric)
                zero = info["sparsity_reached"]
                change = (f"{(got - dense) * 100:+.2f} pts" if metric == "accuracy"
                          else f"{got / dense:.2f}x")
                rows.append([f"{s:.0%}", name,
                             f"{got:.2%}" if metric == "accuracy" else f"{got:.4g}",
                             change, f"{info.get('sparsity_of_prunable', zero):.1%}",
                             ", ".join(info.get("left_out", {})) or "none",
                             f"{time.perf_counter() - t0:.1f}"])
        shown = f"{dense:.2%} accuracy" if metric == "accuracy" else f"MSE {dense:.4g}"
        sec.add(f"### {label}\n\nDense on its test split: **{shown}**; one-shot, no "
                f"retraining, {cal} training samples for the layer Hessians (labels unused "
                "by OBS and OBD's layer estimator).\n\n"
                + table(["sparsity", "method", "test " + metric, "vs dense",
                         "prunable weights zero", "left dense", "seconds"], rows))
        if "Conv2DTranspose" not in label:
            structured.append((label, model, train, test, metric, dense))
    sec.add(_structured_table(ctx, structured, cal))
    return sec


def _structured_table(ctx, cases, cal) -> str:
    """Half the units of each recurrent layer removed: accuracy or MSE one-shot (magnitude
    and OBS) and after fine-tuning, parameters, and batch-1 LiteRT latency of the float
    TFLite files (median of 100 calls, best of three rounds, 1 thread)."""
    from compress.export import export_artifact
    from compress.pruning import prune
    from compress.runtime import runtime_latency_ms

    rows = []
    epochs = ctx.size(1, 2)
    for label, model, train, test, metric, dense in cases:
        base, _ = export_artifact(model, None, format="tflite")
        shape = tuple(model.input_shape[1:])
        rounds = 1 if ctx.quick else 3
        t_dense = min(runtime_latency_ms(base, shape) for _ in range(rounds))
        methods = [("magnitude", {}), (f"magnitude + {epochs} epochs", {"epochs": epochs}),
                   ("OBS (Dense consumers refit)", {"method": "obs", "calibration": cal})]
        for name, opts in methods[::2] if ctx.quick else methods:
            small, info = prune(model, train, structured=True, sparsity=0.5,
                                bn_recalibrate=False, **opts)
            got = _score(small, test, metric)
            content, _ = export_artifact(small, None, format="tflite")
            t_small = min(runtime_latency_ms(content, shape) for _ in range(rounds))
            change = (f"{(got - dense) * 100:+.2f} pts" if metric == "accuracy"
                      else f"{got / dense:.2f}x")
            units = ", ".join(f"{k} {a}->{b}" for k, (a, b) in info["units"].items()
                              if a != b)
            rows.append([label.split(",")[0].split(" on ")[0], name, units,
                         f"{got:.2%}" if metric == "accuracy" else f"{got:.4g}", change,
                         f"{info['params_after'] / info['params_before']:.2f}x",
                         f"{t_small / t_dense:.2f}x ({t_small:.3f} vs {t_dense:.3f} ms)"])
    return ("### Structured: half the recurrent units removed\n\nStructured pruning at 0.5 "
            "(each unit's columns in every gate of the input and recurrent kernels and the "
            "bias, its recurrent row, and the next layer's inputs); the output layer stays. "
            "Latency: float TFLite, batch 1, one thread, LiteRT (recurrent layers unrolled).\n\n"
            + table(["model", "method", "units", "test metric", "vs dense", "parameters",
                     "LiteRT latency vs dense"], rows))


CASES = {"pruning-obs-layers": case_obs_layers}
