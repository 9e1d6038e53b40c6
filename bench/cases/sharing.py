"""Weight sharing (#4): HashedNets vs same-storage baselines, k-means, small exports."""

from __future__ import annotations

import time

import numpy as np

from bench.harness import Section, table


def _stored(model) -> int:
    return int(sum(int(np.prod(w.shape)) for w in model.weights))


EPOCHS = 30           # at most, for every net: early stopping on val loss (patience 5)
DROPOUTS = (0.0, 0.25)  # hidden-layer dropout, picked on val for every net alike


def _mlp(hidden, dropout: float, name: str, factor: float | None = None, seed: int = 0):
    """LeNet-300-100's layout (layer names included) with ``hidden`` widths, optional
    dropout after each hidden layer, and HashedDense layers when ``factor`` is given
    (hash seeds as ``hash_model`` derives them)."""
    import keras

    from compress.sharing.hash_functions import layer_seed
    from compress.sharing.hashed_layers import HashedDense

    def dense(units, activation, layer_name):
        if factor is None:
            return keras.layers.Dense(units, activation=activation, name=layer_name)
        return HashedDense(units, factor=factor, activation=activation,
                           seed=layer_seed(seed, layer_name), name=layer_name)

    layers = [keras.Input((28, 28, 1)), keras.layers.Flatten(name="flatten")]
    for i, units in enumerate(hidden, start=1):
        layers.append(dense(units, "relu", f"fc{i}"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"drop{i}"))
    layers.append(dense(10, "softmax", "predictions"))
    return keras.Sequential(layers, name=name)


def _fit(model, ds, ctx, epochs: int) -> int:
    """The common budget: Adam 1e-3, batch 64, <= ``epochs`` with early stopping on val
    loss (patience 5, best weights restored). Returns the epochs run."""
    import keras

    from compress import training

    training.set_seed(ctx.seed)
    training.compile_classifier(model, learning_rate=1e-3)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=5,
                                         restore_best_weights=True)
    history = training.fit(model, ds, epochs=epochs, batch_size=64, callbacks=[stop],
                           verbose=0)
    return len(history.history["loss"])


def _pick(candidates: dict, ds):
    """``(dropout, model, val accuracy, val by dropout)`` of the best val accuracy
    (ties: less dropout)."""
    from compress import training

    vals = {d: training.accuracy(m, ds.x_val, ds.y_val) for d, m in candidates.items()}
    best = max(vals, key=lambda d: (vals[d], -d))
    return best, candidates[best], vals[best], vals


def _hashed_scratch(factor, ds, ctx, epochs, dropouts):
    """HashedNets as the paper trains them: hashed layers from scratch, with dropout."""
    from compress import training

    models = {}
    for d in dropouts:
        training.set_seed(ctx.seed)
        model = _mlp((300, 100), d, "lenet300_hashed", factor=factor, seed=ctx.seed)
        _fit(model, ds, ctx, epochs)
        models[d] = model
    return _pick(models, ds)


def _shrunk_dense(target_params: int, ds, ctx, epochs: int, dropouts):
    """LeNet-300-100 narrowed until it stores ``target_params``, trained from scratch."""
    from compress import training

    def hidden_of(w):  # compress.models.lenet300's rounding
        return max(1, round(300 * w)), max(1, round(100 * w))

    def stored(w):  # its parameter count, without building 400 models
        h1, h2 = hidden_of(w)
        return 784 * h1 + h1 + h1 * h2 + h2 + h2 * 10 + 10

    widths = np.linspace(0.02, 1.0, 400)
    width = min(widths, key=lambda w: abs(stored(w) - target_params))
    hidden = hidden_of(width)
    models = {}
    for d in dropouts:
        training.set_seed(ctx.seed)
        model = _mlp(hidden, d, "lenet300_shrunk")
        _fit(model, ds, ctx, epochs)
        models[d] = model
    return width, _pick(models, ds)


def _random_removal(dense, counts: dict, ds, ctx, epochs: int, dropouts):
    """The trained dense net with random connections removed (``counts[layer]`` kept per
    layer, the hashed layer's bucket count), fine-tuned with the zeros held."""
    from compress.pruning import keep_zeros, release_zeros

    models = {}
    for d in dropouts:
        model = _mlp((300, 100), d, "lenet300_removed")
        rng = np.random.default_rng(ctx.seed)
        for layer in model.layers:
            if not layer.weights:
                continue
            layer.set_weights(dense.get_layer(layer.name).get_weights())
            if layer.name in counts:
                kernel = np.asarray(layer.kernel)
                keep = np.zeros(kernel.size, bool)
                keep[rng.choice(kernel.size, counts[layer.name], replace=False)] = True
                layer.kernel.assign(kernel * keep.reshape(kernel.shape))
        keep_zeros(model)
        _fit(model, ds, ctx, epochs)
        release_zeros(model)
        models[d] = model
    return _pick(models, ds)


