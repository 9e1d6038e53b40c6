"""Sequence models through the passes that used to leave them alone (``sequences``):
k-means sharing of recurrent and Conv1D kernels, QAT of Conv1D layers, distillation of a
regressor, on two models trained here from offline data:

- an LSTM reading mnist5k digits row by row (28 steps of 28 pixels), a classifier;
- a causal, dilated Conv1D network (a TCN) forecasting a seeded noisy sum of sines
  (32 steps -> the next value), a regressor scored by test MSE.

Before this round k-means clustered only Dense and Conv2D kernels (the LSTM's 97% of
weights stayed float), QAT fake-quantized only Conv2D, DepthwiseConv2D and Dense (a
TCN's convolutions trained in float), and distill refused a regressor. No issue sets a
target here: the section reports the numbers.
"""

from __future__ import annotations

import numpy as np

from bench.harness import Section, table


def _models(ctx):
    from bench.cases.obs_layers import row_lstm
    from compress.data import Dataset

    epochs = ctx.size(1, 12)  # quick: the harness checked, on fewer samples
    lstm, mnist, rows = row_lstm(epochs, ctx.size(1200, None))
    digits = Dataset(name="mnist5k rows", x_train=rows[:3200], y_train=mnist.y_train[:3200],
                     x_val=rows[3200:], y_val=mnist.y_train[3200:],
                     x_test=mnist.x_test.reshape(-1, 28, 28), y_test=mnist.y_test,
                     num_classes=10)
    return {"LSTM(48), mnist5k rows (classifier)": (lstm, digits, "accuracy"),
            "Conv1D TCN forecaster (regressor)": tcn_case(ctx)}


def tcn_case(ctx):
    """``(model, dataset, "mse")``: a causal, dilated Conv1D forecaster (a TCN) of a
    seeded noisy sum of sines (32 steps -> the next value), trained from seed 0."""
    import keras

    from bench.cases.obs_layers import _series
    from compress.data import Dataset

    keras.utils.set_random_seed(0)
    x, y = _series(4000, 32, seed=1)
    L = keras.layers
    tcn = keras.Sequential([
        keras.Input((32, 1)),
        L.Conv1D(16, 3, padding="causal", activation="relu", name="c1"),
        L.Conv1D(16, 3, padding="causal", dilation_rate=2, activation="relu", name="c2"),
        L.Conv1D(16, 3, padding="causal", dilation_rate=4, activation="relu", name="c3"),
        L.GlobalAveragePooling1D(), L.Dense(16, activation="relu", name="fc"),
        L.Dense(1, name="out")], name="tcn")
    tcn.compile(keras.optimizers.Adam(3e-3), "mse")
    tcn.fit(x[:ctx.size(1000, 3000)], y[:ctx.size(1000, 3000)], epochs=ctx.size(1, 12) + 4,
            batch_size=64, verbose=0)
    series = Dataset(name="sum of sines", x_train=x[:2600], y_train=y[:2600],
                     x_val=x[2600:3000], y_val=y[2600:3000], x_test=x[3000:],
                     y_test=y[3000:], num_classes=0)
    return tcn, series, "mse"


def _shown(value: float, metric: str) -> str:
    return f"{value:.2%}" if metric == "accuracy" else f"{value:.4g}"


def _score(model_or_artifact, ds, metric):
    from compress.runtime import run_artifact

    x = ds.x_test
    pred = (run_artifact(model_or_artifact, x) if isinstance(model_or_artifact, bytes)
            else model_or_artifact.predict(x, batch_size=256, verbose=0))
    if metric == "accuracy":
        return float(np.mean(np.argmax(pred, -1) == ds.y_test))
    return float(np.mean((np.reshape(pred, np.shape(ds.y_test)) - ds.y_test) ** 2))


def case_sequences(ctx) -> Section:
    from compress.quantization import quantize
    from compress.sharing import share

    sec = Section("Sequence models: k-means of recurrent and Conv1D kernels, Conv1D QAT, "
                  "distilled regressors", issue="#20")
    rows = []
    for label, (model, ds, metric) in _models(ctx).items():
        dense = _score(model, ds, metric)

        def row(name, got, detail, metric=metric, dense=dense, label=label):
            change = (f"{(got - dense) * 100:+.2f} pts" if metric == "accuracy"
                      else f"{got / dense:.2f}x")
            rows.append([label, name, _shown(dense, metric), _shown(got, metric), change,
                         detail])

        new, info = share(model, ds, method="kmeans", clusters=16, epochs=ctx.size(1, 2))
        total = sum(int(np.prod(w.shape)) for w in model.trainable_weights
                    if sum(int(d) > 1 for d in w.shape) >= 2)
        row("k-means 16 clusters, centroids fine-tuned", _score(new, ds, metric),
            f"{info['clustered_weights'] / total:.0%} of the weight matrices clustered, "
            f"{info['bits_per_weight']:.2f} bits each")

        content, _ = quantize(model, ds, mode="int8", latency=False)
        row("full-integer int8 TFLite, post-training", _score(content, ds, metric),
            "calibrated on 256 training samples")
        content, info = quantize(model, ds, mode="int8", qat=True, epochs=ctx.size(1, 2),
                                 learning_rate=1e-4, latency=False)
        qat = info["qat"]
        row("QAT, then full-integer int8 TFLite", _score(content, ds, metric),
            f"{qat['fake_quantized_layers']} layers fake-quantized"
            + (f"; warning: {qat['float_note'].split(':')[0]}" if qat.get("float_note")
               else ""))

        student, info = _distilled(model, ds, metric, ctx)
        row("distilled into a half-width student", _score(student, ds, metric),
            f"{info['student_params'] / info['teacher_params']:.2f}x the parameters, "
            f"{info['epochs_run']} epochs; trained alone: {_shown(info['alone'], metric)}")
    sec.add("Each pass runs on the trained model through the Python API (`share`, "
            "`quantize`, `distill_step`) as the CLI runs it; scores are on the test split "
            "(accuracy, or MSE for the forecaster; the int8 file is run in LiteRT). The "
            "student trained alone (same student, epochs and learning rate, labels only) "
            "is given beside the distilled one.")
    sec.add(table(["model", "pass", "dense", "after", "vs dense", "detail"], rows))
    sec.add("Reading it: fine-tuning passes (k-means centroids, QAT) train the model "
            "further, which may score above the dense model; the LSTM's QAT trains its "
            "recurrent layer in float (it fake-quantizes Conv1D, Conv2D, DepthwiseConv2D "
            "and Dense) and says so. The TCN's dilated convolutions keep the converter's "
            "calibrated ranges in the int8 file (TFLite splits them into several ops; "
            "their learned range, put on the convolution alone, doubled the MSE before "
            "this round).")
    return sec


def _distilled(model, ds, metric, ctx):
    """The half-width student (fresh weights) distilled from ``model``, and its score
    trained alone (``info["alone"]``), as ``compress distill --width 0.5`` runs them."""
    from compress.distillation.options import DISTILL_OPTIONS
    from compress.distillation.step import distill_from_options

    opts = DISTILL_OPTIONS.validate({"epochs": ctx.size(1, 8), "learning_rate": 3e-3,
                                     "width": 0.5})
    student, alone, info = distill_from_options(model, ds, opts)
    info["alone"] = _score(alone, ds, metric)
    return student, info


CASES = {"sequences": case_sequences}
