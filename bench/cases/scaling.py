"""How cost grows (#9): OBD saliency, pruning-callback overhead, structured rebuild and
export time against parameter count, on a log-log plot with fitted slopes; peak memory of
pruning and exporting a ~25M-parameter model (#10), measured in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness import Section, table


def _mlp(width: int):
    import keras

    return keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Flatten(),
        keras.layers.Dense(width, activation="relu", name="fc1"),
        keras.layers.Dense(width // 2, activation="relu", name="fc2"),
        keras.layers.Dense(10, activation="softmax", name="predictions")],
        name=f"mlp{width}")


def _timed(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class _EpochTimer:
    def __init__(self):
        import keras

        class Timer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.times = []

            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.times.append(time.perf_counter() - self.t0)

        self.callback = Timer()


def _epoch_seconds(model, ds, callbacks, epochs: int) -> list[float]:
    from compress import training

    timer = _EpochTimer().callback
    training.compile_classifier(model)
    model.fit(ds.x_train, ds.y_train, epochs=epochs, batch_size=64, verbose=0,
              callbacks=list(callbacks) + [timer])
    return timer.times[1:]  # after the first (tracing) epoch


def _slope(params, seconds) -> float:
    return float(np.polyfit(np.log(params), np.log(seconds), 1)[0])


def case_scaling(ctx) -> Section:
    from compress import export, training
    from compress.callbacks import Pruning
    from compress.data import load_data, prepare
    from compress.pruning import obd_saliency, prune

    sec = Section("How cost grows with model size", issue="#9")
    widths = ctx.size([32, 128], [32, 96, 320, 1700])  # 26k to 2.8M parameters (108x)
    raw = load_data("mnist5k", ctx.seed)
    rows, series = [], {"OBD saliency pass": [], "gradient pass": [],
                        "epoch with Pruning callback": [], "structured rebuild": [],
                        "ONNX + TFLite export": []}
    params = []
    for width in widths:
        training.set_seed(ctx.seed)
        model = _mlp(width)
        ds = prepare(model, raw).take(ctx.size(256, 1024), 256)
        n = model.count_params()
        params.append(n)
        x, y = ds.x_train, ds.y_train
        training.compile_classifier(model)
        model.fit(x, y, epochs=1, verbose=0)
        kernels = [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]
        obd = _timed(lambda m=model, x=x, y=y, k=kernels: obd_saliency(m, x, y, variables=k),
                     repeats=2)
        _gradient_pass(model, x, y)  # trace once, as the OBD pass's trace is cached too
        grad = _timed(lambda m=model, x=x, y=y: _gradient_pass(m, x, y), repeats=2)
        # interleaved fits, so both share the machine's noise; medians over their epochs
        plain_times, pruned_times = [], []
        for _ in range(ctx.size(1, 3)):
            plain_times += _epoch_seconds(training.copy_model(model), ds, [], ctx.size(2, 4))
            pruned_times += _epoch_seconds(training.copy_model(model), ds,
                                           [Pruning(sparsity=0.9, frequency=20)],
                                           ctx.size(2, 4))
        plain, pruned_epoch = float(np.median(plain_times)), float(np.median(pruned_times))
        rebuild = _timed(lambda m=model: prune(m, None, sparsity=0.5, structured=True))
        with tempfile.TemporaryDirectory() as tmp:
            exp = _timed(lambda m=model, d=Path(tmp): (
                export.export_onnx(m, d / "m.onnx", force=True),
                export.export_tflite(m, d / "m.tflite", force=True)))
        series["OBD saliency pass"].append(obd)
        series["gradient pass"].append(grad)
        series["epoch with Pruning callback"].append(pruned_epoch)
        series["structured rebuild"].append(rebuild)
        series["ONNX + TFLite export"].append(exp)
        rows.append([f"{n:,}", f"{obd:.3f}", f"{grad:.3f}", f"{obd / grad:.1f}x",
                     f"{plain:.3f}", f"{pruned_epoch:.3f}", f"{pruned_epoch / plain:.2f}x",
                     f"{rebuild:.2f}", f"{exp:.2f}"])
    sec.add(f"MLPs 784-W-W/2-10 on mnist5k ({ctx.size(256, 1024)} samples per pass), "
            f"parameters from {params[0]:,} to {params[-1]:,} "
            f"({params[-1] / params[0]:.0f}x). Times in seconds (best of 2 for the "
            "saliency and the compiled gradient passes, both in batches of 128; epoch times are medians over the "
            f"epochs after the first of {ctx.size(1, 3)} interleaved plain / Pruning fits).")
    sec.add(table(["params", "OBD pass", "gradient pass", "OBD / gradient", "epoch",
                   "epoch + Pruning", "overhead", "structured rebuild", "export"], rows))
    slopes = {name: _slope(params, s) for name, s in series.items()}
    sec.add(table(["quantity", "log-log slope (time ~ params^k)"],
                  [[k, f"{v:.2f}"] for k, v in slopes.items()]))
    plot = _plot(params, series, slopes, ctx.plot_dir / "scaling.png")
    sec.add(ctx.image(plot, "cost vs parameters"))
    sec.target("OBD saliency time grows linearly with parameters (log-log slope <= 1.2)",
               f"slope {slopes['OBD saliency pass']:.2f}", "<= 1.2",
               slopes["OBD saliency pass"] <= 1.2)
    ratio = max(o / g for o, g in zip(series["OBD saliency pass"], series["gradient pass"]))
    sec.target("one OBD saliency pass costs <= ~3 gradient passes (worst size)",
               f"{ratio:.1f}x", "<= 3x", ratio <= 3.0)

    large = _large_model(ctx)
    if "error" in large:
        sec.add(f"Large model: failed: `{large['error']}`")
        sec.target("prune + export a ~25M-parameter model within 8 GB", "failed", "8 GB", False)
    else:
        sec.add(table(["large model", "value"], [
            ["parameters", f"{large['params']:,}"],
            ["prune 90% (one-shot, data-free)", f"{large['prune_seconds']:.1f} s"],
            ["TFLite export + verification", f"{large['export_seconds']:.1f} s"],
            ["TFLite file", f"{large['tflite_bytes'] / 2**20:.1f} MiB"],
            ["max abs diff vs Keras", f"{large['max_abs_diff']:.1e}"],
            ["peak resident memory", f"{large['peak_rss_mb'] / 1024:.2f} GiB"]]))
        sec.target(f"prune + export a {large['params'] / 1e6:.0f}M-parameter model within 8 GB",
                   f"{large['peak_rss_mb'] / 1024:.2f} GiB", "8 GiB",
                   large["peak_rss_mb"] < 8 * 1024 and large["params"] > (1e6 if ctx.quick
                                                                          else 2e7))
    return sec


def _gradient_pass(model, x, y, batch_size: int = 128):
    """One compiled gradient pass over (x, y), like the OBD pass it is compared with (the
    same batches: the backprop diagonal runs in batches of 128)."""
    import tensorflow as tf

    fns = _GRAD_FNS.setdefault(id(model), {})
    if "fn" not in fns:
        def step(xb, yb):
            with tf.GradientTape() as tape:
                loss = model.loss(yb, model(xb, training=False))
            return tape.gradient(loss, model.trainable_variables)

        fns["fn"] = tf.function(step, reduce_retracing=True)
    for start in range(0, len(x), batch_size):
        fns["fn"](tf.constant(x[start:start + batch_size]), tf.constant(y[start:start + batch_size]))


_GRAD_FNS: dict = {}


def _large_model(ctx) -> dict:
    cmd = [sys.executable, "-m", "bench.large_model"] + (["--quick"] if ctx.quick else [])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False,
                          cwd=Path(__file__).resolve().parents[2], timeout=1200)
    if proc.returncode != 0:
        return {"error": " ".join(proc.stderr.split()[-40:])}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _plot(params, series, slopes, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, seconds in series.items():
        ax.loglog(params, seconds, marker="o", label=f"{name} (slope {slopes[name]:.2f})")
    ax.set_xlabel("parameters")
    ax.set_ylabel("seconds")
    ax.set_title("cost vs model size (log-log)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


CASES = {"scaling": case_scaling}