def case_hashing(ctx) -> Section:
    """HashedNets on LeNet-300-100 / mnist5k at 1/8 and 1/32 against the paper's
    same-storage baselines, then ONNX and TFLite exports of the 1/8 model."""
    from bench.baselines import trained
    from compress import export, runtime, training
    from compress.report import count_nonzero, human_bytes
    from compress.sharing import hash_model

    sec = Section("Weight sharing: HashedNets (LeNet-300-100, mnist5k)", issue="#4")
    dense, ds = trained("lenet300", "mnist5k", ctx)
    dense_acc = training.accuracy(dense, ds.x_test, ds.y_test)
    epochs = ctx.size(1, EPOCHS)
    dropouts = ctx.size((0.0,), DROPOUTS)

    def test_acc(model):
        return training.accuracy(model, ds.x_test, ds.y_test)

    rows = [["dense (trained baseline)", f"{_stored(dense):,}", "32", "-", "-",
             f"{dense_acc:.2%}", ""]]

    def row(label, stored, bits, drop, val_by, acc, seconds):
        vals = ", ".join(f"{val:.2%}" + (" *" if d == drop else "") for d, val in val_by.items())
        rows.append([label, stored, bits, f"{drop:g}", vals, f"{acc:.2%}", f"{seconds:.0f} s"])

    # HashedNets 1/8 and 1/32: from scratch with dropout, as Chen et al. train them.
    results = {}
    for factor in (1 / 8, 1 / 32):
        start = time.perf_counter()
        drops = dropouts if factor == 1 / 8 else (results[1 / 8][0],)
        drop, hashed, _val, val_by = _hashed_scratch(factor, ds, ctx, epochs, drops)
        results[factor] = (drop, hashed, test_acc(hashed))
        k = round(1 / factor)
        hashed_layers = [layer for layer in hashed.layers if hasattr(layer, "num_buckets")]
        bits = 32 * sum(layer.num_buckets for layer in hashed_layers) / sum(
            layer._m * layer._n for layer in hashed_layers)
        row(f"hashed 1/{k} (scratch, <= {epochs} ep)", f"{_stored(hashed):,}",
            f"{bits:.2f}", drop, val_by, results[factor][2], time.perf_counter() - start)
    _drop8, hashed, acc8 = results[1 / 8]
    counts = {layer.name: layer.num_buckets for layer in hashed.layers
              if hasattr(layer, "num_buckets")}

    # The converter (buckets from the trained dense weights), same budget, no dropout.
    start = time.perf_counter()
    converted, info = hash_model(dense, ds, factor=1 / 8, epochs=epochs, seed=ctx.seed)
    start_acc = test_acc(hash_model(dense, None, factor=1 / 8, seed=ctx.seed)[0])
    conv_val = training.accuracy(converted, ds.x_val, ds.y_val)
    row(f"hashed 1/8 (`hash_model` from dense, <= {epochs} ep; {start_acc:.1%} before)",
        f"{info['stored_params']:,}", f"{info['bits_per_weight']:.2f}", 0.0, {0.0: conv_val},
        info["accuracy"], time.perf_counter() - start)

    start = time.perf_counter()
    width, (drop_s, shrunk, _v, val_s) = _shrunk_dense(_stored(hashed), ds, ctx, epochs,
                                                       dropouts)
    shrunk_acc = test_acc(shrunk)
    row(f"shrunk dense, width {width:.3f} (scratch, <= {epochs} ep)", f"{_stored(shrunk):,}",
        "32", drop_s, val_s, shrunk_acc, time.perf_counter() - start)
    start = time.perf_counter()
    drop_r, removed, _v, val_r = _random_removal(dense, counts, ds, ctx, epochs, dropouts)
    removed_acc = test_acc(removed)
    row(f"random connection removal (from dense, <= {epochs} ep)",
        f"{count_nonzero(removed):,} nonzero", "32 (+ positions)", drop_r, val_r,
        removed_acc, time.perf_counter() - start)
    sec.add(table(["model", "stored parameters", "bits / virtual weight", "dropout",
                   "val acc by dropout (* picked)", "test accuracy", "time"], rows))
    sec.add("Every net gets the same budget: Adam 1e-3, batch 64, at most "
            f"{epochs} epochs with early stopping on val loss (patience 5, best weights "
            "restored), and hidden-layer dropout picked on val among "
            f"{', '.join(f'{d:g}' for d in dropouts)} (test never used for a choice). "
            "The hashed nets are trained from scratch with dropout as in Chen et al. 2015; "
            "`hash_model`'s conversion (buckets = signed means of the trained weights) is "
            "shown for comparison: with ~8 random-sign weights per bucket the means keep "
            "little of the dense function, so it starts near chance. Stored parameters "
            "include biases. Random removal keeps, per layer, as many weights as the hashed "
            "layer has buckets, and would also need their positions.")
    sec.target("hash 1/8 accuracy >= dense - 1.5 pts", f"{acc8:.2%} (dense {dense_acc:.2%})",
               f">= {dense_acc - 0.015:.2%}", acc8 >= dense_acc - 0.015)
    sec.target("hash 1/8 beats the same-storage shrunk dense net", f"{acc8:.2%}",
               f"> {shrunk_acc:.2%}", acc8 > shrunk_acc)
    sec.target("hash 1/8 beats random connection removal to the same count", f"{acc8:.2%}",
               f"> {removed_acc:.2%}", acc8 > removed_acc)
    acc32 = results[1 / 32][2]
    sec.target("hash 1/32 accuracy (reported)", f"{acc32:.2%}", "report", True)

    x = ds.x_test[:256]
    export_rows, sizes = [], {}
    for fmt in ("tflite", "onnx"):
        for name, model in (("dense", dense), ("hashed 1/8", hashed)):
            path = ctx.work_dir / f"sharing-{name.split()[0]}.{fmt}"
            check = export.export(model, path, fmt=fmt, x=x, force=True)
            runtime_acc = runtime.artifact_accuracy(path, ds.x_test, ds.y_test)
            latency = runtime.runtime_latency_ms(path, ds.sample_shape, runs=ctx.size(10, 30))
            sizes[(fmt, name)] = check
            export_rows.append([fmt, name, human_bytes(check["bytes"]),
                                f"{check['max_abs_diff']:.1e}",
                                f"{check['top1_agreement']:.0%}", f"{runtime_acc:.2%}",
                                f"{latency:.3f} ms"])
    sec.add(table(["format", "model", "file", "max abs diff vs Keras (256 inputs)",
                   "top-1 agreement", "runtime accuracy", "latency b=1, 1 thread"],
                  export_rows))
    sec.add("The hashed layers recompute the bucket index in the graph (int32 hash, see "
            "docs/sharing.md), so the files hold the buckets only; the price is the hash, "
            "gather and multiply over every virtual weight on each call (latency column). "
            "`compress.sharing.materialize` gives back a dense model when latency matters "
            "more than size.")
    for fmt, limit_note in (("tflite", "issue target"), ("onnx", "same bound, also checked")):
        small, full = sizes[(fmt, "hashed 1/8")], sizes[(fmt, "dense")]
        ratio = small["bytes"] / full["bytes"]
        sec.target(f"{fmt} file of hashed 1/8 <= 0.2x dense, outputs matching ({limit_note})",
                   f"{ratio:.3f}x, max diff {small['max_abs_diff']:.1e}, "
                   f"top-1 {small['top1_agreement']:.0%}", "0.2x, 1e-4, 100%",
                   ratio <= 0.2 and small["max_abs_diff"] <= 1e-4
                   and small["top1_agreement"] == 1.0)
    return sec


