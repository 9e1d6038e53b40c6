"""Weight sharing (#4): HashedNets vs same-storage baselines, k-means, small exports."""

from __future__ import annotations

import time

import numpy as np

from bench.harness import Section, table


def _stored(model) -> int:
    return int(sum(int(np.prod(w.shape)) for w in model.weights))


def _shrunk_dense(target_params: int, ds, ctx, epochs: int):
    """LeNet-300-100 narrowed until it stores ``target_params``, trained from scratch."""
    import keras

    from compress import training
    from compress.models import build

    widths = np.linspace(0.02, 1.0, 400)
    width = min(widths, key=lambda w: abs(_stored(build("lenet300", width=w)) - target_params))
    training.set_seed(ctx.seed)
    model = build("lenet300", width=width)
    training.compile_classifier(model, learning_rate=1e-3)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=5,
                                         restore_best_weights=True)
    training.fit(model, ds, epochs=epochs, callbacks=[stop], verbose=0)
    return model, width


def _random_removal(dense, counts: dict, ds, ctx, epochs: int):
    """The trained dense net with random connections removed (``counts[layer]`` kept per
    layer, the hashed layer's bucket count), fine-tuned with the zeros held."""
    import keras

    from compress import training
    from compress.pruning import keep_zeros, release_zeros

    model = training.copy_model(dense)
    rng = np.random.default_rng(ctx.seed)
    for layer in model.layers:
        if layer.name in counts:
            kernel = np.asarray(layer.kernel)
            keep = np.zeros(kernel.size, bool)
            keep[rng.choice(kernel.size, counts[layer.name], replace=False)] = True
            layer.kernel.assign(kernel * keep.reshape(kernel.shape))
    training.set_seed(ctx.seed)
    keep_zeros(model)
    training.compile_classifier(model, learning_rate=1e-3)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=5,
                                         restore_best_weights=True)
    training.fit(model, ds, epochs=epochs, callbacks=[stop], verbose=0)
    release_zeros(model)
    return model


def case_hashing(ctx) -> Section:
    """HashedNets on LeNet-300-100 / mnist5k at 1/8 and 1/32 against the paper's
    same-storage baselines, then ONNX and TFLite exports of the 1/8 model."""
    from bench.baselines import trained
    from compress import export, training
    from compress.report import count_nonzero, human_bytes
    from compress.sharing import hash_model

    sec = Section("Weight sharing: HashedNets (LeNet-300-100, mnist5k)", issue="#4")
    dense, ds = trained("lenet300", "mnist5k", ctx)
    dense_acc = training.accuracy(dense, ds.x_test, ds.y_test)
    epochs = ctx.size(1, 20)  # at most: fine-tuning stops early on validation loss
    rows = [["dense (trained baseline)", f"{_stored(dense):,}", "32", f"{dense_acc:.2%}", ""]]
    results = {}
    for factor in (1 / 8, 1 / 32):
        start = time.perf_counter()
        hashed, info = hash_model(dense, ds, factor=factor, epochs=epochs, seed=ctx.seed)
        seconds = time.perf_counter() - start
        results[factor] = (hashed, info)
        rows.append([f"hashed 1/{round(1 / factor)} (from dense, <= {epochs} ep)",
                     f"{info['stored_params']:,}", f"{info['bits_per_weight']:.2f}",
                     f"{info['accuracy']:.2%}", f"{seconds:.0f} s"])
    hashed, info = results[1 / 8]
    start = time.perf_counter()
    shrunk, width = _shrunk_dense(info["stored_params"], ds, ctx, ctx.size(1, 30))
    shrunk_acc = training.accuracy(shrunk, ds.x_test, ds.y_test)
    rows.append([f"shrunk dense, width {width:.3f} (scratch, early stop)",
                 f"{_stored(shrunk):,}", "32", f"{shrunk_acc:.2%}",
                 f"{time.perf_counter() - start:.0f} s"])
    start = time.perf_counter()
    counts = {r["layer"]: r["buckets"] for r in info["layers"]}
    removed = _random_removal(dense, counts, ds, ctx, epochs)
    removed_acc = training.accuracy(removed, ds.x_test, ds.y_test)
    rows.append([f"random connection removal (from dense, <= {epochs} ep)",
                 f"{count_nonzero(removed):,} nonzero", "32 (+ positions)",
                 f"{removed_acc:.2%}", f"{time.perf_counter() - start:.0f} s"])
    sec.add(table(["model", "stored parameters", "bits / virtual weight", "test accuracy",
                   "time"], rows))
    sec.add("Stored parameters include biases. Random removal keeps, per layer, as many "
            "weights as the hashed layer has buckets, and would also need their positions.")
    acc8 = info["accuracy"]
    sec.target("hash 1/8 accuracy >= dense - 1.5 pts", f"{acc8:.2%} (dense {dense_acc:.2%})",
               f">= {dense_acc - 0.015:.2%}", acc8 >= dense_acc - 0.015)
    sec.target("hash 1/8 beats the same-storage shrunk dense net", f"{acc8:.2%}",
               f"> {shrunk_acc:.2%}", acc8 > shrunk_acc)
    sec.target("hash 1/8 beats random connection removal to the same count", f"{acc8:.2%}",
               f"> {removed_acc:.2%}", acc8 > removed_acc)
    acc32 = results[1 / 32][1]["accuracy"]
    sec.target("hash 1/32 accuracy (reported)", f"{acc32:.2%}", "report", True)

    x = ds.x_test[:256]
    export_rows, sizes = [], {}
    for fmt in ("tflite", "onnx"):
        for name, model in (("dense", dense), ("hashed 1/8", hashed)):
            path = ctx.work_dir / f"sharing-{name.split()[0]}.{fmt}"
            check = export.export(model, path, fmt=fmt, x=x, force=True)
            runtime_acc = export.artifact_accuracy(path, ds.x_test, ds.y_test)
            latency = export.runtime_latency_ms(path, ds.sample_shape, runs=ctx.size(10, 30))
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
            "more than size. Fine-tuning runs use early stopping on validation loss "
            "(patience 5, best weights restored), like the dense baseline.")
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
