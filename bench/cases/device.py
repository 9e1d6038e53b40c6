"""The GPU machine's numbers: the latest results of ``bench/device.sh``, run on a lent
device and committed under ``bench/device/results/`` (issue 21).

Nothing here runs on a GPU: this case renders the committed results, with the targets
they answer, so that ``make bench`` on a CPU keeps the device's section in BENCHMARKS.md.
A new device run replaces the files (``DATE-KIND.json`` from ``device.json``, and
``DATE-KIND.manifest.json`` from the artifacts' ``manifest.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.harness import Section, table

RESULTS = Path(__file__).resolve().parents[1] / "device" / "results"


def _latest():
    runs = sorted(p for p in RESULTS.glob("*.json") if not p.name.endswith(".manifest.json"))
    if not runs:
        return None, None, None
    path = runs[-1]
    manifest = path.with_name(path.stem + ".manifest.json")
    return path, json.loads(path.read_text()), (json.loads(manifest.read_text())
                                                if manifest.exists() else {})


def case_device(ctx) -> Section:
    """Render the latest device run: LiteRT/onnxruntime int8 and fp16 on its CPU, training
    throughput on its GPU, and what could not run there."""
    sec = Section("Device: the lent GPU machine (bench/device.sh)", issue="#21")
    path, result, manifest = _latest()
    if result is None:
        sec.add("No device run is recorded yet: `bench/device.sh` runs when a session is "
                "lent a GPU machine.")
        return sec
    from bench.device.check import markdown

    m = result["machine"]
    sec.add(f"From `{path.relative_to(RESULTS.parents[2])}`. `bench/device.sh` built the "
            "artifacts here with the toolkit's own passes (`bench/device/prepare.py`: "
            "LeNet-300-100 and the small CNN briefly trained, MobileNetV2 alpha 0.35 at "
            "96x96 with random weights; float16 ONNX by onnxruntime's float16 converter "
            "with float32 inputs and outputs) and measured them on the device "
            "(`bench/device/check.py`, no TensorFlow there).")
    sec.add(markdown(result))
    sec.add("Reading it: on this CPU (AMX and VNNI) int8 LiteRT is 0.50x-0.67x of float at "
            "batch 1 for the two trained models, short of the 0.35x the 2-core AMD EPYC "
            "(VNNI) of the main run measures for the small CNN: at 0.1 ms a call the fixed "
            "cost per call weighs more. MobileNetV2 (depthwise convolutions, random "
            "weights) is slower in int8 in both runtimes. onnxruntime's int8 gains only at "
            "batch 32 on one thread, and loses with 16 threads, where the float kernels "
            "scale and the QDQ ones do not. The DataParallel row of MobileNetV2 (178 "
            "samples/s) was timed over 5 s of `fit` calls and looks dominated by "
            "recompilation; it was not investigated further in this lease.")
    lite = {(r["model"], r["batch"], r["threads"]): r for r in result.get("litert") or []}
    onnx = {(r["provider"], r["model"], r["batch"], r["threads"]): r
            for r in result.get("onnxruntime") or []}
    vnni = [f for f in m["int8_flags"] if "vnni" in f or "amx" in f]
    where = f"{m['cpu']} ({', '.join(vnni) or 'no VNNI/AMX'})"
    for threads in (1, 2):
        r = lite.get(("small-cnn", 1, threads))
        if r:
            sec.target(f"device CPU {where}: small-cnn int8 LiteRT batch-1 latency <= 0.4x "
                       f"float, {threads} thread(s)",
                       f"{r['ratio']:.2f}x ({r['int8_ms']:.3f} vs {r['fp32_ms']:.3f} ms)",
                       "0.4x", r["ratio"] <= 0.4)
    r = onnx.get(("CPU", "small-cnn", 1, 1))
    if r:
        sec.target(f"device CPU {where}: small-cnn ONNX static int8 latency <= 0.7x float "
                   "ONNX (1 thread)",
                   f"{r['int8_ratio']:.2f}x ({r['int8_ms']:.3f} vs {r['fp32_ms']:.3f} ms)",
                   "0.7x", r["int8_ratio"] <= 0.7)
    sizes = []
    for name, entry in manifest.items():
        b = entry.get("bytes") or {}
        if "fp16.onnx" in b and "fp32.onnx" in b:
            sizes.append([name, f"{b['fp32.onnx']:,}", f"{b['fp16.onnx']:,}",
                          f"{b['fp16.onnx'] / b['fp32.onnx']:.3f}x"])
    if sizes:
        sec.add("float16 ONNX file sizes (the artifacts measured above; the size and output "
                "targets are measured on every bench run, here, in the section 'float16 ONNX: "
                "size and outputs against float32', as neither needs the device):")
        sec.add(table(["model", "float32 bytes", "float16 bytes", "ratio"], sizes))
    gpu_providers = [p for p in result.get("providers", [])
                     if p.startswith(("CUDA", "Tensorrt"))]
    sec.target("fp16 and int8 ONNX latency vs float32 in onnxruntime CUDA / TensorRT",
               "measured" if gpu_providers else
               "not measured: the device's onnxruntime has no CUDA/TensorRT provider "
               f"({', '.join(result.get('providers', []))}) and onnxruntime-gpu (243 MiB) "
               "exceeds the 64 MiB that can travel to it", "measured", bool(gpu_providers))
    return sec


CASES = {"device": case_device}
