"""compress.report: counts, sparsity, sizes and tables from a real model."""

import numpy as np

from compress import report


def test_counts_and_layer_sparsity(mlp_file):
    from compress import io

    model = io.load_model(mlp_file[0])
    kernel = model.get_layer("fc1").kernel
    w = np.array(kernel)
    w[: w.shape[0] // 2] = 0.0
    kernel.assign(w)
    rows = {r["layer"]: r for r in report.layer_sparsity(model)}
    fc1 = rows["fc1"]
    assert fc1["params"] == 64 * 32 + 32
    assert fc1["nonzero"] == np.count_nonzero(w) + np.count_nonzero(np.array(model.get_layer("fc1").bias))
    assert report.count_params(model) == model.count_params()
    assert report.count_nonzero(model) < report.count_params(model)


def test_model_report_accuracy_and_sizes(mlp_file):
    from compress import io

    path, ds = mlp_file
    model = io.load_model(path)
    r = report.model_report(model, ds, latency=True, path=path)
    acc = float(np.mean(np.argmax(model.predict(ds.x_test, verbose=0), -1) == ds.y_test))
    assert abs(r["accuracy"] - acc) < 1e-9
    assert r["file_bytes"] == path.stat().st_size
    assert 0 < r["zipped_bytes"] < r["file_bytes"]
    assert r["latency_ms"] > 0


def test_zeros_compress_better(tmp_path):
    dense = tmp_path / "dense.bin"
    sparse = tmp_path / "sparse.bin"
    w = np.random.default_rng(0).standard_normal(10000).astype("float32")
    dense.write_bytes(w.tobytes())
    w[np.abs(w) < 1.5] = 0
    sparse.write_bytes(w.tobytes())
    assert report.zipped_size(sparse) < 0.3 * report.zipped_size(dense)


def test_the_zipped_size_depends_on_the_bytes_not_the_files_name(tmp_path):
    # quantize measures its artifact as a temporary "model.tflite"; inspect measures the
    # output under the user's name: the same bytes must read the same size.
    content = np.random.default_rng(1).integers(0, 4, 5000, dtype=np.uint8).tobytes()
    short, long = tmp_path / "m.tflite", tmp_path / ("a-much-longer-output-name" * 4 + ".tflite")
    short.write_bytes(content)
    long.write_bytes(content)
    assert report.zipped_size(short) == report.zipped_size(long)


def test_a_counter_is_not_a_zero_weight_but_an_int8_code_is():
    # Normalization keeps an int64 sample count (0 after adapt): an untouched model read
    # "0.7% sparse". A Keras int8 kernel's zero codes are pruned weights, and still count.
    import keras

    x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(x)
    model = keras.Sequential([keras.Input((6,)), norm,
                              keras.layers.Dense(4, bias_initializer="ones", name="fc")])
    assert any(w.dtype == "int64" and not np.asarray(w).any() for w in norm.weights)
    r = report.model_report(model, latency=False)
    assert r["params"] == model.count_params() and r["nonzero"] == r["params"]
    assert {row["layer"]: row["sparsity"] for row in r["layers"]} == {"norm": 0.0, "fc": 0.0}
    codes = keras.Variable(np.array([[0, 3], [0, -2]], dtype="int8"), dtype="int8",
                           trainable=False)
    assert report._nonzero(codes) == 2


def test_the_outputs_of_a_two_headed_model_read_like_a_single_outputs_rows():
    before = {"name": "before", "metrics": {"cls accuracy": 0.575, "reg mse": 0.2,
                                            "auc": 0.9}}
    after = {"name": "after", "metrics": {"cls accuracy": 0.55, "reg mse": 0.25,
                                          "auc": 0.8}}
    rows = {row[0]: row[1:] for row in report.table_rows([before, after])}
    assert rows["cls accuracy"] == ["57.50%", "55.00%", "-2.50 pts"]  # was 0.575, no change
    assert rows["reg MSE"] == ["0.2", "0.25", "1.25x"]
    assert rows["auc"] == ["0.9", "0.8", ""]  # no direction assumed


def test_tables_and_plot(tmp_path):
    before = {"name": "before", "params": 100, "nonzero": 100, "zipped_bytes": 4000,
              "accuracy": 0.9}
    after = {"name": "after", "params": 100, "nonzero": 10, "zipped_bytes": 1000,
             "accuracy": 0.89}
    md = report.markdown_table([before, after])
    assert "| nonzero | 100 | 10 | 0.10x |" in md
    assert "-1.00 pts" in md
    png = report.plot_reports([before, after], tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cpu_info_reads_int8_dot_product_instructions(tmp_path):
    from compress.quantization import latency_note
    from compress.report import cpu_info

    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n")
    vnni = tmp_path / "vnni"
    vnni.write_text("model name\t: Xeon\nflags\t\t: avx2 fma avx512f avx512_vnni\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm asimddp\n")
    assert cpu_info(x86) == {"name": "AMD EPYC", "features": ["avx2", "fma"],
                             "int8_dot_product": False}
    assert cpu_info(vnni)["int8_dot_product"] is True
    assert cpu_info(arm)["int8_dot_product"] is True
    assert cpu_info(tmp_path / "missing")["int8_dot_product"] is None
    slow = latency_note(1.5, cpu_info(x86))
    assert "1.50x" in slow and "AMD EPYC" in slow and "no 8-bit dot-product" in slow
    assert "no 8-bit" not in latency_note(1.2, cpu_info(vnni))
    assert latency_note(0.5, cpu_info(x86)) is None


def test_model_report_times_a_model_with_two_inputs():
    import keras

    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    out = keras.layers.Dense(2)(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], out)
    info = report.model_report(model)
    assert info["params"] == 7 * 2 + 2
    assert info["latency_ms"] > 0


def test_keras_and_deployed_runtime_latencies_are_rows_of_their_own():
    # A recipe's table put a LiteRT latency beside Keras's predict and credited the
    # compression with the difference ("0.05x" for an int8 file 0.35x its float one).
    from compress.report import table_rows

    reports = [{"latency_ms": 0.7}, {"latency_ms": 0.8}, {"runtime_latency_ms": 0.04}]
    rows = {row[0]: row[1:] for row in table_rows(reports)}
    assert rows["latency b=1 (Keras)"] == ["0.700 ms", "0.800 ms", "-", ""]
    assert rows["latency b=1 (deployed runtime)"] == ["-", "-", "0.040 ms", ""]
    reports.append({"runtime_latency_ms": 0.02})  # two artifacts: compared with each other
    assert {row[0]: row[-1] for row in table_rows(reports)}[
        "latency b=1 (deployed runtime)"] == "0.50x"


def test_paired_latency_times_both_models_in_turns():
    # before/after latencies are timed in alternating rounds, so that load from other work
    # on the machine falls on both (timed minutes apart, their ratio swung 0.47x-0.89x for
    # the same two models)
    import keras

    small = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    large = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2048),
                              keras.layers.Dense(2048), keras.layers.Dense(4)])
    first, second = report.paired_latency_ms(small, large, runs=10, rounds=5)
    assert 0 < first < second  # each median is its own model's
