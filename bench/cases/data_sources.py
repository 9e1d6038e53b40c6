"""Data sources (#18): streaming memory and throughput of image-folder input.

(a) Streaming memory: pruning with fine-tuning, then full-integer int8 calibration, read
from an image folder of N PNG files (Animal-MNIST silhouettes, and their mirror images
past 10,000), run for a small and a 10x larger N, each in its own process; the peak
resident memory (``resource.getrusage`` ``ru_maxrss``) must grow by <= 10%.

(b) Throughput: the same model trained on the same images, from in-memory arrays and
from the image folder's ``tf.data`` pipeline (parallel decode, prefetch); the folder
must reach >= 80% of the arrays' samples per second (epochs after the first, timed).

Run alone: ``python -m bench --only data-sources-memory data-sources-throughput``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import Section, table

ROOT = Path(__file__).resolve().parents[2]


def _images(n: int):
    """``n`` 28x28 grey images (uint8) and labels from Animal-MNIST, shuffled (seed 0),
    mirrored past 10,000."""
    import numpy as np

    from compress.data.named import _read_animal_mnist

    x, y = _read_animal_mnist()
    order = np.random.default_rng(0).permutation(len(x))  # the file is sorted by class
    x, y = x.reshape(-1, 28, 28).astype("uint8")[order], y[order]
    reps = -(-n // len(x))
    xs = np.concatenate([x if i % 2 == 0 else x[:, :, ::-1] for i in range(reps)])[:n]
    ys = np.concatenate([y] * reps)[:n].astype("int64")
    return xs, ys


def _write_folder(folder: Path, n: int, offset: int = 0) -> Path:
    """An image folder of ``n`` PNG files in one sub-folder per class (written once),
    from image ``offset`` on."""
    from PIL import Image

    done = folder / ".complete"
    if done.exists():
        return folder
    x, y = _images(n + offset)
    x, y = x[offset:], y[offset:]
    for c in sorted(set(y.tolist())):
        (folder / f"class_{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(x[i], "L").save(folder / f"class_{y[i]}" / f"{i:05d}.png")
    done.write_text(str(n))
    return folder


def _model_file(path: Path) -> Path:
    """The toolkit's small CNN for 28x28 images (throughput)."""
    from compress import training
    from compress.models import build

    training.set_seed(0)
    build("small-cnn", input_shape=(28, 28, 1), num_classes=10).save(path)
    return path


MEMORY_SIDE = 64  # the memory case's model input: the 28x28 PNG files are resized to it


def _wide_input_model_file(path: Path) -> Path:
    """A light CNN taking 64x64 images (memory): the images it is fed weigh 16 KB each in
    float32, so reading 20,000 of them into memory would show (330 MB), while training
    stays cheap."""
    import keras

    from compress import training

    training.set_seed(0)
    model = keras.Sequential([
        keras.Input((MEMORY_SIDE, MEMORY_SIDE, 1)),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu", name="fc"),
        keras.layers.Dense(10, activation="softmax", name="predictions")])
    model.save(path)
    return path


def _measure(folder: str, val_folder: str, model_path: str, batch: int,
             materialise: bool = False) -> dict:
    """In a fresh process: prune 50% with one streamed fine-tuning epoch, then int8
    calibration from the folder (validated and scored on ``val_folder``); the process's
    peak RSS. ``materialise``: the control, the training images read into memory first
    (what a pass that needs arrays would do)."""
    import resource

    import compress
    from compress import io, training
    from compress.data import load_data, prepare

    training.set_seed(0)
    model = io.load_model(model_path)
    t0 = time.perf_counter()
    data = prepare(model, load_data(folder, seed=0, val_data=val_folder))
    if materialise:
        data.split("train")  # kept in the dataset's cache for the rest of the run
    pruned, info = compress.prune(model, data, sparsity=0.5, epochs=1, batch_size=batch)
    content, _ = compress.quantize(pruned, data, mode="int8", latency=False,
                                   calibration_samples=256)
    return {"images": data.size("train"),
            "seconds": time.perf_counter() - t0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "sparsity": info["sparsity_reached"], "tflite_bytes": len(content),
            "notes": data.notes}


