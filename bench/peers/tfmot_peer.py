"""TFMOT head-to-head: LeNet-300-100 on mnist5k pruned, clustered and QAT'd by TFMOT.

TFMOT (``tensorflow-model-optimization``) works only with legacy Keras 2 (``tf_keras``),
and importing it switches ``tf.keras`` to Keras 2 for the whole process. So this script
runs in its own process with ``TF_USE_LEGACY_KERAS=1``; the benchmark case
(``bench/cases/peers.py``) starts it and reads the JSON it writes. It trains the same
LeNet-300-100 as ``bench.baselines`` (Adam, early stopping on ``val_loss`` with patience 5,
best weights restored) on the same seeded ``mnist5k`` split, then measures:

- ``prune_low_magnitude`` + ``PolynomialDecay`` to each target sparsity, ``strip_pruning``;
- ``cluster_weights`` (k-means, 16 clusters by default), ``strip_clustering``;
- ``quantize_model`` (QAT) and a full-int8 TFLite conversion run in LiteRT;
- a plain ``fit`` of the dense model for the same epochs (the time ratio's denominator;
  ``finetune_seconds`` is the whole pass: wrap, compile, fit and strip, ``fit_seconds``
  the ``fit`` alone);
- whether each saved ``.h5`` loads in a fresh process with plain Keras 3 (no toolkit),
  and whether the unstripped pruned file loads with ``tf_keras`` without TFMOT imported.

Example:

```
TF_USE_LEGACY_KERAS=1 python -m bench.peers.tfmot_peer --out tfmot.json --quick
```

The same module has a second mode, ``--check-load SPEC.json``, run (by this script and by
the case) in a fresh process *without* ``TF_USE_LEGACY_KERAS``: it loads each listed file
with plain Keras 3 (``keras.models.load_model``) or ``tf_keras`` and scores it, importing
neither TFMOT nor keras-compress.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

import numpy as np


def zipped_size(path) -> int:
    """Bytes of ``path`` after DEFLATE at level 9 (same measure as ``compress.report``)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.write(path, arcname=Path(path).name)
    return len(buf.getvalue())


def fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """Short digest of a split, so the case can check both sides saw the same data."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x, dtype="float32").tobytes())
    h.update(np.ascontiguousarray(y, dtype="int64").tobytes())
    return h.hexdigest()[:16]


def load_split(name: str, seed: int, quick: bool):
    """The same split as the main process: ``compress.data.load_data`` (+ ``take`` if quick).

    ``compress.data`` itself needs only NumPy, scikit-learn and mlxtend, but importing the
    ``compress`` package installs an import hook that registers the toolkit's Keras 3
    layers when ``keras`` is imported. TensorFlow imports parts of ``keras`` even in legacy
    mode, so the hook is removed here: this process must stay a plain TFMOT process.
    """
    from compress.data import load_data

    sys.meta_path[:] = [f for f in sys.meta_path
                        if type(f).__name__ != "_RegisterLayersAfterKeras"]
    ds = load_data(name, seed)
    return ds.take(600, 300) if quick else ds


def kernel_sparsity(model) -> dict:
    """Zero fraction of the Dense kernels (what the passes prune) and of all weights."""
    k_zero = k_all = w_zero = w_all = 0
    for layer in model.layers:
        for w in layer.weights:
            a = np.asarray(w.numpy())
            w_zero += int(np.sum(a == 0))
            w_all += a.size
            if "kernel" in w.name:
                k_zero += int(np.sum(a == 0))
                k_all += a.size
    return {"kernel_sparsity": k_zero / max(k_all, 1), "weight_sparsity": w_zero / max(w_all, 1)}


def max_unique_kernel_values(model) -> int:
    """The largest number of distinct values in one Dense kernel (clusters actually used)."""
    counts = [len(np.unique(np.asarray(w.numpy()))) for layer in model.layers
              for w in layer.weights if "kernel" in w.name]
    return max(counts) if counts else 0


def schedule_steps(n_train: int, batch_size: int, epochs: int, end_fraction: float):
    """``(end_step, frequency)`` for ``PolynomialDecay`` that reach the target exactly.

    TFMOT prunes only at steps where ``(step - begin) % frequency == 0`` and
    ``step <= end_step``, so ``end_step`` is rounded to a multiple of ``frequency``; the
    steps after it fine-tune at the final sparsity.
    """
    steps = math.ceil(n_train / batch_size) * epochs
    frequency = max(1, min(100, math.ceil(n_train / batch_size) // 4))
    end = max(frequency, int(steps * end_fraction) // frequency * frequency)
    return end, frequency, steps


def check_load(spec_path: str, out_path: str) -> int:
    """``--check-load`` mode: load each file with plain Keras 3 or ``tf_keras``; score it."""
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    spec = json.loads(Path(spec_path).read_text())
    with np.load(spec["data"], allow_pickle=False) as f:
        x, y = f["x"], f["y"]
    results = {}
    for item in spec["files"]:
        row = {"loader": item["loader"], "path": item["path"]}
        try:
            if item["loader"] == "keras3":
                import keras

                model = keras.models.load_model(item["path"], compile=False)
                row["keras_version"] = keras.__version__
            else:
                import tf_keras

                model = tf_keras.models.load_model(item["path"], compile=False)
                row["keras_version"] = tf_keras.__version__
            pred = np.asarray(model.predict(x, batch_size=256, verbose=0))
            row["loads"] = True
            row["accuracy"] = float(np.mean(np.argmax(pred, -1) == y))
        except Exception as exc:  # noqa: BLE001 - the point of the check: record why it fails
            row["loads"] = False
            row["error"] = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        results[item["name"]] = row
    results["_tfmot_imported"] = "tensorflow_model_optimization" in sys.modules
    results["_compress_imported"] = "compress" in sys.modules
    Path(out_path).write_text(json.dumps(results, indent=1))
    return 0


def run_check_load(files: list[dict], x, y, work: Path) -> dict:
    """Run ``--check-load`` in a fresh process without ``TF_USE_LEGACY_KERAS``."""
    data, spec, out = work / "check-data.npz", work / "check-spec.json", work / "check-out.json"
    np.savez(data, x=x, y=y)
    spec.write_text(json.dumps({"data": str(data), "files": files}))
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "bench.peers.tfmot_peer", "--check-load",
                           str(spec), "--out", str(out)], check=False, env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"load check failed: {proc.stderr.strip()[-400:]}")
    return json.loads(out.read_text())


def tflite_accuracy(model_bytes: bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a TFLite model in the LiteRT interpreter (int8 or float I/O)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_bytes, num_threads=1)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], (1,) + tuple(x.shape[1:]))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    correct = 0
    for i in range(len(x)):
        xi = x[i:i + 1].astype("float32")
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            xi = np.clip(np.round(xi / scale + zero), info.min, info.max).astype(inp["dtype"])
        interp.set_tensor(inp["index"], xi)
        interp.invoke()
        o = interp.get_tensor(out["index"])
        correct += int(np.argmax(o[0]) == y[i])
    return correct / len(x)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers.tfmot_peer",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON results file")
    p.add_argument("--quick", action="store_true", help="600/300 samples, 2+1 epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--epochs", type=int, default=None,
                   help="baseline max epochs (early stopping); default 30, quick 2")
    p.add_argument("--finetune-epochs", type=int, default=None,
                   help="fine-tune epochs of every method; default 10, quick 1")
    p.add_argument("--lr", type=float, default=1e-3, help="baseline Adam learning rate")
    p.add_argument("--finetune-lr", type=float, default=1e-3,
                   help="fine-tune Adam learning rate (pruning, clustering, QAT)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    p.add_argument("--end-fraction", type=float, default=0.7,
                   help="fraction of fine-tune steps over which sparsity ramps up")
    p.add_argument("--clusters", type=int, default=16)
    p.add_argument("--cluster-init", default="KMEANS_PLUS_PLUS",
                   choices=["KMEANS_PLUS_PLUS", "LINEAR", "DENSITY_BASED", "RANDOM"])
    p.add_argument("--skip", nargs="*", default=[], choices=["prune", "cluster", "qat"],
                   help="methods to leave out")
    p.add_argument("--no-load-check", action="store_true",
                   help="skip the fresh-process load check")
    p.add_argument("--check-load", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.check_load:
        return check_load(args.check_load, args.out)
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        print("error: run with TF_USE_LEGACY_KERAS=1 (TFMOT needs legacy Keras 2)",
              file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    started = time.perf_counter()
    results = run(args)
    results["total_seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out)
    return 0


def run(args) -> dict:
    epochs = args.epochs or (2 if args.quick else 30)
    ft_epochs = args.finetune_epochs or (1 if args.quick else 10)
    ds = load_split(args.data, args.seed, args.quick)

    t0 = time.perf_counter()
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    import_seconds = time.perf_counter() - t0
    import importlib.metadata as md

    res = {
        "settings": {"quick": args.quick, "seed": args.seed, "data": args.data,
                     "epochs": epochs, "finetune_epochs": ft_epochs, "lr": args.lr,
                     "finetune_lr": args.finetune_lr, "batch_size": args.batch_size,
                     "sparsities": args.sparsities, "end_fraction": args.end_fraction,
                     "clusters": args.clusters, "cluster_init": args.cluster_init,
                     "optimizer": "adam"},
        "versions": {d: md.version(d) for d in ("tensorflow", "tensorflow-model-optimization",
                                                "tf_keras")},
        "keras_module": tf.keras.__name__ if hasattr(tf.keras, "__name__") else str(tf.keras),
        "import_seconds": import_seconds,
        "data": {"n_train": len(ds.x_train), "n_val": len(ds.x_val), "n_test": len(ds.x_test),
                 "test_fingerprint": fingerprint(ds.x_test, ds.y_test),
                 "train_fingerprint": fingerprint(ds.x_train, ds.y_train)},
        "methods": {}, "errors": {},
    }
    keras = tf_keras

    def seed():
        keras.utils.set_random_seed(args.seed)
        with contextlib.suppress(Exception):  # already enabled, or not on this build
            tf.config.experimental.enable_op_determinism()

    def compile_(model, lr):
        model.compile(optimizer=keras.optimizers.Adam(lr),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False),
                      metrics=["accuracy"])

    def fit(model, n_epochs, callbacks=()):
        t = time.perf_counter()
        hist = model.fit(ds.x_train, ds.y_train, epochs=n_epochs, batch_size=args.batch_size,
                         validation_data=(ds.x_val, ds.y_val), callbacks=list(callbacks),
                         verbose=0, shuffle=True)
        return time.perf_counter() - t, hist

    def acc(model):
        pred = model.predict(ds.x_test, batch_size=256, verbose=0)
        return float(np.mean(np.argmax(pred, -1) == ds.y_test))

    def copy(model):
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        return clone

    work = Path(tempfile.mkdtemp(prefix="tfmot-peer-"))
    out_dir = Path(args.out).resolve().parent / (Path(args.out).stem + "-files")
    out_dir.mkdir(parents=True, exist_ok=True)

    def save_h5(model, name):
        path = out_dir / f"{name}.h5"
        model.save(path, include_optimizer=False)
        return path

    # Dense baseline: same recipe as bench.baselines (lenet300 on mnist5k).
    seed()
    base = keras.Sequential([
        keras.Input(ds.x_train.shape[1:]),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(300, activation="relu", name="fc1"),
        keras.layers.Dense(100, activation="relu", name="fc2"),
        keras.layers.Dense(ds.num_classes, activation="softmax", name="predictions"),
    ], name="lenet300")
    compile_(base, args.lr)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=5,
                                         restore_best_weights=True)
    secs, hist = fit(base, epochs, [stop])
    base_path = save_h5(base, "dense")
    res["baseline"] = {"accuracy": acc(base), "epochs_run": len(hist.history["loss"]),
                       "train_seconds": secs, "params": int(base.count_params()),
                       "h5_bytes": base_path.stat().st_size,
                       "zipped_bytes": zipped_size(base_path), "path": str(base_path)}

    # Plain fit of the dense model for the fine-tune epochs: the time ratio's denominator.
    seed()
    plain = copy(base)
    compile_(plain, args.finetune_lr)
    plain_secs, _ = fit(plain, ft_epochs)
    res["plain_fit_seconds"] = plain_secs

    files = [{"name": "dense", "path": str(base_path), "loader": "keras3"}]
    steps_per_epoch = math.ceil(len(ds.x_train) / args.batch_size)

    if "prune" not in args.skip:
        end, freq, steps = schedule_steps(len(ds.x_train), args.batch_size, ft_epochs,
                                          args.end_fraction)
        for s in args.sparsities:
            name = f"prune-{round(s * 100)}"
            try:
                seed()
                t = time.perf_counter()
                schedule = tfmot.sparsity.keras.PolynomialDecay(
                    initial_sparsity=0.0, final_sparsity=s, begin_step=0, end_step=end,
                    frequency=freq)
                pruned = tfmot.sparsity.keras.prune_low_magnitude(
                    copy(base), pruning_schedule=schedule)
                compile_(pruned, args.finetune_lr)
                fit_secs, _ = fit(pruned, ft_epochs,
                                  [tfmot.sparsity.keras.UpdatePruningStep()])
                stripped = tfmot.sparsity.keras.strip_pruning(pruned)
                secs = time.perf_counter() - t  # wrap + compile + fit + strip: the whole pass
                unstripped = save_h5(pruned, f"{name}-unstripped")
                path = save_h5(stripped, name)
                row = {"method": f"TFMOT prune_low_magnitude {s:.0%} (PolynomialDecay)",
                       "target_sparsity": s, "accuracy": acc(stripped),
                       **kernel_sparsity(stripped), "finetune_seconds": secs,
                       "fit_seconds": fit_secs, "time_ratio": secs / plain_secs, "h5_bytes": path.stat().st_size,
                       "zipped_bytes": zipped_size(path), "path": str(path),
                       "unstripped_path": str(unstripped),
                       "unstripped_zipped_bytes": zipped_size(unstripped),
                       "schedule": {"end_step": end, "frequency": freq, "total_steps": steps,
                                    "steps_per_epoch": steps_per_epoch}}
                res["methods"][name] = row
                files += [{"name": name, "path": str(path), "loader": "keras3"},
                          {"name": f"{name}-unstripped", "path": str(unstripped),
                           "loader": "keras3"},
                          {"name": f"{name}-unstripped-tf_keras", "path": str(unstripped),
                           "loader": "tf_keras"}]
            except Exception as exc:  # noqa: BLE001 - one method failing must not lose the others
                traceback.print_exc()
                res["errors"][name] = f"{type(exc).__name__}: {exc}"[:400]

    if "cluster" not in args.skip:
        name = f"cluster-{args.clusters}"
        try:
            seed()
            init = getattr(tfmot.clustering.keras.CentroidInitialization, args.cluster_init)
            t = time.perf_counter()
            clustered = tfmot.clustering.keras.cluster_weights(
                copy(base), number_of_clusters=args.clusters, cluster_centroids_init=init)
            compile_(clustered, args.finetune_lr)
            fit_secs, _ = fit(clustered, ft_epochs)
            stripped = tfmot.clustering.keras.strip_clustering(clustered)
            secs = time.perf_counter() - t
            path = save_h5(stripped, name)
            res["methods"][name] = {
                "method": f"TFMOT cluster_weights k={args.clusters} "
                          f"({args.cluster_init.lower()})",
                "accuracy": acc(stripped), **kernel_sparsity(stripped),
                "max_unique_kernel_values": max_unique_kernel_values(stripped),
                "finetune_seconds": secs, "fit_seconds": fit_secs, "time_ratio": secs / plain_secs,
                "h5_bytes": path.stat().st_size, "zipped_bytes": zipped_size(path),
                "path": str(path)}
            files.append({"name": name, "path": str(path), "loader": "keras3"})
        except Exception as exc:  # noqa: BLE001 - one method failing must not lose the others
            traceback.print_exc()
            res["errors"][name] = f"{type(exc).__name__}: {exc}"[:400]

    if "qat" not in args.skip:
        name = "qat-int8"
        try:
            seed()
            t = time.perf_counter()
            qat = tfmot.quantization.keras.quantize_model(copy(base))
            compile_(qat, args.finetune_lr)
            fit_secs, _ = fit(qat, ft_epochs)
            secs = time.perf_counter() - t
            qat_keras_acc = acc(qat)
            qat_path = save_h5(qat, f"{name}-keras")
            rep = ds.x_train[:256].astype("float32")

            def representative():
                for i in range(len(rep)):
                    yield [rep[i:i + 1]]

            t = time.perf_counter()
            converter = tf.lite.TFLiteConverter.from_keras_model(qat)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
            flat = converter.convert()
            convert_secs = time.perf_counter() - t
            path = out_dir / f"{name}.tflite"
            path.write_bytes(flat)
            res["methods"][name] = {
                "method": "TFMOT quantize_model (QAT) -> TFLite full int8",
                "accuracy": tflite_accuracy(flat, ds.x_test, ds.y_test),
                "keras_accuracy": qat_keras_acc, "finetune_seconds": secs, "fit_seconds": fit_secs,
                "time_ratio": secs / plain_secs, "convert_seconds": convert_secs,
                "tflite_bytes": len(flat), "zipped_bytes": zipped_size(path),
                "path": str(path), "qat_h5_path": str(qat_path)}
            files.append({"name": f"{name}-keras", "path": str(qat_path), "loader": "keras3"})
        except Exception as exc:  # noqa: BLE001 - one method failing must not lose the others
            traceback.print_exc()
            res["errors"][name] = f"{type(exc).__name__}: {exc}"[:400]

    if not args.no_load_check:
        try:
            checks = run_check_load(files, ds.x_test, ds.y_test, work)
            res["load_check"] = checks
            for name, row in res["methods"].items():
                for key, check in ((name, "loads_keras3"),
                                   (f"{name}-keras", "qat_keras_loads_keras3"),
                                   (f"{name}-unstripped", "unstripped_loads_keras3"),
                                   (f"{name}-unstripped-tf_keras",
                                    "unstripped_loads_tf_keras_without_tfmot")):
                    if key in checks:
                        row[check] = checks[key]["loads"]
                        if checks[key]["loads"]:
                            row[check.replace("loads", "accuracy")] = checks[key]["accuracy"]
            if "dense" in checks:
                res["baseline"]["loads_keras3"] = checks["dense"]["loads"]
        except Exception as exc:  # noqa: BLE001 - one method failing must not lose the others
            traceback.print_exc()
            res["errors"]["load_check"] = f"{type(exc).__name__}: {exc}"[:400]
    return res


if __name__ == "__main__":
    sys.exit(main())
