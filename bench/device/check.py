"""The device check: what the artifacts of ``bench/device/prepare.py`` cost on a machine
with a GPU (run there by ``bench/device.sh``; it needs no TensorFlow).

``python3 -m bench.device.check --artifacts .device --out DIR`` writes ``DIR/device.md``
(a Markdown section for BENCHMARKS.md) and ``DIR/device.json``. Sections:

1. the machine: GPU name and driver (``nvidia-smi``), CPU model and its 8-bit dot-product
   flags (``avx512_vnni``, ``avx_vnni``, ``amx_int8``) from ``/proc/cpuinfo``;
2. LiteRT on that CPU: float32 vs full-integer int8 TFLite, batch 1 and 32, 1 and 2
   threads (the 0.4x target of the quantization work);
3. onnxruntime on that CPU (and CUDA / TensorRT where the installed onnxruntime has
   those providers): float32 vs float16 vs static int8 QDQ ONNX, batch 1 and 32;
4. training throughput of the benchmark models on the GPU, Keras 3 on JAX (TensorFlow is
   not installed there), with and without data-parallel distribution over the GPUs.

Every latency is the median of ``--calls`` calls, best of 3 rounds that alternate the
artifacts, so a clock change hits all of them alike. Each section catches its own failure
and reports it as a row, so one missing package does not lose the others.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
import traceback
from pathlib import Path

import numpy as np

MODELS = ("lenet300", "small-cnn", "mobilenetv2")


def machine() -> dict:
    info = {}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], check=False, capture_output=True, text=True,
                             timeout=30).stdout.strip()
        info["gpu"] = out or "none"
    except (OSError, subprocess.SubprocessError) as exc:
        info["gpu"] = f"none ({exc})"
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                  if ln.startswith("model name")), "unknown")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])
    info["cpu"] = model
    info["cores"] = os.cpu_count()
    info["int8_flags"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni",
                                      "amx_tile", "amx_int8", "amx_bf16") if f in flags]
    return info


def _best_median(fns: dict, calls: int, rounds: int = 3) -> dict:
    """Per name, the best over ``rounds`` of the median of ``calls`` timed calls (ms);
    the rounds alternate the functions."""
    best = {k: float("inf") for k in fns}
    for fn in fns.values():  # warm-up
        for _ in range(5):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            times = []
            for _ in range(calls):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            best[name] = min(best[name], statistics.median(times) * 1e3)
    return best


def _batch(x: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(x))
    return np.concatenate([x] * reps)[:n].astype(np.float32)


def litert(art: Path, calls: int) -> list[dict]:
    from ai_edge_litert.interpreter import Interpreter

    rows = []
    for name in MODELS:
        x = np.load(art / f"{name}.x.npy", allow_pickle=False)
        for batch in (1, 32):
            for threads in (1, 2):
                fns, outs = {}, {}
                for kind in ("fp32", "int8"):
                    it = Interpreter(model_content=(art / f"{name}.{kind}.tflite").read_bytes(),
                                     num_threads=threads)
                    inp = it.get_input_details()[0]
                    it.resize_tensor_input(inp["index"], [batch, *x.shape[1:]])
                    it.allocate_tensors()
                    xb = _batch(x, batch).astype(inp["dtype"])
                    it.set_tensor(inp["index"], xb)
                    out_index = it.get_output_details()[0]["index"]

                    def call(it=it):
                        it.invoke()
                    call()
                    outs[kind] = it.get_tensor(out_index).copy()
                    fns[kind] = call
                ms = _best_median(fns, calls if batch == 1 else max(calls // 4, 10))
                agree = float(np.mean(outs["fp32"].argmax(-1) == outs["int8"].argmax(-1)))
                rows.append({"model": name, "batch": batch, "threads": threads,
                             "fp32_ms": ms["fp32"], "int8_ms": ms["int8"],
                             "ratio": ms["int8"] / ms["fp32"], "top1_agreement": agree})
                print("litert", rows[-1], flush=True)
    return rows


def onnxruntime_rows(art: Path, calls: int) -> tuple[list[dict], list[str]]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = [p for p in ("CPUExecutionProvider", "CUDAExecutionProvider",
                          "TensorrtExecutionProvider") if p in available]
    rows = []
    for provider in wanted:
        thread_counts = (1, os.cpu_count() or 1) if provider == "CPUExecutionProvider" else (0,)
        for name in MODELS:
            x = np.load(art / f"{name}.x.npy", allow_pickle=False)
            for batch in (1, 32):
                for threads in thread_counts:
                    fns, outs = {}, {}
                    for kind in ("fp32", "fp16", "int8"):
                        so = ort.SessionOptions()
                        if threads:
                            so.intra_op_num_threads = threads
                        sess = ort.InferenceSession(str(art / f"{name}.{kind}.onnx"), so,
                                                    providers=[provider])
                        feed = {sess.get_inputs()[0].name: _batch(x, batch)}

                        def call(sess=sess, feed=feed):
                            return sess.run(None, feed)
                        outs[kind] = call()[0]
                        fns[kind] = call
                    ms = _best_median(fns, calls if batch == 1 else max(calls // 4, 10))
                    ref = outs["fp32"]
                    rows.append({
                        "provider": provider.replace("ExecutionProvider", ""),
                        "model": name, "batch": batch, "threads": threads or "-",
                        **{f"{k}_ms": v for k, v in ms.items()},
                        "fp16_ratio": ms["fp16"] / ms["fp32"],
                        "int8_ratio": ms["int8"] / ms["fp32"],
                        "fp16_rel_err": float(np.abs(outs["fp16"] - ref).max()
                                              / max(np.abs(ref).max(), 1e-12)),
                        "int8_top1_agreement": float(np.mean(outs["int8"].argmax(-1)
                                                             == ref.argmax(-1)))})
                    print("onnxruntime", rows[-1], flush=True)
    return rows, available


def keras_training(art: Path, seconds: float) -> tuple[list[dict], dict]:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax
    import keras

    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    env = {"keras": keras.__version__, "jax": jax.__version__,
           "backend": keras.backend.backend(), "devices": [str(d) for d in jax.devices()]}
    rows = []
    for name in MODELS:
        x0 = np.load(art / f"{name}.x.npy", allow_pickle=False)
        for distributed in (False, True):
            if distributed:
                if not gpus:
                    continue
                keras.distribution.set_distribution(
                    keras.distribution.DataParallel(devices=gpus))
            else:
                keras.distribution.set_distribution(None)
            model = keras.models.load_model(art / f"{name}.keras", compile=False)
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
            batch = 256
            n = batch * 8
            x = _batch(x0, n)
            y = np.random.default_rng(0).integers(0, 10, n)
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # compile + warm-up
            epochs, t = 0, time.perf_counter()
            while time.perf_counter() - t < seconds or epochs < 2:
                model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
                epochs += 1
            elapsed = time.perf_counter() - t
            rows.append({"model": name, "distribution": ("DataParallel over "
                                                         f"{len(gpus)} GPU(s)"
                                                         if distributed else "none"),
                         "device": "gpu" if gpus else "cpu", "batch": batch,
                         "samples_per_s": n * epochs / elapsed})
            print("training", rows[-1], flush=True)
    keras.distribution.set_distribution(None)
    return rows, env


def _agreement(row: dict, key: str) -> str:
    # MobileNetV2 has random weights: its outputs are near-uniform, so agreement with the
    # float artifact says nothing about the int8 one; the trained models' does.
    return "n/a (random weights)" if row["model"] == "mobilenetv2" else f"{row[key]:.1%}"


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [(f"Device: **{m['gpu']}**; CPU: {m['cpu']} ({m['cores']} cores), 8-bit "
             f"flags: {', '.join(m['int8_flags']) or 'none'}. Run {result['date']}, "
             f"{result['seconds']:.0f} s."), ""]
    if result.get("litert"):
        lines += [("LiteRT (XNNPACK) on the device's CPU, float32 vs full-integer int8 TFLite "
                  "(ms, median, best of 3 interleaved rounds):"), "",
                  ("| model | batch | threads | float32 ms | int8 ms | int8 / float | "
                  "top-1 agreement |"), "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['batch']} | {r['threads']} | {r['fp32_ms']:.3f} | "
                  f"{r['int8_ms']:.3f} | {r['ratio']:.2f}x | {_agreement(r, 'top1_agreement')} |"
                  for r in result["litert"]]
        lines.append("")
    if result.get("onnxruntime"):
        lines += [(f"onnxruntime {result.get('onnxruntime_version', '')} (providers "
                  f"available: {', '.join(result.get('providers', []))}), float32 vs "
                  "float16 vs static int8 QDQ ONNX:"), "",
                  ("| provider | model | batch | threads | float32 ms | float16 ms | int8 ms "
                  "| fp16 / fp32 | int8 / fp32 | fp16 max rel err | int8 top-1 |"),
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['provider']} | {r['model']} | {r['batch']} | {r['threads']} | "
                  f"{r['fp32_ms']:.3f} | {r['fp16_ms']:.3f} | {r['int8_ms']:.3f} | "
                  f"{r['fp16_ratio']:.2f}x | {r['int8_ratio']:.2f}x | "
                  f"{r['fp16_rel_err']:.1e} | {_agreement(r, 'int8_top1_agreement')} |"
                  for r in result["onnxruntime"]]
        lines.append("")
    if result.get("training"):
        env = result.get("training_env", {})
        lines += [(f"Training throughput, Keras {env.get('keras')} on JAX {env.get('jax')} "
                  f"(devices: {', '.join(env.get('devices', []))}), batch 256, Adam:"), "",
                  "| model | device | distribution | samples/s |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['device']} | {r['distribution']} | "
                  f"{r['samples_per_s']:,.0f} |" for r in result["training"]]
        lines.append("")
    for section, error in result.get("errors", {}).items():
        lines.append(f"- {section}: could not run: {error}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.device.check")
    parser.add_argument("--artifacts", default=".device")
    parser.add_argument("--out", default=os.environ.get("OUT", "bench/out"))
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--train-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    art, out = Path(args.artifacts), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": machine(), "errors": {}}
    print(result["machine"], flush=True)

    def section(key, fn):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - each section reports its own failure
            traceback.print_exc()
            result["errors"][key] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            return None

    result["litert"] = section("litert", lambda: litert(art, args.calls))
    ort_result = section("onnxruntime", lambda: onnxruntime_rows(art, args.calls))
    if ort_result:
        import onnxruntime

        result["onnxruntime"], result["providers"] = ort_result
        result["onnxruntime_version"] = onnxruntime.__version__
    train = section("training", lambda: keras_training(art, args.train_seconds))
    if train:
        result["training"], result["training_env"] = train
    result["seconds"] = time.perf_counter() - start
    (out / "device.json").write_text(json.dumps(result, indent=1))
    (out / "device.md").write_text(markdown(result))
    print(markdown(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
