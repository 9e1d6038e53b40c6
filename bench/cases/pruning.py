"""Pruning (#3): gradual magnitude and OBD vs magnitude (accuracies: ``pruning``); callback
overhead, OBD saliency cost and structured speedup (times: ``pruning-costs``)."""

from __future__ import annotations

import time

import numpy as np

from bench.harness import Section, table


def _acc(model, ds):
    from compress.training import accuracy

    return accuracy(model, ds.x_test, ds.y_test)


def case_pruning(ctx) -> Section:
    from bench.baselines import trained
    from compress.pruning import prune

    sec = Section("Pruning: gradual magnitude, OBD vs magnitude (accuracies)", issue="#3")
    dense, ds = trained("lenet300", "mnist5k", ctx)
    dense_acc = _acc(dense, ds)
    sec.add(f"LeNet-300-100 on mnist5k ({len(ds.x_train)} train, {len(ds.x_test)} test): "
            f"dense test accuracy **{dense_acc:.2%}**.")

    # 1. gradual magnitude pruning. Settings chosen by principle (Zhu & Gupta: final
    # sparsity at 2/3 of training, then recovery; Han et al.: fc1 takes more sparsity than
    # the output layer, so a global threshold), never on the test split: the kept weights
    # are those of the best validation epoch after the final sparsity is reached.
    rows = []
    epochs = ctx.size(3, 18)
    for sparsity, slack in ((0.9, 0.5), (0.95, 1.5)):
        pruned, info = prune(dense, ds, method="magnitude", sparsity=sparsity,
                             schedule="gradual", epochs=epochs, learning_rate=5e-4,
                             frequency=20, scope="global", cosine=True, restore_best=True)
        acc = _acc(pruned, ds)
        per_layer = ", ".join(f"{r['weight'].split('/')[0]} {r['sparsity']:.0%}"
                              for r in info["layers"])
        rows.append([f"{sparsity:.0%}", f"{info['sparsity_reached']:.2%}", per_layer,
                     f"{acc:.2%}", f"{(acc - dense_acc) * 100:+.2f}"])
        sec.target(f"gradual magnitude {sparsity:.0%}: accuracy >= dense - {slack} pts",
                   f"{(acc - dense_acc) * 100:+.2f} pts", f"-{slack} pts",
                   acc >= dense_acc - slack / 100)
    sec.add(f"### Gradual magnitude pruning ({epochs} epochs, polynomial schedule to the final "
            "sparsity at 2/3 of training, global threshold, Adam 1e-3 with cosine decay, best "
            "validation epoch at final sparsity kept)\n\n" +
            table(["sparsity", "reached", "per layer", "test acc", "vs dense (pts)"], rows))

    # 2. OBD vs magnitude, one-shot and after one round of retraining. OBD's saliencies
    # come from LeCun's backward pass of second derivatives on the whole training split;
    # "OBD, 8 steps" deletes the weights in 8 geometric steps with the saliencies
    # re-estimated after each (no retraining), as OBD prescribes deleting a few at a time.
    # Magnitude needs no steps: without retraining its ranking cannot change.
    cal = ctx.size(600, len(ds.x_train))
    x_cal, y_cal = ds.x_train[:cal], ds.y_train[:cal]
    levels = ctx.size((0.5, 0.9), (0.5, 0.7, 0.8, 0.9))  # quick: the harness only
    n_steps = ctx.size(2, 8)
    # One round of retraining (the same recipe for every column): one epoch over the
    # training split at Adam 5e-4 (half the dense model's rate), the mask kept; the
    # accuracy is the mean over retrain seeds (shuffling order), all from the same mask.
    seeds = tuple(ctx.seed + i for i in range(ctx.size(1, 3)))
    retrain = _Retrainer(dense, ds, learning_rate=5e-4)
    runs = {}

    def run(method, s, scope, steps=1, damping=0.0):
        key = (method, s, scope, steps, damping)
        if key not in runs:
            model, info = prune(dense, ds, method=method, sparsity=s, scope=scope,
                                steps=steps, calibration=cal, damping=damping)
            tests, vals = zip(*(retrain(model, seed) for seed in seeds))
            runs[key] = {"oneshot": _acc(model, ds), "retrain": float(np.mean(tests)),
                         "spread": float(np.ptp(tests)), "val": float(np.mean(vals)),
                         "dead": _dead_units(model),
                         "layers": ", ".join(f"{r['weight'].split('/')[0]} "
                                             f"{r['sparsity']:.0%}" for r in info["layers"])}
        return runs[key]

    # Levenberg-Marquardt damping of OBD's diagonal, chosen on the VALIDATION split (mean
    # validation accuracy after the retrain round, per-layer ranking, 70/80/90%).
    grid = ctx.size((1.0,), (0.0, 1.0, 3.0))
    val_of = {d: float(np.mean([run("obd", s, "layer", n_steps, d)["val"]
                                for s in levels[1:]])) for d in grid}
    damping = max(grid, key=lambda d: val_of[d])
    lm = f"obd, {n_steps} steps, LM {damping:g}"
    mag, obd1 = {"magnitude": ("magnitude", 1, 0.0)}, {"obd": ("obd", 1, 0.0)}
    undamped, damped = {f"obd, {n_steps} steps": ("obd", n_steps, 0.0)}, {
        lm: ("obd", n_steps, damping)}
    if ctx.quick:  # the harness only: the target columns
        obd1 = undamped = {}
    columns = {  # scope -> column name -> (method, steps, damping)
        "layer": {**mag, **obd1, **undamped, **damped},
        "global": {**mag, **obd1, **damped},
        "sensitivity": {**mag, **damped},
    }
    titles = {"layer": "per-layer ranking (same sparsity in each layer)",
              "global": "global ranking (one threshold across layers)",
              "sensitivity": "sensitivity allocation (per-layer sparsities from the measured "
                             "validation loss, ranking inside each layer)"}
    curves, dead_rows = {}, []
    for scope, cols in columns.items():
        res = {name: [run(m, s, scope, st, d) for s in levels]
               for name, (m, st, d) in cols.items()}
        curves[scope] = res
        names = list(cols) + [n + " +retrain" for n in cols if n != "obd"]
        rows = [[f"{s:.0%}"] + [f"{res[n][i]['oneshot']:.2%}" for n in cols] +
                [f"{res[n][i]['retrain']:.2%} (±{res[n][i]['spread'] * 50:.1f})"
                 for n in cols if n != "obd"] for i, s in enumerate(levels)]
        alloc = [[f"{s:.0%}"] + [res[n][i]["layers"] for n in cols]
                 for i, s in enumerate(levels)]
        dead_rows += [[scope, n, res[n][-1]["dead"]] for n in cols if n != "obd"]
        sec.add(f"### OBD vs magnitude, {titles[scope]}\n\n" + table(["sparsity"] + names,
                                                                      rows) +
                "\n\nSparsity reached per layer:\n\n" + table(["sparsity"] + list(cols),
                                                                alloc))
    sec.add(f"OBD: LeCun's backprop diagonal (Levenberg-Marquardt) on {cal} training "
            f"samples; 'obd' = all weights deleted at once from one saliency estimate; "
            f"'obd, {n_steps} steps' = {n_steps} geometric steps with re-estimated "
            f"saliencies, no retraining; 'LM {damping:g}' = the same with the diagonal "
            f"damped, h + {damping:g} x mean(h) per layer. **'+retrain' = one round of "
            "retraining**, the same for every column: one epoch over the training split at "
            "Adam 5e-4 (half the dense model's rate), pruned weights held at zero; the "
            f"accuracy is the mean over {len(seeds)} retrain seeds (shuffling order) from the "
            "same mask, ± half the range across seeds. The protocol was fixed before "
            "looking at any result: a mean over seeds because one test image is 0.1 "
            "points and one retrain epoch varies by a few images with the shuffling "
            "order. Sensitivity allocation (`scope=\"sensitivity\"`): before each pruning "
            "step, for each layer alone, the validation-split loss is measured with its "
            "lowest-saliency weights removed at sparsities 0, 5, ..., 95, 97, 99%; the "
            "step's weights are then cut greedily where the measured loss increase per "
            "removed weight is lowest (Han et al.'s sensitivity analysis, made automatic), "
            "and the criterion (|w| or OBD) picks which weights go inside each layer; both "
            "criteria get the same allocation procedure.")
    sec.add("**Why undamped OBD loses after retraining.** The dense net fits its training "
            f"split almost perfectly, so the output curvature p(1 - p) is ~0 on most "
            f"examples: the top 5% of training examples carry {_curvature_share(dense, ds):.0%} "
            "of it. The diagonal is then tiny for every weight of whole units that only "
            "those few examples excite, and OBD deletes such units entirely, even output "
            "classes; masked at zero, they cannot come back in retraining. Dead units "
            f"(hidden units or classes left with no input weight) at {levels[-1]:.0%}:\n\n" +
            table(["ranking", "criterion", "dead units per layer"], dead_rows) +
            "\n\nThe Levenberg-Marquardt damping term (the lambda of the method OBD's "
            "diagonal is named after) bounds the ratio between units. Damping chosen on "
            "validation accuracy after the retrain round (per-layer ranking, 70-90%): " +
            ", ".join(f"{d:g}: {v:.2%}" for d, v in val_of.items()) +
            f" -> **{damping:g}**.")
    pred_rows = _diagonal_vs_actual(dense, x_cal, y_cal, damping, levels[-1])
    sec.add("**Why OBD loses with global ranking.** A global threshold compares "
            "saliencies across layers, i.e. trusts the diagonal model's predicted loss "
            "increase, the sum of h w^2 / 2 over the deleted weights. Deleting the "
            f"{levels[-1]:.0%} lowest-saliency weights of one layer at a time (training "
            "data, everything else dense):\n\n" +
            table(["layer", "predicted loss increase", "actual", "actual / predicted"],
                  pred_rows) +
            "\n\nThe diagonal ignores the off-diagonal terms, and many small deletions "
            "into the same unit add up coherently; the error differs from layer to layer, "
            "so the global OBD threshold misallocates sparsity between layers (see the "
            "sparsities above). Tried without success on the global curve: damping 3 and "
            "10, the Fisher and sampled Gauss-Newton estimators, saliencies normalised by "
            "each layer's mean, and rescaling each layer's saliencies by its measured / "
            "predicted loss ratio (unstable across steps). The sensitivity allocation "
            "replaces the cross-layer comparison by measured losses and keeps OBD's "
            "ranking where the diagonal is trustworthy, inside a layer.")
    for scope in columns:
        for stage in ("oneshot", "retrain"):
            ok, detail = True, []
            for i, s in enumerate(levels):
                o = curves[scope][lm][i][stage]
                m = curves[scope]["magnitude"][i][stage]
                need = m - 0.003 if s == 0.5 else m
                ok &= o >= need - 1e-9
                detail.append(f"{s:.0%}: {o:.2%} vs {m:.2%}")
            what = {"layer": "per-layer ranking (both)", "global": "global ranking (both)",
                    "sensitivity": "sensitivity allocation (both)"}[scope]
            when = (f"one retrain round, mean of {len(seeds)} seeds" if stage == "retrain"
                    else "one-shot")
            sec.target(f"OBD ({n_steps} steps, LM damping {damping:g}) >= magnitude at "
                       f"70/80/90%, within 0.3 pts at 50%, {what} ({when})",
                       "; ".join(detail), "obd >= magnitude", bool(ok))
    g_mag, s_obd = curves["global"]["magnitude"], curves["sensitivity"][lm]
    sec.add("For reference, the strongest magnitude baseline here is the global threshold; "
            "sensitivity-allocated OBD vs global magnitude, one-shot / retrained: " +
            "; ".join(f"{s:.0%}: {s_obd[i]['oneshot']:.2%} vs {g_mag[i]['oneshot']:.2%} / "
                      f"{s_obd[i]['retrain']:.2%} vs {g_mag[i]['retrain']:.2%}"
                      for i, s in enumerate(levels)) + ".")
    plot = ctx.plot_dir / "pruning_obd_vs_magnitude.png"
    _plot_curves(levels, {f"{scope[:4]} {n}{' +retrain' if st == 'retrain' else ''}":
                          [r[st] for r in curves[scope][n]]
                          for scope in ("layer", "sensitivity") for n in ("magnitude", lm)
                          for st in ("oneshot", "retrain")}, plot)
    sec.add(ctx.image(plot, "OBD vs magnitude"))

    return sec