def _child(folder: Path, val_folder: Path, model_path: Path, batch: int,
           materialise: bool = False) -> dict:
    code = ("import json, sys; from bench.cases.data_sources import _measure; "
            f"print('RESULT' + json.dumps(_measure({str(folder)!r}, {str(val_folder)!r}, "
            f"{str(model_path)!r}, {batch}, {materialise})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")]
    if done.returncode or not lines:
        raise RuntimeError(f"measurement failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(lines[-1][len("RESULT"):])


def case_memory(ctx) -> Section:
    sec = Section("Data sources: streaming memory (image folder)", issue="#18")
    small, large = ctx.size((200, 1000), (2000, 20000))
    model_path = _wide_input_model_file(ctx.work_dir / "data_sources_cnn64.keras")
    rows, results = [], {}
    n_val = ctx.size(100, 500)
    val_folder = _write_folder(ctx.work_dir / f"png_val_{n_val}", n_val, offset=5000)
    runs = ((small, False), (large, False), (large, True))
    # quick mode (a harness check) leaves out the control, a third fresh process
    for n, materialise in runs[:ctx.size(2, 3)]:
        folder = _write_folder(ctx.work_dir / f"png_{n}", n)
        r = _child(folder, val_folder, model_path, batch=64, materialise=materialise)
        results[n, materialise] = r
        arrays_mb = n * MEMORY_SIDE * MEMORY_SIDE * 4 / 2**20
        rows.append([f"{n:,}" + (" (control: training split read into memory)"
                                 if materialise else ""),
                     f"{r['peak_rss_mb']:.0f} MB", f"{arrays_mb:.1f} MB",
                     f"{r['seconds']:.1f} s", f"{r['sparsity']:.1%}",
                     "; ".join(note.split(": ", 1)[-1] for note in r["notes"]) or "-"])
    base = results[small, False]["peak_rss_mb"]
    growth = results[large, False]["peak_rss_mb"] / base - 1
    sec.add("Prune 50% of a light CNN with 1 fine-tuning epoch, then int8 TFLite with 256 "
            "calibration samples, streamed from a PNG folder (Animal-MNIST, 28x28 files "
            f"resized to the model's {MEMORY_SIDE}x{MEMORY_SIDE} input), each "
            f"size in a fresh process; validation and scores on the same {n_val:,}-image "
            "folder (`--val-data`: the test split is read into memory, so it is held fixed "
            "here); 'as float32 arrays' is what the training images alone would take in "
            "memory.\n\n" + table(
                ["images", "peak RSS", "as float32 arrays", "time", "sparsity",
                 "what was read into memory"], rows))
    if (large, True) in results:
        control = results[large, True]["peak_rss_mb"] / base - 1
        sec.add(f"Control: the same run with the {large:,} training images read into "
                f"memory first grows the peak by {control:+.1%} (the target would "
                f"{'fail' if control > 0.10 else 'still pass: the images are too small to tell'}"
                ").")
    sec.target(f"peak RSS growth {small:,} -> {large:,} images <= 10%",
               f"{growth:+.1%}", "+10%", growth <= 0.10)
    return sec


def _epoch_seconds(model_path: Path, inputs: dict, epochs: int) -> dict:
    """Seconds of each epoch of each input, the inputs' epochs alternating (A, B, A, B...)
    so that a load on the machine from elsewhere falls on both alike. Each input trains its
    own copy of the model from the same weights."""
    from compress import io, training

    models = {}
    for name in inputs:
        training.set_seed(0)
        models[name] = io.load_model(model_path)
        training.compile_classifier(models[name], 1e-3)
    times = {name: [] for name in inputs}
    for _ in range(epochs):
        for name, (args, kwargs) in inputs.items():
            t0 = time.perf_counter()
            models[name].fit(*args, epochs=1, verbose=0, **kwargs)
            times[name].append(time.perf_counter() - t0)
    return times


def case_throughput(ctx) -> Section:
    import numpy as np

    from compress import io
    from compress.data import load_data, prepare

    sec = Section("Data sources: image-folder throughput", issue="#18")
    n = ctx.size(1000, 10000)
    epochs = ctx.size(2, 5)
    batch = 64
    folder = _write_folder(ctx.work_dir / f"png_{n}", n)
    model_path = _model_file(ctx.work_dir / "data_sources_cnn.keras")
    model = io.load_model(model_path)
    data = prepare(model, load_data(str(folder), seed=0, val_split=0.1))
    n_train = data.size("train")
    x, y = data.split("train")  # the very same decoded images, in memory
    x, y = np.asarray(x), np.asarray(y)
    times = _epoch_seconds(model_path, {
        "arrays": ((x, y), {"batch_size": batch, "shuffle": True}),
        "stream": ((data.batches("train", batch, shuffle=True),), {})}, epochs)
    # the best epoch after the first (which builds the step function) of each input
    arrays, stream = (n_train / min(times[k][1:]) for k in ("arrays", "stream"))
    ratio = stream / arrays
    sec.add(f"Training a small CNN for {epochs} epochs on {n_train:,} PNG images (28x28, "
            f"batch {batch}) from each input, their epochs alternating: samples/s of the "
            "best epoch after the first.\n\n" + table(
                ["input", "samples/s"],
                [["in-memory arrays (model.fit(x, y))", f"{arrays:,.0f}"],
                 ["image folder (tf.data: parallel decode, resize, prefetch)",
                  f"{stream:,.0f}"]]))
    sec.target("image-folder throughput >= 80% of in-memory arrays", f"{ratio:.0%}", "80%",
               ratio >= 0.80)
    return sec


CASES = {"data-sources-memory": case_memory, "data-sources-throughput": case_throughput}
