"""Pruning (#3): gradual magnitude, OBD vs magnitude, callback overhead, structured speedup,
OBD saliency cost."""

from __future__ import annotations

import time

import numpy as np

from bench.harness import Section, table


def _acc(model, ds):
    from compress.training import accuracy

    return accuracy(model, ds.x_test, ds.y_test)


def case_pruning(ctx) -> Section:
    from bench.baselines import trained
    from compress import training
    from compress.pruning import masks, prune, saliency_scores

    sec = Section("Pruning: magnitude, OBD, schedules, structured", issue="#3")
    dense, ds = trained("lenet300", "mnist5k", ctx)
    dense_acc = _acc(dense, ds)
    sec.add(f"LeNet-300-100 on mnist5k ({len(ds.x_train)} train, {len(ds.x_test)} test): "
            f"dense test accuracy **{dense_acc:.2%}**.")

    # 1. gradual magnitude pruning
    rows = []
    epochs = ctx.size(2, 8)
    for sparsity, slack in ((0.9, 0.5), (0.95, 1.5)):
        pruned, info = prune(dense, ds, method="magnitude", sparsity=sparsity,
                             schedule="gradual", epochs=epochs, learning_rate=5e-4,
                             frequency=20)
        acc = _acc(pruned, ds)
        rows.append([f"{sparsity:.0%}", f"{info['sparsity_reached']:.2%}", f"{acc:.2%}",
                     f"{(acc - dense_acc) * 100:+.2f}"])
        sec.target(f"gradual magnitude {sparsity:.0%}: accuracy >= dense - {slack} pts",
                   f"{(acc - dense_acc) * 100:+.2f} pts", f"-{slack} pts",
                   acc >= dense_acc - slack / 100)
    sec.add(f"### Gradual magnitude pruning ({epochs} epochs, polynomial schedule)\n\n" +
            table(["sparsity", "reached", "test acc", "vs dense (pts)"], rows))

    # 2. OBD vs magnitude, one-shot and after one round of retraining
    x_cal, y_cal = ds.x_train[:512], ds.y_train[:512]
    pairs = masks.prunable_weights(dense)
    variables = [v for _, v in pairs]
    t0 = time.perf_counter()
    obd_scores = saliency_scores(dense, variables, "obd", (x_cal, y_cal))
    obd_seconds = time.perf_counter() - t0
    mag_scores = saliency_scores(dense, variables, "magnitude")
    curves = {"magnitude": [], "obd": [], "magnitude+retrain": [], "obd+retrain": []}
    levels = (0.5, 0.7, 0.8, 0.9)
    for s in levels:
        for name, scores in (("magnitude", mag_scores), ("obd", obd_scores)):
            model = training.copy_model(dense)
            for (_, var), sc in zip(masks.prunable_weights(model), scores):
                masks.set_mask(var, masks.lowest_mask(sc, s))
            curves[name].append(_acc(model, ds))
            training.compile_classifier(model, 5e-4)
            training.fit(model, ds, epochs=1, verbose=0)
            curves[name + "+retrain"].append(_acc(model, ds))
    rows = [[f"{s:.0%}"] + [f"{curves[k][i]:.2%}" for k in curves] for i, s in enumerate(levels)]
    sec.add("### OBD vs magnitude (per-layer ranking, same sparsity in each layer; OBD: "
            "Gauss-Newton diagonal on 512 training samples)\n\n" +
            table(["sparsity"] + list(curves), rows))
    for stage in ("", "+retrain"):
        ok, detail = True, []
        for i, s in enumerate(levels):
            o, m = curves["obd" + stage][i], curves["magnitude" + stage][i]
            need = m - 0.003 if s == 0.5 else m
            ok &= o >= need
            detail.append(f"{s:.0%}: {o:.2%} vs {m:.2%}")
        sec.target(f"OBD >= magnitude at 70/80/90%, within 0.3 pts at 50%"
                   f"{' (one retrain epoch)' if stage else ' (one-shot)'}",
                   "; ".join(detail), "obd >= magnitude", ok)
    plot = ctx.plot_dir / "pruning_obd_vs_magnitude.png"
    _plot_curves(levels, curves, plot)
    sec.add(ctx.image(plot, "OBD vs magnitude"))

    # 3. callback overhead
    ratio = _callback_overhead(dense, ds, ctx)
    sec.target("epoch time with the Pruning callback / without (after epoch 1)",
               f"{ratio:.2f}x", "<= 1.15x", ratio <= 1.15)

    # 4. OBD saliency cost vs parameters, and vs a gradient pass
    rows, pts = [], []
    from compress.models import build

    n = ctx.size(128, 512)
    for width in (0.5, 1.0, 2.0):
        model = build("lenet300", width=width)
        vs = [v for _, v in masks.prunable_weights(model)]
        saliency_scores(model, vs, "obd", (x_cal[:32], y_cal[:32]))  # trace once
        t0 = time.perf_counter()
        saliency_scores(model, vs, "obd", (x_cal[:n], y_cal[:n]))
        t_obd = time.perf_counter() - t0
        t_grad = _gradient_pass_seconds(model, x_cal[:n], y_cal[:n])
        params = int(sum(np.prod(v.shape) for v in vs))
        pts.append((params, t_obd))
        rows.append([f"{params:,}", f"{t_obd:.2f}", f"{t_grad:.2f}", f"{t_obd / t_grad:.1f}x"])
    slope = np.polyfit([p for p, _ in pts], [t for _, t in pts], 1)
    fit = np.polyval(slope, [p for p, _ in pts])
    r2 = 1 - np.sum((np.array([t for _, t in pts]) - fit) ** 2) / np.sum(
        (np.array([t for _, t in pts]) - np.mean([t for _, t in pts])) ** 2)
    sec.add(f"### OBD saliency pass cost ({n} samples, batches of 32; full LeNet-300-100 "
            f"pass on 512 samples took {obd_seconds:.1f} s)\n\n" +
            table(["pruned params", "OBD pass (s)", "gradient pass, batches of 32 (s)",
                   "ratio"], rows))
    sec.target("OBD saliency time linear in parameters (R^2 of a line over 3 sizes)",
               f"R^2 = {r2:.3f}", ">= 0.95", r2 >= 0.95)

    # 5. structured pruning of the small CNN on animals
    _structured(sec, ctx)
    return sec