def case_kmeans(ctx) -> Section:
    """k-means weight sharing (16 clusters) on LeNet-300-100 / mnist5k: accuracy and
    zipped size against the dense model."""
    from bench.baselines import trained
    from compress import training
    from compress.report import human_bytes, saved_size
    from compress.sharing import cluster_model

    sec = Section("Weight sharing: k-means clustering (LeNet-300-100, mnist5k)", issue="#4")
    dense, ds = trained("lenet300", "mnist5k", ctx)
    dense_acc = training.accuracy(dense, ds.x_test, ds.y_test)
    dense_raw, dense_zip = saved_size(dense)
    rows = [["dense", "32", f"{dense_acc:.2%}", human_bytes(dense_raw), human_bytes(dense_zip),
             "1.00x", ""]]
    epochs = ctx.size(1, 3)
    results = {}
    for clusters, n_epochs in ((16, 0), (16, epochs), (4, epochs)):
        start = time.perf_counter()
        model, info = cluster_model(dense, ds, clusters=clusters, epochs=n_epochs,
                                    seed=ctx.seed)
        seconds = time.perf_counter() - start
        raw, zipped = saved_size(model)
        results[(clusters, n_epochs)] = (info, zipped)
        rows.append([f"k-means {clusters} ({n_epochs} ep centroid fine-tuning)",
                     f"{info['bits_per_weight']:.2f}", f"{info['accuracy']:.2%}",
                     human_bytes(raw), human_bytes(zipped), f"{zipped / dense_zip:.3f}x",
                     f"{seconds:.0f} s"])
    sec.add(table(["model", "bits / weight (indices + codebook)", "test accuracy",
                   ".keras file", "zipped", "zipped vs dense", "time"], rows))
    sec.add("The clustered model is a plain Keras model whose kernels hold 16 distinct "
            "float32 values; DEFLATE finds the repetition.")
    info, zipped = results[(16, epochs)]
    sec.target("k-means 16 clusters accuracy >= dense - 0.5 pts",
               f"{info['accuracy']:.2%} (dense {dense_acc:.2%})", f">= {dense_acc - 0.005:.2%}",
               info["accuracy"] >= dense_acc - 0.005)
    sec.target("k-means 16 clusters zipped model <= 0.25x dense zipped",
               f"{zipped / dense_zip:.3f}x", "0.25x", zipped / dense_zip <= 0.25)
    return sec


CASES = {"sharing-hash": case_hashing, "sharing-kmeans": case_kmeans}