def case_pruning_costs(ctx) -> Section:
    """What pruning costs (timed, so it runs alone): the Pruning callback's overhead, OBD's
    saliency pass against a gradient pass, and the structured CNN's latency."""
    from bench.baselines import trained
    from compress.pruning import masks
    from compress.pruning.criteria import saliency_scores

    sec = Section("Pruning: callback overhead, OBD saliency cost, structured speedup",
                  issue="#3")
    dense, ds = trained("lenet300", "mnist5k", ctx)
    cal = ctx.size(600, len(ds.x_train))
    x_cal, y_cal = ds.x_train[:cal], ds.y_train[:cal]
    variables = [v for _, v in masks.prunable_weights(dense)]
    saliency_scores(dense, variables, "obd", (x_cal[:128], y_cal[:128]))  # trace once
    t0 = time.perf_counter()
    saliency_scores(dense, variables, "obd", (x_cal, y_cal))
    obd_seconds = time.perf_counter() - t0

    # 3. callback overhead
    ratio, plain_s, spread, rounds, epochs, updates = _callback_overhead(dense, ds, ctx)
    sec.add(f"### Pruning callback overhead\n\nPlain fit: {plain_s:.3f} s per epoch; "
            f"Pruning(sparsity=0.9) (a mask update every 100 steps, the default: {updates} "
            f"over the ramp of a {epochs}-epoch fit): {ratio:.2f}x, the median over {rounds} "
            "rounds of (median epoch time with the callback / without), epochs 2..N, the two "
            f"fits of a round back to back. The rounds' ratios spread {spread[0]:.2f}x to "
            f"{spread[1]:.2f}x (quartiles): epochs this short vary by tens of per cent on a "
            "shared VM, so one round is not a measurement.")
    sec.target("epoch time with the Pruning callback / without (after epoch 1)",
               f"{ratio:.2f}x", "<= 1.15x", ratio <= 1.15)

    # 4. OBD saliency cost vs parameters, and vs a gradient pass (same batch size)
    rows, pts = [], []
    from compress.models import build

    n = ctx.size(256, 2048)
    # Widths 1, 2 and 4 (266 k to 1.4 M pruned weights): at width 0.5 a pass took 0.03 s,
    # mostly fixed per-batch costs, which measure the dispatch rather than the growth.
    for width in (1.0, 2.0, 4.0):
        model = build("lenet300", width=width)
        vs = [v for _, v in masks.prunable_weights(model)]
        saliency_scores(model, vs, "obd", (x_cal[:128], y_cal[:128]))  # trace once
        t_obd = min(_timed(lambda m=model, v=vs: saliency_scores(
            m, v, "obd", (x_cal[:n], y_cal[:n]))) for _ in range(ctx.size(2, 5)))
        t_grad = min(_gradient_pass_seconds(model, x_cal[:n], y_cal[:n], batch=128)
                     for _ in range(ctx.size(2, 5)))
        params = int(sum(np.prod(v.shape) for v in vs))
        pts.append((params, t_obd, t_grad))
        rows.append([f"{params:,}", f"{t_obd:.3f}", f"{t_grad:.3f}", f"{t_obd / t_grad:.1f}x"])
    slope = np.polyfit([p for p, _, _ in pts], [t for _, t, _ in pts], 1)
    fit = np.polyval(slope, [p for p, _, _ in pts])
    times = np.array([t for _, t, _ in pts])
    r2 = 1 - np.sum((times - fit) ** 2) / np.sum((times - times.mean()) ** 2)
    worst = max(t / g for _, t, g in pts)
    sec.add(f"### OBD saliency pass cost ({n} samples, batches of 128 for both, best of 5 "
            "(other processes share the 2 cores); full "
            f"LeNet-300-100 pass on {cal} samples took {obd_seconds:.2f} s)\n\n" +
            table(["pruned params", "OBD pass (s)", "gradient pass (s)", "ratio"], rows))
    sec.target("OBD saliency time linear in parameters (R^2 of a line over 3 sizes)",
               f"R^2 = {r2:.3f}", ">= 0.95", r2 >= 0.95)
    sec.target("OBD saliency pass <= ~3 gradient passes over the same data",
               f"{worst:.1f}x (worst of 3 sizes)", "<= 3x", worst <= 3.0)

    # 5. structured pruning of the small CNN on animals
    _structured(sec, ctx)
    return sec


