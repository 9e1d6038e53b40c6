"""Peers: TFMOT head-to-head on LeNet-300-100, and Keras's own int8 against the raw converter.

TFMOT runs in its own process (``bench.peers.tfmot_peer`` with ``TF_USE_LEGACY_KERAS=1``;
it is never imported here, since importing it switches ``tf.keras`` to Keras 2). Our
side runs here on the Keras 3 model trained by ``bench.baselines`` on the same seeded
split (checked by a digest of the test split). Each of our rows is produced only when its
pass is importable; otherwise the table says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import Section, table

ROOT = Path(__file__).resolve().parents[2]
FINETUNE_LR = 1e-3  # Adam; TFMOT side. Our passes use their own defaults (see the notes).
SPARSITIES = (0.9, 0.95)
END_FRACTION = 2 / 3  # sparsity ramp over the first 2/3 of fine-tune steps (our callback's)
BATCH_SIZE = 64
CLUSTERS = 16


def _one_line(exc: Exception) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def _kb(n) -> str:
    return "-" if n is None else f"{n / 1024:.0f} KB"


def _pct(x) -> str:
    return "-" if x is None else f"{x:.2%}"


def _yes(b) -> str:
    return "-" if b is None else ("yes" if b else "**no**")


def sparsities(ctx) -> tuple:
    return ctx.size(SPARSITIES[:1], SPARSITIES)


def run_tfmot(ctx, finetune_epochs: int) -> dict:
    """Run the TFMOT peer script in a subprocess with legacy Keras; return its JSON."""
    return start_tfmot(ctx, finetune_epochs)()


def start_tfmot(ctx, finetune_epochs: int):
    """Start the TFMOT peer script in a subprocess with legacy Keras; return a function
    that waits for it and returns its JSON."""
    out = ctx.work_dir / f"tfmot-peer-s{ctx.seed}-q{int(ctx.quick)}.json"
    cmd = [sys.executable, "-m", "bench.peers.tfmot_peer", "--out", str(out),
           "--seed", str(ctx.seed), "--finetune-epochs", str(finetune_epochs),
           "--finetune-lr", str(FINETUNE_LR), "--clusters", str(CLUSTERS),
           "--end-fraction", str(END_FRACTION), "--batch-size", str(BATCH_SIZE),
           "--sparsities", *map(str, SPARSITIES)]  # both in quick mode too: it runs beside
    if ctx.quick:
        cmd.append("--quick")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    if out.exists():
        out.unlink()
    log = out.with_suffix(".log")  # a file, not a pipe: the child never blocks on it
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)

    def finish() -> dict:
        try:
            proc.wait(timeout=900)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RuntimeError("TFMOT peer took more than 900 s") from None
        if proc.returncode != 0 or not out.exists():
            stderr = log.read_text(errors="replace")
            tail = " ".join(stderr.strip().splitlines()[-3:])[-400:]
            raise RuntimeError(f"TFMOT peer failed (exit {proc.returncode}): {tail}")
        return json.loads(out.read_text())

    return finish


def _save(model, path: Path) -> Path:
    """Save as ``.h5`` without optimizer state (as the TFMOT side saves), else ``.keras``."""
    from compress.training import copy_model

    model = copy_model(model)  # uncompiled: no optimizer slots in the file
    try:
        model.save(path)
        return path
    except Exception:  # noqa: BLE001 - e.g. a layer h5 cannot serialize: use the native format
        alt = path.with_suffix(".keras")
        model.save(alt)
        return alt


def our_rows(ctx, model, ds, finetune_epochs: int) -> tuple[list[dict], list[str], float]:
    """Our passes on the same model and data: rows, notes, plain-fit seconds."""
    from bench.peers.tfmot_peer import kernel_sparsity, max_unique_kernel_values
    from compress import io, training
    from compress.report import zipped_size
    from compress.runtime import artifact_accuracy

    work = ctx.work_dir / "peers"
    work.mkdir(parents=True, exist_ok=True)
    notes = []

    # Plain fit of the dense model for the fine-tune epochs: the time ratio's denominator.
    plain = training.copy_model(model)
    training.compile_classifier(plain, learning_rate=FINETUNE_LR)
    t0 = time.perf_counter()
    training.fit(plain, ds, epochs=finetune_epochs, verbose=0)
    plain_secs = time.perf_counter() - t0

    rows = []

    def keras_row(name, label, new, info, secs, extra=None):
        path = _save(new, work / f"ours-{name}.h5")
        row = {"name": name, "method": label, "accuracy": training.accuracy(
            new, ds.x_test, ds.y_test), **kernel_sparsity(new), "finetune_seconds": secs,
            "time_ratio": secs / plain_secs, "zipped_bytes": zipped_size(path),
            "path": str(path), "info": info}
        row.update(extra or {})
        rows.append(row)

    try:
        from compress.pruning import prune
    except ImportError:
        prune = None
        notes.append("Our pruning (`compress.pruning.prune`): not available in this run.")
    if prune is not None:
        from bench.peers.tfmot_peer import schedule_steps

        # Same mask-update frequency as the TFMOT side's PolynomialDecay.
        _, frequency, _ = schedule_steps(len(ds.x_train), BATCH_SIZE, finetune_epochs,
                                         END_FRACTION)
        notes.append(f"Our gradual pruning updates masks every {frequency} steps, as TFMOT's "
                     "schedule does here.")
        notes.append("OBD uses its own prune-retrain procedure (schedule `iterative`, 3 "
                     "rounds, saliencies from 1,024 training samples, the same total "
                     "epochs): recomputing OBD saliencies at every gradual mask update costs "
                     "minutes here.")
        # quick mode (a harness check) leaves OBD's prune-retrain rounds out: the OBD
        # pass has its own tests and bench rows
        methods = (("magnitude", "gradual"), ("obd", "iterative"))
        for method, schedule in methods[:ctx.size(1, 2)]:
            for s in sparsities(ctx):
                name = f"{method}-{round(s * 100)}"
                training.set_seed(ctx.seed)
                extra = {"frequency": frequency} if schedule == "gradual" else {"rounds": 3}
                try:
                    t0 = time.perf_counter()
                    new, info = prune(model, ds, method=method, sparsity=s,
                                      schedule=schedule, epochs=finetune_epochs,
                                      batch_size=BATCH_SIZE, **extra)
                    secs = time.perf_counter() - t0
                    keras_row(name, f"ours prune {method} {s:.0%} ({schedule})", new, info,
                              secs, {"target_sparsity": s})
                except Exception as exc:  # noqa: BLE001 - report it, measure the rest
                    notes.append(f"Our prune {method} {s:.0%} failed: `{_one_line(exc)}`")

    try:
        from compress.sharing import cluster_model
    except ImportError:
        cluster_model = None
        notes.append("Our k-means (`compress.sharing.cluster_model`): not available in "
                     "this run.")
    if cluster_model is not None:
        training.set_seed(ctx.seed)
        try:
            t0 = time.perf_counter()
            new, info = cluster_model(model, ds, clusters=CLUSTERS, epochs=finetune_epochs)
            secs = time.perf_counter() - t0
            keras_row(f"cluster-{CLUSTERS}", f"ours k-means k={CLUSTERS}", new, info, secs,
                      {"max_unique_kernel_values": max_unique_kernel_values(new)})
        except Exception as exc:  # noqa: BLE001 - report it, measure the rest
            notes.append(f"Our k-means failed: `{_one_line(exc)}`")

    try:
        from compress.quantization import quantize
    except ImportError:
        quantize = None
        notes.append("Our QAT (`compress.quantization.quantize`): not available in this run.")
    if quantize is not None:
        training.set_seed(ctx.seed)
        path = work / "ours-qat-int8.tflite"
        if path.exists():
            path.unlink()
        try:
            t0 = time.perf_counter()
            content, info = quantize(model, ds, mode="int8", qat=True,
                                     epochs=finetune_epochs, latency=False)
            secs = time.perf_counter() - t0
            io.write_bytes(path, content)
        except Exception as exc:  # noqa: BLE001 - report it, measure the rest
            notes.append(f"Our QAT failed: `{_one_line(exc)}`")
            return rows, notes, plain_secs
        rows.append({"name": "qat-int8", "method": "ours QAT -> TFLite full int8 "
                     "(fine-tune + convert)", "accuracy": artifact_accuracy(
                         path, ds.x_test, ds.y_test), "finetune_seconds": secs,
                     "time_ratio": secs / plain_secs, "zipped_bytes": zipped_size(path),
                     "path": str(path), "info": info, "tflite": True})
    return rows, notes, plain_secs


def keras_builtins(ctx, model, ds) -> tuple[list[list], dict]:
    """Keras ``model.quantize("int8")`` vs the raw TFLite converter's full int8."""
    import tensorflow as tf

    from compress import io, training
    from compress.quiet import quiet_output
    from compress.report import zipped_size
    from compress.runtime import artifact_accuracy

    work = ctx.work_dir / "peers"
    work.mkdir(parents=True, exist_ok=True)
    rows, files = [], {}

    dense = work / "dense.keras"
    model.save(dense)
    acc = training.accuracy(model, ds.x_test, ds.y_test)
    rows.append(["dense float32 (`.keras`)", _pct(acc), "-", _kb(dense.stat().st_size),
                 _kb(zipped_size(dense)), "reference"])
    files["dense.keras"] = str(dense)

    q = training.copy_model(model)
    t0 = time.perf_counter()
    q.quantize("int8")
    secs = time.perf_counter() - t0
    path = work / "keras-quantize-int8.keras"
    q.save(path)
    rows.append(['Keras `model.quantize("int8")` (Dense weights int8, `.keras`)',
                 _pct(training.accuracy(q, ds.x_test, ds.y_test)), f"{secs:.2f} s",
                 _kb(path.stat().st_size), _kb(zipped_size(path)),
                 "weights int8, activations float; Dense/EinsumDense/Embedding only"])
    files["keras-quantize-int8"] = str(path)

    rep = ds.representative(256).astype("float32")

    def representative():
        for i in range(len(rep)):
            yield [rep[i:i + 1]]

    t0 = time.perf_counter()
    with quiet_output():
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        flat = converter.convert()
    secs = time.perf_counter() - t0
    path = work / "raw-converter-int8.tflite"
    path.write_bytes(flat)
    rows.append(["raw `TFLiteConverter.from_keras_model` full int8 (`.tflite`)",
                 _pct(artifact_accuracy(path, ds.x_test, ds.y_test)), f"{secs:.2f} s",
                 _kb(len(flat)), _kb(zipped_size(path)),
                 "weights and activations int8, int8 I/O; 256 calibration samples"])

    # Our quantize pass on the same model: the artifact is verified in its runtime before
    # it is written, and the accuracy is measured there (time includes both).
    from compress.quantization import format_for, quantize

    ours = [("ours `compress quantize --mode int8` (`.tflite`)", "ours-int8.tflite",
             {"mode": "int8"}, "full int8, float I/O; verified in LiteRT; 256 samples"),
            ("ours `compress quantize --mode int8` (`.onnx`)", "ours-int8.onnx",
             {"mode": "int8"}, "static int8 (QDQ, MinMax); verified in onnxruntime"),
            ("ours `compress quantize --mode keras-int8` (`.keras`)", "ours-keras-int8.keras",
             {"mode": "keras-int8"}, "Keras's scheme; names the layers left float"),
            ("ours `compress quantize --mode dynamic` (`.tflite`)", "ours-dynamic.tflite",
             {"mode": "dynamic"}, "int8 weights, float activations; no data needed")]
    for label, name, options, note in ours[:ctx.size(1, len(ours))]:
        path = work / name
        t0 = time.perf_counter()
        with quiet_output():
            content, info = quantize(model, ds, latency=False,
                                     **{**options, "format": format_for(path, options)})
        secs = time.perf_counter() - t0
        io.write_bytes(path, content)
        rows.append([label, _pct(info["accuracy"]), f"{secs:.2f} s", _kb(info["bytes"]),
                     _kb(info["zipped_bytes"]), note])
        files[name] = str(path)
    return rows, files