def _gradient_pass_seconds(model, x, y, batch=32):
    import tensorflow as tf

    from compress.pruning.obd import _log_probs

    @tf.function(reduce_retracing=True)
    def grad(xb, yb):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_sum(tf.gather(_log_probs(model, xb), yb, batch_dims=1))
        return tape.gradient(loss, model.trainable_variables)

    grad(tf.constant(x[:batch]), tf.constant(y[:batch]))
    t0 = time.perf_counter()
    for s in range(0, len(x), batch):
        grad(tf.constant(x[s:s + batch]), tf.constant(y[s:s + batch]))
    return time.perf_counter() - t0


def _callback_overhead(dense, ds, ctx):
    import keras

    from compress import training
    from compress.callbacks import Pruning

    class EpochTimes(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.t0)

    epochs = ctx.size(2, 4)
    results = {}
    for label in ("plain", "pruning", "plain2", "pruning2"):
        model = training.copy_model(dense)
        training.compile_classifier(model, 5e-4)
        timer = EpochTimes()
        timer.times = []
        cbs = [timer] + ([Pruning(sparsity=0.9, frequency=20)] if "pruning" in label else [])
        model.fit(ds.x_train, ds.y_train, epochs=epochs, batch_size=64, verbose=0,
                  callbacks=cbs)
        results[label] = float(np.median(timer.times[1:]))
    return min(results["pruning"], results["pruning2"]) / min(results["plain"],
                                                              results["plain2"])


def _structured(sec, ctx):
    from bench.baselines import trained
    from compress.pruning import prune
    from compress.report import keras_latency_ms

    dense, ds = trained("small-cnn", "animals", ctx)
    dense_acc = _acc(dense, ds)
    small, info = prune(dense, ds, structured=True, sparsity=0.5,
                        epochs=ctx.size(1, 5), learning_rate=1e-3)
    acc = _acc(small, ds)
    shape = tuple(dense.inputs[0].shape[1:])
    lat = {}
    for _ in range(2):  # interleave to share any machine noise
        for name, m in (("dense", dense), ("half", small)):
            lat.setdefault(name, []).append(keras_latency_ms(m, shape, runs=200))
    ld, ls = min(lat["dense"]), min(lat["half"])
    sec.add("### Structured pruning: small CNN on animals, half the channels of every conv\n\n" +
            table(["model", "params", "test acc", "batch-1 latency (ms)"],
                  [["dense", f"{dense.count_params():,}", f"{dense_acc:.2%}", f"{ld:.3f}"],
                   ["half channels + fine-tune", f"{small.count_params():,}", f"{acc:.2%}",
                    f"{ls:.3f}"]]) + f"\n\nUnits: {info['units']}")
    sec.target("structured half channels: batch-1 latency vs dense", f"{ls / ld:.2f}x",
               "<= 0.65x", ls / ld <= 0.65)
    sec.target("structured half channels: accuracy within 2 pts after fine-tuning",
               f"{(acc - dense_acc) * 100:+.2f} pts", ">= -2 pts", acc >= dense_acc - 0.02)


def _plot_curves(levels, curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        ax.plot([100 * s for s in levels], [100 * v for v in values], marker="o", label=name,
                linestyle="--" if "retrain" in name else "-")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("LeNet-300-100 / mnist5k: OBD vs magnitude")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


CASES = {"pruning": case_pruning}