class _Retrainer:
    """One round of retraining, the same recipe for every mask: one compiled copy of the
    dense model is reused (its weights, masks and optimizer state reset each time), so
    that dozens of retrains do not each pay for tracing a new train step."""

    def __init__(self, dense, ds, learning_rate=5e-4, epochs=1, batch_size=64):
        from compress import training
        from compress.pruning import masks

        self.ds, self.epochs, self.batch_size = ds, epochs, batch_size
        self.model = training.copy_model(dense)
        self.variables = [v for _, v in masks.prunable_weights(self.model)]
        for v in self.variables:
            masks.set_mask(v, np.ones(tuple(v.shape), "float32"))
        training.compile_classifier(self.model, learning_rate)
        self.model.optimizer.build(self.model.trainable_variables)
        self.fresh = [np.array(v) for v in self.model.optimizer.variables]

    def __call__(self, pruned, seed):
        """(test accuracy, validation accuracy) after retraining ``pruned``'s weights."""
        from compress import training
        from compress.pruning import masks

        self.model.set_weights(pruned.get_weights())
        for v in self.variables:
            masks.set_mask(v, np.asarray(v) != 0)
        for v, init in zip(self.model.optimizer.variables, self.fresh):
            v.assign(init)
        training.set_seed(seed)
        self.model.fit(self.ds.x_train, self.ds.y_train, epochs=self.epochs,
                       batch_size=self.batch_size, shuffle=True, verbose=0)
        return (_acc(self.model, self.ds),
                training.accuracy(self.model, self.ds.x_val, self.ds.y_val))


