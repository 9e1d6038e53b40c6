"""The CLI skeleton: fast help, version, inspect and export, one-line errors."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import file_digest


def test_help_does_not_import_tensorflow():
    code = ("import sys; from compress.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TF', 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "TF False False" in out.stdout
    assert "inspect" in out.stdout and "export" in out.stdout


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and "compress, version" in result.output


def test_inspect_json(cli, mlp_file):
    path, _ = mlp_file
    result = cli("inspect", path, "--data", "digits", "--json", "--no-latency")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["params"] == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    assert 0.5 < data["accuracy"] <= 1.0
    assert {r["layer"] for r in data["layers"]} == {"fc1", "fc2", "predictions"}


def test_inspect_h5_table(cli, cnn_file):
    result = cli("inspect", cnn_file[0], "--no-latency")
    assert result.exit_code == 0
    assert "zipped size" in result.output and "conv1" in result.output


def test_inspect_bad_inputs_are_one_line_exit_1(cli, tmp_path, mlp_file):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    cut = tmp_path / "cut.keras"
    cut.write_bytes(mlp_file[0].read_bytes()[:500])
    for path, words in ((tmp_path / "missing.keras", "no such file"),
                        (text, "not an HDF5 file"), (cut, "corrupt")):
        result = cli("inspect", path)
        assert result.exit_code == 1
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]
        assert "Traceback" not in result.output


def test_export_onnx_and_refuse_overwrite(cli, tmp_path, cnn_file):
    path, _ = cnn_file
    digest = file_digest(path)
    out = tmp_path / "cnn.onnx"
    result = cli("export", path, "-o", out, "--data", "digits", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["max_abs_diff"] <= 1e-4 and data["top1_agreement"] == 1.0
    again = cli("export", path, "-o", out, "--data", "digits")
    assert again.exit_code == 1 and "already exists; pass --force" in again.stderr
    assert file_digest(path) == digest


def test_export_precision_fp16_writes_a_half_onnx_measured_against_float(cli, tmp_path,
                                                                        cnn_file):
    import onnx

    path, _ = cnn_file
    out = tmp_path / "cnn-fp16.onnx"
    result = cli("export", path, "-o", out, "--precision", "fp16", "--data", "digits",
                 "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mode"] == "float16" and data["format"] == "onnx"
    assert data["top1_agreement"] >= 0.98
    kinds = {t.data_type for t in onnx.load(str(out)).graph.initializer if len(t.dims) >= 2}
    assert kinds == {onnx.TensorProto.FLOAT16}
    both = cli("export", path, "-o", tmp_path / "x.onnx", "--precision", "fp16",
               "--quantize", "int8", "--data", "digits")
    assert both.exit_code == 1 and "two different artifacts" in both.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_an_export_without_data_says_its_check_ran_on_random_inputs(cli, tmp_path, cnn_file):
    # A top-1 agreement on seeded noise is a weaker check than one on the data: the
    # success line must say which it was.
    path, _ = cnn_file
    plain = cli("export", path, "-o", tmp_path / "a.onnx")
    assert plain.exit_code == 0, plain.output
    assert re.search(r"verified on \d+ random inputs \(no --data\)", plain.output)
    listed = json.loads(cli("export", path, "-o", tmp_path / "b.onnx", "--json").stdout)
    assert listed["random_check_inputs"] is True
    half = cli("export", path, "-o", tmp_path / "c.onnx", "--precision", "fp16")
    assert half.exit_code == 0, half.output
    assert re.search(r"verified against Keras on \d+ random inputs, no --data:",
                     " ".join(half.output.split()))
    real = cli("export", path, "-o", tmp_path / "d.onnx", "--data", "digits")
    assert real.exit_code == 0 and "random" not in real.output


def test_a_failure_after_the_output_is_written_leaves_no_output(cli, tmp_path, mlp_file,
                                                                monkeypatch):
    # The report is measured on the written file; a command that fails there exits 1
    # and must not leave the output behind as if it had succeeded.
    from compress import report

    measured = report.model_report

    def failing(*args, **kwargs):
        if kwargs.get("path"):  # the written output's own report
            raise RuntimeError("measuring failed")
        return measured(*args, **kwargs)

    monkeypatch.setattr(report, "model_report", failing)
    out = tmp_path / "pruned.keras"
    result = cli("prune", mlp_file[0], "-o", out, "--sparsity", "0.5", "--data", "digits")
    assert result.exit_code == 1 and "measuring failed" in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_json_is_strict_when_a_check_is_exact(cli, tmp_path):
    # An artifact that reproduces Keras exactly has an infinite SQNR: JSON has no Infinity
    # (JavaScript, Go and strict Python parsers refuse it), so it is written null.
    import keras

    model = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(2, kernel_initializer="ones", name="sums")])
    model.save(tmp_path / "exact.keras")
    x = (np.arange(256, dtype="float32").reshape(64, 4) % 5)
    np.savez(tmp_path / "x.npz", x_train=x)
    result = cli("export", tmp_path / "exact.keras", "-o", tmp_path / "exact.onnx",
                 "--data", f"npz:{tmp_path / 'x.npz'}", "--json")
    assert result.exit_code == 0, result.output

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    printed = json.loads(result.stdout, parse_constant=refuse)
    assert printed["max_abs_diff"] == 0.0 and printed["sqnr_db"] is None


LATE_CTRL_C = """
import os, signal, sys, threading, time
from compress.cli import entry
sys.argv = ["compress", "--version"]
threading.Thread(target=time.sleep, args=(1.0,)).start()  # the interpreter waits at exit
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
entry()
"""


def test_a_ctrl_c_after_the_command_finished_does_not_undo_its_success():
    # The signal lands while the interpreter shuts down (TensorFlow's exit handlers take a
    # moment): it printed a KeyboardInterrupt traceback, or exited 130 with the output
    # written and the report printed.
    proc = subprocess.run([sys.executable, "-c", LATE_CTRL_C], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and "compress, version" in proc.stdout
    assert "KeyboardInterrupt" not in proc.stderr, proc.stderr


def test_export_usage_error_is_exit_2(cli, cnn_file, tmp_path):
    result = cli("export", cnn_file[0], "--format", "coreml", "-o", tmp_path / "x.onnx")
    assert result.exit_code == 2


def test_output_equal_to_input_refused(cli, cnn_file):
    path, _ = cnn_file
    result = cli("export", path, "-o", path, "--format", "onnx", "--force")
    assert result.exit_code == 1


# A refusal that needs no TensorFlow must not wait for it (importing it takes 10 s or more
# on a loaded machine): options, the data a pass needs, the output path, a missing input
# and an unknown dataset are all checked first. One fresh interpreter runs every refusal
# and reports, after each, its exit code, its stderr and whether TensorFlow or Keras came in.
REFUSED_WITHOUT_TENSORFLOW = [
    (["prune", "{model}", "-o", "{out}/p.keras", "--sparsity", "1.0"], "--sparsity"),
    (["prune", "{model}", "-o", "{model}"], "is the input"),
    (["prune", "{model}", "-o", "{existing}"], "already exists"),
    (["prune", "{model}", "-o", "{out}/p.keras", "--method", "obd"], "--data"),
    (["prune", "{model}", "-o", "{out}/p.keras", "--data", "cifar10"], "unknown dataset"),
    (["prune", "{out}/missing.keras", "-o", "{out}/p.keras"], "no such file"),
    (["prune", "{model}", "-o", "{out}/p.keras", "--keep-last-good", "{out}/p.keras"],
     "--keep-last-good"),
    (["prune", "{model}", "-o", "{out}/" + "n" * 300 + ".keras"], "file name is 306 bytes"),
    (["share", "{model}", "-o", "{out}/s.keras", "--factor", "0"], "--factor"),
    (["share", "{model}", "-o", "{out}/no/such/s.keras", "--method", "kmeans"],
     "does not exist"),
    (["quantize", "{model}", "-o", "{out}/q.tflite"], "--data"),
    (["quantize", "{model}", "-o", "{out}/q.bin", "--mode", "dynamic"], ".bin"),
    (["export", "{model}", "-o", "{out}/e.onnx", "--atol", "-1"], "--atol"),
    (["distill", "{model}", "-o", "{out}/d.keras"], "--data"),
    (["distill", "{model}", "-o", "{out}/d.keras", "--data", "digits", "--student",
      "{out}/nobody.keras"], "no such file"),
    (["cascade", "resnet9000", "-o", "{out}/c.keras", "--data", "digits"], "resnet9000"),
    (["cascade", "lenet300", "-o", "{out}/c.keras", "--data", "npz:{out}/none.npz"],
     "no such data file"),
    (["inspect", "{model}", "--data", "cifar10"], "unknown dataset"),
    (["run", "{out}/none.yaml", "-o", "{out}/r"], "no such recipe"),
    (["run", "{recipe}", "-o", "{out}/r"], "unknown recipe key"),
]

_REFUSE_IN_ONE_PROCESS = """
import json, sys
from compress.cli import main
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code
    print(json.dumps([code, "tensorflow" in sys.modules or "keras" in sys.modules]),
          flush=True)