def case_tfmot_head_to_head(ctx) -> Section:
    """TFMOT vs ours on LeNet-300-100 / mnist5k: pruning, k-means, QAT; Keras built-ins."""
    from bench.baselines import trained
    from bench.peers.tfmot_peer import fingerprint, run_check_load
    from compress import training
    from compress.report import zipped_size

    sec = Section("Peers: TFMOT head-to-head and Keras built-ins", issue="#9")
    ft = ctx.size(1, 6)
    # Full mode runs the TFMOT side alone, so both sides' times are measured on a quiet
    # machine; quick mode (a harness check) runs it beside ours.
    waiting = start_tfmot(ctx, ft)
    peer = waiting() if not ctx.quick else None
    model, ds = trained("lenet300", "mnist5k", ctx)
    training.set_seed(ctx.seed)
    ours, notes, plain_secs = our_rows(ctx, model, ds, ft)
    builtin_rows, builtin_files = keras_builtins(ctx, model, ds)
    peer = peer or waiting()
    same_split = fingerprint(ds.x_test, ds.y_test) == peer["data"]["test_fingerprint"]
    same_train = fingerprint(ds.x_train, ds.y_train) == peer["data"]["train_fingerprint"]

    # Does each of our saved files load in a fresh process with plain Keras 3 (no toolkit)?
    base_path = _save(model, ctx.work_dir / "peers" / "ours-dense.h5")
    files = [{"name": "dense", "path": str(base_path), "loader": "keras3"}]
    files += [{"name": r["name"], "path": r["path"], "loader": "keras3"}
              for r in ours if not r.get("tflite")]
    files += [{"name": k, "path": v, "loader": "keras3"} for k, v in builtin_files.items()
              if v.endswith(".keras")]
    checks = run_check_load(files, ds.x_test, ds.y_test, ctx.work_dir / "peers")
    for r in ours:
        if r["name"] in checks:
            r["loads_keras3"] = checks[r["name"]]["loads"]
        elif r.get("tflite"):
            r["loads_keras3"] = None

    pb, ob = peer["baseline"], {"accuracy": training.accuracy(model, ds.x_test, ds.y_test),
                                "zipped_bytes": zipped_size(base_path),
                                "loads_keras3": checks["dense"]["loads"]}
    header = ["method", "accuracy", "sparsity (kernels)", "fine-tune time",
              "time ratio vs plain fit", "zipped size", "loads with plain Keras 3"]
    rows = [["TFMOT side: dense LeNet-300-100 (tf_keras, `.h5`)", _pct(pb["accuracy"]), "0%",
             f"{pb['train_seconds']:.1f} s ({pb['epochs_run']} ep)", "-",
             _kb(pb["zipped_bytes"]), _yes(pb.get("loads_keras3"))],
            ["our side: dense LeNet-300-100 (Keras 3, `.h5`)", _pct(ob["accuracy"]), "0%", "-",
             "-", _kb(ob["zipped_bytes"]), _yes(ob["loads_keras3"])]]

    def peer_row(key, label=None):
        r = peer["methods"].get(key)
        if r is None:
            err = peer["errors"].get(key, "not run")
            return [f"TFMOT {key}", f"failed: {err[:80]}", "-", "-", "-", "-", "-"]
        loads = _yes(r.get("loads_keras3"))
        if "unstripped_loads_keras3" in r:
            loads = (f"stripped: {loads}; unstripped: "
                     f"{_yes(r['unstripped_loads_keras3'])} (tf_keras without TFMOT: "
                     f"{_yes(r.get('unstripped_loads_tf_keras_without_tfmot'))})")
        elif "qat_keras_loads_keras3" in r:
            loads = f".tflite; QAT Keras model: {_yes(r['qat_keras_loads_keras3'])}"
        secs = r["finetune_seconds"] + r.get("convert_seconds", 0.0)
        ratio = secs / peer["plain_fit_seconds"]
        return [label or r["method"], _pct(r["accuracy"]),
                _pct(r.get("kernel_sparsity")), f"{secs:.1f} s", f"{ratio:.2f}x",
                _kb(r["zipped_bytes"]), loads]

    def our_row(r):
        loads = ".tflite (LiteRT)" if r.get("tflite") else _yes(r.get("loads_keras3"))
        return [r["method"], _pct(r["accuracy"]), _pct(r.get("kernel_sparsity")),
                f"{r['finetune_seconds']:.1f} s", f"{r['time_ratio']:.2f}x",
                _kb(r["zipped_bytes"]), loads]

    by_name = {r["name"]: r for r in ours}
    for s in sparsities(ctx):
        p = round(s * 100)
        rows.append(peer_row(f"prune-{p}"))
        for method in ("magnitude", "obd"):
            if f"{method}-{p}" in by_name:
                rows.append(our_row(by_name[f"{method}-{p}"]))
    rows.append(peer_row(f"cluster-{CLUSTERS}"))
    if f"cluster-{CLUSTERS}" in by_name:
        rows.append(our_row(by_name[f"cluster-{CLUSTERS}"]))
    qrow = peer_row("qat-int8")
    qrow[3] += " (fine-tune + convert)"
    rows.append(qrow)
    if "qat-int8" in by_name:
        rows.append(our_row(by_name["qat-int8"]))

    st = peer["settings"]
    sec.add(
        f"Same LeNet-300-100 (Flatten, Dense 300 relu, Dense 100 relu, Dense 10 softmax), "
        f"same seeded `mnist5k` split ({peer['data']['n_train']} train / "
        f"{peer['data']['n_test']} test; identical arrays on both sides: "
        f"{'yes' if same_split and same_train else '**no**'}), dense model trained with Adam "
        f"{st['lr']:g} and early stopping on val_loss (patience 5, best weights restored, at "
        f"most {st['epochs']} epochs) on each side. Every compression method fine-tunes for "
        f"{ft} epoch(s), batch {st['batch_size']}. TFMOT: Adam {st['finetune_lr']:g}, "
        f"`PolynomialDecay` 0 -> target over the first {st['end_fraction']:.0%} of the steps, "
        f"`cluster_weights` with {st['cluster_init'].lower()} init, `quantize_model` then the "
        f"TFLite converter with 256 calibration samples (int8 I/O). Ours: each pass's default "
        f"optimizer settings (Adam). The time ratio divides by a plain `fit` of the dense "
        f"model for the same epochs in the same process (TFMOT plain fit "
        f"{peer['plain_fit_seconds']:.1f} s, ours {plain_secs:.1f} s). Zipped size: the saved "
        f"file (`.h5`, or `.tflite` for QAT) after DEFLATE level 9. \"Loads with plain Keras "
        f"3\": `keras.models.load_model` in a fresh process that imports neither TFMOT nor "
        f"keras-compress.")
    sec.add(table(header, rows))
    if notes:
        sec.add("\n".join(f"- {n}" for n in notes))
    sec.add(f"TFMOT {peer['versions']['tensorflow-model-optimization']} with tf_keras "
            f"{peer['versions']['tf_keras']} (process total {peer['total_seconds']:.0f} s, of "
            f"which {peer['import_seconds']:.0f} s importing TensorFlow + TFMOT).")
    if peer["errors"]:
        sec.add("TFMOT errors: " + "; ".join(f"{k}: `{v[:200]}`"
                                              for k, v in peer["errors"].items()))

    sec.add("### Keras built-ins and our quantize pass: `model.quantize(\"int8\")`, the raw "
            "TFLite converter, `compress quantize`\n\n"
            "Keras's float `model.export(format=\"litert\")` is the same converter path as our "
            "float TFLite export, so the comparison that matters is int8. Same dense "
            "LeNet-300-100 as above; accuracy on the test split (Keras for `.keras`, LiteRT "
            "for `.tflite`, onnxruntime for `.onnx`). Our pass's time includes running the "
            "artifact in its runtime to verify it against the Keras model before writing.")
    sec.add(table(["artifact", "accuracy", "quantize time", "file", "zipped", "notes"],
                  builtin_rows))
    for key, label in (("keras-quantize-int8", 'Keras `quantize("int8")` `.keras`'),
                       ("ours-keras-int8.keras", "Our `--mode keras-int8` `.keras`")):
        if key in checks:
            sec.add(f"{label} loads with plain Keras 3 in a fresh process: "
                    f"{_yes(checks[key]['loads'])}.")

    # Head-to-head targets: ours should match TFMOT where both do the same thing.
    for s in sparsities(ctx):
        p = round(s * 100)
        r, t = by_name.get(f"magnitude-{p}"), peer["methods"].get(f"prune-{p}")
        if r and t:
            diff = (r["accuracy"] - t["accuracy"]) * 100
            sec.target(f"magnitude {p}% gradual: our accuracy >= TFMOT's - 0.5 pts "
                       f"(same epochs)", f"{diff:+.2f} pts", ">= -0.5 pts", diff >= -0.5)
            sec.target(f"magnitude {p}%: our time ratio vs plain fit <= TFMOT's",
                       f"{r['time_ratio']:.2f}x vs {t['time_ratio']:.2f}x", "<= TFMOT",
                       r["time_ratio"] <= t["time_ratio"])
    pruned = [r for r in ours if r["name"].split("-")[0] in ("magnitude", "obd")]
    if pruned:
        ok = all(r.get("loads_keras3") for r in pruned)
        sec.target("every pruned model of ours loads with plain Keras 3 (no toolkit, no strip)",
                   f"{sum(bool(r.get('loads_keras3')) for r in pruned)}/{len(pruned)}",
                   "all", ok)
    r, t = by_name.get(f"cluster-{CLUSTERS}"), peer["methods"].get(f"cluster-{CLUSTERS}")
    if r and t:
        diff = (r["accuracy"] - t["accuracy"]) * 100
        sec.target(f"k-means k={CLUSTERS}: our accuracy >= TFMOT's - 0.5 pts",
                   f"{diff:+.2f} pts", ">= -0.5 pts", diff >= -0.5)
    r, t = by_name.get("qat-int8"), peer["methods"].get("qat-int8")
    if r and t:
        diff = (r["accuracy"] - t["accuracy"]) * 100
        sec.target("QAT full int8: our TFLite accuracy >= TFMOT's - 0.5 pts",
                   f"{diff:+.2f} pts", ">= -0.5 pts", diff >= -0.5)
    sec.target("both sides train and test on identical arrays (digest of the splits)",
               "yes" if same_split and same_train else "no", "yes", same_split and same_train)

    results = {"tfmot": peer, "ours": [{k: v for k, v in r.items() if k != "info"}
                                       for r in ours],
               "ours_plain_fit_seconds": plain_secs}
    (ctx.work_dir / f"peers-s{ctx.seed}-q{int(ctx.quick)}.json").write_text(
        json.dumps(results, indent=1, default=str))
    return sec


CASES = {"tfmot-head-to-head": case_tfmot_head_to_head}