def _dead_units(model) -> str:
    """Units (kernel columns) left with no nonzero input weight, and sparsity, per Dense
    layer."""
    out = []
    for layer in model.layers:
        if type(layer).__name__ == "Dense":
            k = np.asarray(layer.kernel) != 0
            out.append(f"{layer.name} {int((~k.any(0)).sum())}/{k.shape[1]} "
                       f"({1 - k.mean():.1%} zeros)")
    return ", ".join(out)


def _diagonal_vs_actual(dense, x, y, damping, sparsity) -> list:
    """Per layer: OBD's predicted loss increase (undamped diagonal) for deleting the
    ``sparsity`` lowest-saliency weights (damped ranking) vs the measured increase."""
    from compress import training
    from compress.pruning import masks
    from compress.pruning.criteria import saliency_scores

    def loss(model):
        p = np.asarray(model.predict(x, verbose=0, batch_size=512))
        return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], 1e-12))))

    variables = [v for _, v in masks.prunable_weights(dense)]
    plain = saliency_scores(dense, variables, "obd", (x, y))
    ranked = saliency_scores(dense, variables, "obd", (x, y), damping=damping)
    base, rows = loss(dense), []
    for i, (layer, _) in enumerate(masks.prunable_weights(dense)):
        keep = masks.lowest_mask(ranked[i], sparsity)
        model = training.copy_model(dense)
        var = [v for _, v in masks.prunable_weights(model)][i]
        var.assign(np.asarray(var) * keep)
        predicted, actual = float(plain[i][keep == 0].sum()), loss(model) - base
        rows.append([layer.name, f"{predicted:.4f}", f"{actual:.4f}",
                     f"{actual / max(predicted, 1e-12):.0f}x"])
    return rows