"""


def test_refusals_answer_without_importing_tensorflow(tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes(b"not loaded: every case is refused before the model is read")
    existing = tmp_path / "existing.keras"
    existing.write_bytes(b"x")
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("model: lenet300\ndata: digits\nstepz: []\n")
    names = {"model": model, "existing": existing, "out": tmp_path, "recipe": recipe}
    argvs = [[a.format(**names) for a in argv] for argv, _ in REFUSED_WITHOUT_TENSORFLOW]
    proc = subprocess.run([sys.executable, "-c", _REFUSE_IN_ONE_PROCESS, json.dumps(argvs)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-1000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(results) == len(errors) == len(argvs), proc.stderr
    for (argv, words), (code, imported), error in zip(REFUSED_WITHOUT_TENSORFLOW, results,
                                                      errors):
        assert code == 1 and error.startswith("error: ") and words in error, (argv, error)
        assert not imported, f"{' '.join(argv)}: TensorFlow was imported to refuse it"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.keras", "model.keras",
                                                          "typo.yaml"]


def test_the_longest_legal_output_name_is_written(cli, mlp_file, tmp_path):
    """The temporary file's name was the output's plus 16 bytes: a 251-byte name failed
    with "File name too long" after all the work was done."""
    import os

    name = "n" * (os.pathconf(tmp_path, "PC_NAME_MAX") - len(".keras")) + ".keras"
    result = cli("prune", mlp_file[0], "-o", tmp_path / name, "--sparsity", "0.5", "--json")
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_names_that_are_not_utf8_are_read_written_and_printed(tmp_path, mlp_file):
    """Such a name reaches Python with lone surrogates; printing it to stdout raised
    "unexpected UnicodeEncodeError" after the output was written."""
    import os
    import shutil

    folder = os.fsencode(tmp_path)
    model = folder + b"/model-\xff.keras"
    shutil.copyfile(mlp_file[0], model)
    out = folder + b"/pruned-\xe9t\xe9.keras"
    # stdout strict UTF-8, as under a desktop's UTF-8 locale (a C locale escapes instead);
    # wide columns: no wrapped lines
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONIOENCODING="utf-8:strict",
               COLUMNS="500")
    # one process (one TensorFlow start-up) runs both commands, as `compress` would,
    # each with the names as they arrive in argv
    script = ("import sys\nfrom compress.cli import main\n"
              "i = sys.argv.index('::')\n"
              "for argv in (sys.argv[1:i], sys.argv[i + 1:]):\n"
              "    main(argv, standalone_mode=False)\n")
    proc = subprocess.run([sys.executable, "-c", script, "prune", model, "-o", out,
                           "--sparsity", "0.5", "::", "inspect", out, "--no-latency"],
                          capture_output=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert b"wrote " + out in proc.stdout
    assert sorted(os.listdir(folder)) == [b"model-\xff.keras", b"pruned-\xe9t\xe9.keras"]
    table = proc.stdout.split(b"wrote " + out, 1)[1]  # what inspect printed
    # the table's title, its own bytes (a long temporary path wraps over several lines)
    assert b"pruned-\xe9t\xe9" in b"".join(table.split())


@pytest.mark.slow
def test_demo_quick_runs_the_shipped_recipe(cli, tmp_path):
    """`make demo` runs `compress demo`: the shipped demo recipe through the recipe runner."""
    out = tmp_path / "demo"
    result = cli("demo", "--quick", "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "finished"
    kinds = {step["kind"] for step in report["steps"]}
    assert kinds == {"prune", "share", "distill", "quantize", "export"}
    for step in report["steps"]:
        assert Path(step["artifact"]).stat().st_size > 0
    # every exported or quantized artifact was measured in its runtime on the test split
    measured = [s["after"] for s in report["steps"] if s["kind"] in ("export", "quantize")]
    assert all(0.0 < r["accuracy"] <= 1.0 for r in measured)


def test_progress_is_plain_lines_on_stderr_and_json_stays_pure(cli, tmp_path, mlp_file,
                                                               monkeypatch):
    """With progress on (a terminal, or COMPRESS_PROGRESS=1 as here): a first line before
    TensorFlow loads, the phases, one plain line per epoch with its loss and an ETA, on
    stderr only; --quiet silences it; stdout is the JSON alone."""
    from compress import progress

    path, _ = mlp_file
    monkeypatch.setenv("COMPRESS_PROGRESS", "1")
    try:
        result = cli("prune", path, "-o", tmp_path / "p.keras", "--sparsity", "0.5",
                     "--data", "digits", "--epochs", "2", "--json")
        assert result.exit_code == 0, result.output
        json.loads(result.stdout)  # nothing else on stdout
        lines = result.stderr.splitlines()
        assert lines[0] == f"compress: loading: {path}"  # what is loaded, first
        assert lines[1] == "compress: starting TensorFlow"
        assert any("masks to 50.0% sparsity" in line for line in lines)
        epochs = [line for line in lines if "training: epoch" in line]
        assert [e.split("epoch ")[1].split(",")[0] for e in epochs] == ["1/2", "2/2"]
        assert "loss " in epochs[0] and ", ETA" in epochs[0] and ", ETA" not in epochs[1]
        assert "\x1b" not in result.stderr  # no escape codes
        quiet = cli("prune", path, "-o", tmp_path / "q.keras", "--sparsity", "0.5",
                    "--data", "digits", "--epochs", "1", "--json", "--quiet")
        assert quiet.exit_code == 0 and not quiet.stderr.strip()
    finally:
        progress.set_on(False)
