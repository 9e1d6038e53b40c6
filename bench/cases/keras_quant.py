"""Keras's own 4-bit quantizers (``model.quantize``: int4, GPTQ, AWQ) next to ours on
LeNet-300-100 (#20 item 5): a subsection of the ``pruning-obs`` case, not a case itself."""

from __future__ import annotations

import time

from bench.harness import table


def keras_quantizer_rows(sec, ctx, dense, ds, dense_acc: float) -> None:
    """Add the accuracy-drop table of ours vs Keras's 4-bit weight quantizers to ``sec``.

    Quick mode measures the two cheap rows (round-to-nearest: ours and Keras's int4);
    Keras's GPTQ runs column by column in eager ops (about 40 s on LeNet-300-100).
    """
    from compress.agreement import sqnr_db
    from compress.quantization.gptq import round_model
    from compress.quantization.keras_modes import keras_quantize
    from compress.training import accuracy

    cal = 256
    x = ds.x_train[:cal]
    runs = {
        "ours: int4 per-channel, round-to-nearest": lambda: round_model(
            dense, qmax=7, rounding="nearest")[0],
        "Keras model.quantize('int4') (groups of 128 rows)": lambda: keras_quantize(
            dense, "keras-int4")[0],
        "ours: int4 per-channel, GPTQ": lambda: round_model(dense, x, qmax=7)[0],
        "Keras GPTQ (GPTQConfig, 4-bit, groups of 128)": lambda: keras_quantize(
            dense, "gptq", x)[0],
        "Keras AWQ (AWQConfig, 4-bit, groups of 128)": lambda: keras_quantize(
            dense, "awq", x)[0],
    }
    rows = []
    reference = dense.predict(ds.x_test, verbose=0)
    for name, run in list(runs.items())[:ctx.size(2, None)]:
        t0 = time.perf_counter()
        model = run()
        seconds = time.perf_counter() - t0
        acc = accuracy(model, ds.x_test, ds.y_test)
        sqnr = sqnr_db(model.predict(ds.x_test, verbose=0), reference)
        rows.append([name, f"{acc:.2%}", f"{(dense_acc - acc) * 100:.2f}", f"{sqnr:.1f}",
                     f"{seconds:.1f}"])
    sec.add("### 4-bit weights: ours vs Keras's own quantizers\n\n"
            f"LeNet-300-100, dense **{dense_acc:.2%}**; {cal} calibration samples for the "
            "GPTQ/AWQ rows. Keras's run unchanged through `compress quantize --mode "
            "keras-int4|gptq|awq` (one chain of blocks fed chunks of samples; "
            "`compress/quantization/keras_modes.py`); ours snap the weights onto a "
            "per-channel grid in float. SQNR: the test outputs against the float "
            "model's, in dB (higher is closer; a test set of 1,000 images moves accuracy "
            "in steps of 0.1 pt). Keras's GPTQ and AWQ rows before 2026-11-29 equalled its "
            "int4 row: on Keras 3.15.1 alone they never calibrate (see "
            "docs/quantization.md).\n\n"
            + table(["quantizer", "accuracy", "drop (pts)", "SQNR (dB)", "seconds"], rows))