def _curvature_share(model, ds, top=0.05) -> float:
    """Share of the summed output curvature sum_c p_c (1 - p_c) on the top ``top`` of
    training examples."""
    p = model.predict(ds.x_train, verbose=0)
    w = np.sort((p * (1 - p)).sum(axis=1))[::-1]
    return float(w[:max(1, int(top * len(w)))].sum() / w.sum())


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


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _callback_overhead(dense, ds, ctx):
    """(median per-round ratio of pruning / plain epoch time, plain seconds per epoch,
    quartiles of the per-round ratios, rounds): epochs 2..N of fits interleaved plain,
    pruning, plain, ... so that load from other processes hits both sides of a round."""
    import keras

    from compress import training
    from compress.callbacks import Pruning

    class EpochTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.t0)

    # 12 epochs: the ramp (the first two thirds) holds several updates at the default
    # frequency of 100 steps (with 5 epochs it held two: the whole sparsity at once)
    epochs, rounds = ctx.size(2, 12), ctx.size(1, 8)
    ratios, plain, updates = [], [], 0
    for _ in range(rounds):
        medians = {}
        for label in ("plain", "pruning"):
            model = training.copy_model(dense)
            training.compile_classifier(model, 5e-4)
            timer = EpochTimes()
            pruning = Pruning(sparsity=0.9)
            cbs = [timer] + ([pruning] if label == "pruning" else [])
            model.fit(ds.x_train, ds.y_train, epochs=epochs, batch_size=64, verbose=0,
                      callbacks=cbs)
            medians[label] = float(np.median(timer.times[1:]))
            if label == "pruning":
                updates = len(pruning.updates)
        ratios.append(medians["pruning"] / medians["plain"])
        plain.append(medians["plain"])
    return (float(np.median(ratios)), float(np.median(plain)),
            tuple(float(q) for q in np.percentile(ratios, [25, 75])), rounds, epochs, updates)


def _structured(sec, ctx):
    import tempfile
    from pathlib import Path

    from bench.baselines import trained
    from compress.export import export_tflite
    from compress.pruning import prune
    from compress.report import keras_latency_ms
    from compress.runtime import runtime_latency_ms

    dense, ds = trained("small-cnn", "animals", ctx)
    dense_acc = _acc(dense, ds)
    # Channels ranked by BN-scaled L1 (|gamma| / sqrt(var + eps) x ||W||_1: the channel's
    # real output scale); fine-tuned with Adam 1e-3 and cosine decay, keeping the best
    # validation epoch.
    small, info = prune(dense, ds, structured=True, sparsity=0.5, norm="bn",
                        epochs=ctx.size(1, 10), learning_rate=1e-3, cosine=True,
                        restore_best=True)
    acc = _acc(small, ds)
    shape = tuple(dense.inputs[0].shape[1:])
    tmp = Path(tempfile.mkdtemp(prefix="prune-bench-"))
    paths = {"dense": tmp / "dense.tflite", "half": tmp / "half.tflite"}
    export_tflite(dense, paths["dense"], x=ds.x_test[:8])
    export_tflite(small, paths["half"], x=ds.x_test[:8])
    lat, tfl = {}, {}
    for _ in range(ctx.size(1, 5)):  # interleaved repeats; medians
        for name, m in (("dense", dense), ("half", small)):
            lat.setdefault(name, []).append(keras_latency_ms(m, shape, runs=ctx.size(20, 100)))
            tfl.setdefault(name, []).append(runtime_latency_ms(paths[name], shape, batch=1,
                                                               threads=1,
                                                               runs=ctx.size(50, 200)))
    ld, ls = float(np.median(lat["dense"])), float(np.median(lat["half"]))
    td, ts = float(np.median(tfl["dense"])), float(np.median(tfl["half"]))
    sec.add("### Structured pruning: small CNN on animals, half the channels of every conv\n\n"
            "Latency target measured in the deployed runtime (TFLite/LiteRT, batch 1, one "
            "thread, median of interleaved repeats): it is what a deployment gets. Keras's "
            "compiled call is listed too; at batch 1 it is dominated by per-call overhead, "
            "not arithmetic.\n\n" +
            table(["model", "params", "test acc", "TFLite batch-1 (ms)",
                   "Keras batch-1 (ms)"],
                  [["dense", f"{dense.count_params():,}", f"{dense_acc:.2%}", f"{td:.3f}",
                    f"{ld:.3f}"],
                   ["half channels + fine-tune", f"{small.count_params():,}", f"{acc:.2%}",
                    f"{ts:.3f}", f"{ls:.3f}"]]) +
            f"\n\nUnits: {info['units']}; Keras latency ratio {ls / ld:.2f}x.")
    sec.target("structured half channels: batch-1 latency vs dense (TFLite)",
               f"{ts / td:.2f}x", "<= 0.65x", ts / td <= 0.65)
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


# "pruning" measures accuracies only (the bench may run it beside another case);
# "pruning-costs" holds every timed target and runs alone.
CASES = {"pruning": case_pruning, "pruning-costs": case_pruning_costs}
