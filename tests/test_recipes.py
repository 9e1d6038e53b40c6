"""compress.recipes: validation by field path, overrides, runs, failure reports, fuzzing."""

import json
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compress.errors import CompressError
from compress.recipes import DEMO, apply_override, load_recipe, run_recipe

# The shipped recipes, and the demo's (inside the package: `compress demo` runs it).
RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


def test_there_are_shipped_recipes():
    names = {p.stem for p in RECIPES}
    assert {"han2015-lenet300", "obd-vs-magnitude", "hashednets-1-8", "deep-compression",
            "hinton-distillation", "cascade-animals", "edge-deployment",
            "gpu-deployment"} <= names


@pytest.mark.parametrize("path", RECIPES + [DEMO], ids=lambda p: p.stem)
def test_shipped_recipes_validate_full_and_quick(path):
    full = load_recipe(path)
    quick = load_recipe(path, quick=True)
    assert full["steps"] and quick["steps"]
    assert quick.get("subset") is not None
    header = path.read_text().splitlines()[0]
    assert header.startswith("# ")  # the paper's number is stated in the header comment


def _base():
    return {"model": "lenet300", "data": "digits", "seed": 0,
            "steps": [{"prune": {"sparsity": 0.5}}, {"quantize": {"mode": "int8"}}]}


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r["steps"][1]["quantize"].update(mode="int3"),
     ("steps[1].quantize.mode: must be one of int8, dynamic, float16, keras-int8, "
      "keras-int4, int4, gptq, awq")),
    (lambda r: r["steps"][0]["prune"].update(sparsty=0.5), "steps[0].prune.sparsty: unknown"),
    (lambda r: r["steps"][0]["prune"].update(sparsity=1.5), "steps[0].prune.sparsity: must be"),
    (lambda r: r["steps"][0]["prune"].update(sparsity="high"),
     "steps[0].prune.sparsity: must be a number"),
    (lambda r: r["steps"].append({"compress": {}}), "steps[2].compress: unknown step"),
    (lambda r: r.update(modle="x"), "modle: unknown recipe key"),
    (lambda r: r.pop("model"), "model: missing"),
    (lambda r: r.update(steps=[]), "steps: must be a non-empty list"),
    (lambda r: r.update(seed="zero"), "seed: must be an integer"),
    (lambda r: r["steps"].append({"train": {"callbacks": {"early_stop": {}}}}),
     "steps[2].train.callbacks"),
    (lambda r: r["steps"][0]["prune"].update(callbacks={"cosine": {}}),
     "steps[0].prune.callbacks: only"),
    (lambda r: r.pop("data"), "needs data"),
    (lambda r: r.update(data="digitz"), "data: 'digitz' is not a dataset"),
    (lambda r: r["steps"].append({"export": {"format": "coreml"}}),
     "steps[2].export.format: must be one of onnx, tflite"),
    # Every step's data rule is its pass's own (compress.passes), so --check catches what
    # the run would: this one passed the check and failed mid-run.
    (lambda r: r.pop("data") and r.update(model=__file__, steps=[
        {"prune": {"scope": "sensitivity"}}]),
     "steps[0].prune: scope sensitivity needs data (set 'data' at the top level)"),
    (lambda r: r.pop("data") and r.update(model=__file__, steps=[
        {"share": {"method": "kmeans", "epochs": 2}}]),
     "steps[0].share: epochs 2 needs data"),
    (lambda r: r["steps"][0]["prune"].update({"from": "start"}),
     "steps[0].prune.from: must be one of previous, baseline"),
    (lambda r: r.update(unsafe=True), "unsafe: a recipe cannot turn Keras safe mode off"),
    (lambda r: r["steps"][0]["prune"].update(unsafe=True),
     "steps[0].prune.unsafe: not a recipe step option (pass --unsafe to compress run)"),
    (lambda r: r["steps"].append({"distill": {"student": "no/such.keras"}}),
     "steps[2].distill.student: no/such.keras: no such file"),
])
def test_errors_name_the_field(mutate, message):
    recipe = _base()
    mutate(recipe)
    with pytest.raises(CompressError) as err:
        load_recipe(recipe)
    assert message in str(err.value)


def test_check_refuses_sensitivity_without_data_on_the_command_line(cli, mlp_file,
                                                                     tmp_path):
    path = tmp_path / "sensitivity.yaml"
    path.write_text(f"model: {mlp_file[0]}\nsteps:\n  - prune: {{scope: sensitivity}}\n")
    result = cli("run", path, "--check")
    assert result.exit_code == 1
    assert "steps[0].prune: scope sensitivity needs data" in result.stderr


@pytest.mark.parametrize("data, step, message", [
    ("npz:nope.npz", "{prune: {sparsity: 0.5}}", "data: nope.npz: no such data file"),
    ("digits", "{prune: {schedule: gradual, epochs: 0}}",
     "steps[0].prune: the gradual schedule trains; give epochs >= 1"),
])
def test_check_refuses_what_run_would_refuse(cli, mlp_file, tmp_path, data, step, message):
    """--check said 'valid' for a missing data file and for a gradual prune without
    epochs; run refused them, one after the data had been read."""
    path = tmp_path / "r.yaml"
    path.write_text(f"model: {mlp_file[0]}\ndata: {data}\nsteps:\n  - prune: {{}}\n"
                    .replace("prune: {}", step[1:-1]))
    for args in (["--check"], ["-o", str(tmp_path / "out")]):
        result = cli("run", path, *args)
        assert result.exit_code == 1, result.output
        assert message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_a_recipe_seed_reaches_every_pass_with_a_seed_option():
    recipe = _base()
    recipe["seed"] = 7
    recipe["steps"].append({"share": {"method": "hash", "seed": 3}})
    out = load_recipe(recipe)
    assert out["steps"][0]["prune"]["seed"] == 7 and out["steps"][1]["quantize"]["seed"] == 7
    assert out["steps"][2]["share"]["seed"] == 3  # a step's own seed wins


def test_unsafe_recipe_needs_the_users_flag():
    recipe = {**_base(), "unsafe": True}
    assert load_recipe(recipe, unsafe=True)["unsafe"] is True
    assert load_recipe(_base(), unsafe=True)["unsafe"] is True  # the user's flag holds


def test_typo_in_a_file_fails_with_the_path(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("model: lenet300\ndata: digits\nsteps:\n  - prune: {sparsity: 0.5}\n"
                    "  - quantise: {mode: int8}\n")
    with pytest.raises(CompressError, match=r"steps\[1\].quantise: unknown step"):
        load_recipe(path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(CompressError, match="not valid YAML at line"):
        load_recipe(bad)


def test_overrides():
    recipe = _base()
    apply_override(recipe, "steps[0].prune.sparsity=0.95")
    apply_override(recipe, "steps[1].quantize.mode=dynamic")
    apply_override(recipe, "seed=7")
    out = load_recipe(recipe)
    assert out["steps"][0]["prune"]["sparsity"] == 0.95
    assert out["steps"][1]["quantize"]["mode"] == "dynamic"
    assert out["seed"] == 7
    with pytest.raises(CompressError, match="no item"):
        apply_override(_base(), "steps[5].prune.sparsity=0.1")
    with pytest.raises(CompressError, match="PATH=VALUE"):
        apply_override(_base(), "steps[0].prune.sparsity")


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("model: !!python/object/apply:os.system ['echo hacked']\nsteps: []\n")
    with pytest.raises(CompressError, match=r"line 1: '!!python/object/apply:os.system' is a "
                                            "Python tag, refused"):
        load_recipe(path)
    path.write_text("model: !custom 1\nsteps: []\n")
    with pytest.raises(CompressError, match="unknown YAML tag '!custom'"):
        load_recipe(path)


def _alias_bomb(levels: int) -> str:
    """Each level lists the previous one nine times: 9**levels values from a few lines."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"] + [
        f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return ("model: lenet300\ndata: digits\n" + "\n".join(lines)
            + f"\nsteps:\n  - prune: {{sparsity: *l{levels}}}\n")


def _flow_alias_bomb(levels: int) -> str:
    """The same in one line, for --set."""
    return "[&l0 [x, x, x, x, x, x, x, x, x], " + ", ".join(
        f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels + 1)) + "]"


@pytest.mark.parametrize("levels", [4, 6])
def test_a_yaml_alias_bomb_is_refused_before_it_is_built(tmp_path, levels):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(levels))
    assert path.stat().st_size < 1000
    with pytest.raises(CompressError) as err:
        load_recipe(path)
    assert "aliases expand to more than 10000 values" in str(err.value)
    assert len(str(err.value)) < 200


def test_a_recursive_alias_and_deep_nesting_are_one_line(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("model: lenet300\nsteps: &s [*s]\n")
    with pytest.raises(CompressError, match="refers to a value that contains it"):
        load_recipe(path)
    path.write_text("model: lenet300\nsteps: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(CompressError, match="nested too deeply"):
        load_recipe(path)


def test_values_quoted_in_errors_are_cut_short():
    recipe = _base()
    recipe["steps"][0]["prune"]["sparsity"] = [list(range(1000))] * 1000
    recipe["data"] = {"name": "x" * 10_000}
    for mutate in (lambda r: r, lambda r: r.update(data="digits")):
        mutate(recipe)
        with pytest.raises(CompressError) as err:
            load_recipe(recipe)
        assert len(str(err.value)) < 160 and "..." in str(err.value)


def test_recipe_file_problems_are_named(tmp_path):
    loop = tmp_path / "loop.yaml"
    os.symlink(loop.name, loop)
    with pytest.raises(CompressError, match="symbolic link loop"):
        load_recipe(loop)
    big = tmp_path / "big.yaml"
    big.write_text("description: " + "x" * 2**21 + "\n")
    with pytest.raises(CompressError, match="too large for a recipe"):
        load_recipe(big)


def test_override_paths_are_read_strictly():
    with pytest.raises(CompressError, match=r"steps\[-1\].prune.sparsity: negative indexes "
                                            r"such as \[-1\] are not supported"):
        apply_override(_base(), "steps[-1].prune.sparsity=0.5")
    with pytest.raises(CompressError, match=r"steps is a list \(index it with \[N\]\), so it "
                                            "has no key 'prune'"):
        apply_override(_base(), "steps.prune.sparsity=0.5")
    with pytest.raises(CompressError, match="cannot read the path at 'prune'"):
        apply_override(_base(), "steps[0]prune=0.5")
    with pytest.raises(CompressError, match="aliases expand"):
        apply_override(_base(), "seed=" + _flow_alias_bomb(6))
    recipe = {"steps": [{"prune": None}]}  # a step written without options
    apply_override(recipe, "steps[0].prune.sparsity=0.5")
    assert recipe == {"steps": [{"prune": {"sparsity": 0.5}}]}


def test_a_seed_outside_numpys_range_is_refused():
    for seed in (-1, 2**32):
        with pytest.raises(CompressError, match=r"seed: must be in \[0, 4294967295\]"):
            load_recipe({**_base(), "seed": seed})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["model", "data", "steps", "prune", "sparsity", "seed",
                                       "quantize", "mode", "share", "x", "callbacks"]),
                      children, max_size=4),
    max_leaves=12))
def test_fuzzed_recipes_never_crash_with_a_traceback(doc):
    text = yaml.safe_dump(doc)
    try:
        load_recipe(yaml.safe_load(text) if isinstance(doc, dict) else doc)
    except CompressError as err:
        assert "\n" not in str(err)
    except Exception as exc:  # noqa: BLE001 - anything else is a crash with a traceback
        pytest.fail(f"{type(exc).__name__} escaped the validator: {exc}")


@pytest.mark.slow
def test_run_writes_reports_and_artifacts(tmp_path):
    recipe = {"name": "tiny", "model": "lenet300", "data": "digits", "seed": 0,
              "baseline": {"epochs": 2}, "subset": 300,
              "steps": [{"prune": {"sparsity": 0.8}}, {"export": {"format": "tflite"}}]}
    result = run_recipe(recipe, output=tmp_path / "out")
    out = tmp_path / "out"
    assert result["status"] == "finished"
    report = json.loads((out / "report.json").read_text())
    assert [s["kind"] for s in report["steps"]] == ["prune", "export"]
    assert report["steps"][0]["after"]["sparsity"] > 0.7
    assert (out / "step1-prune.keras").exists() and (out / "step2-export.tflite").exists()
    assert (out / "report-accuracy-size.png").read_bytes()[:4] == b"\x89PNG"
    assert "| accuracy |" in (out / "report.md").read_text()
    with pytest.raises(CompressError, match="not empty"):
        run_recipe(recipe, output=out)
    # --force replaces the files a run writes and nothing else, whatever their names.
    mine = {"report-2024-taxes.pdf": b"taxes", "stepmother.jpg": b"photo",
            "holiday.png": b"png", "steps/notes.txt": b"notes", "keep.txt": b"keep",
            "step9-prune.keras/inside.txt": b"a folder named like an artifact"}
    for name, content in mine.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(content)
    stale = out / "step3-quantize.tflite"  # an earlier, longer run's artifact
    stale.write_bytes(b"old")
    recipe["steps"] = [{"prune": {"sparsity": 0.8}},
                       {"export": {"format": "onnx", "from": "baseline"}}]
    again = run_recipe(recipe, output=out, force=True)
    for name, content in mine.items():
        assert (out / name).read_bytes() == content, name
    assert not stale.exists()
    assert (out / "step2-export.onnx").exists() and not (out / "step2-export.tflite").exists()
    # from: baseline: the export is of the dense baseline, not the pruned step before it
    assert again["steps"][1]["before"]["sparsity"] < 0.1
    # A recipe that reads one of the folder's own files (the pruned model, to go on from
    # it): --force deleted it (a longer run's name) or replaced it (the same name).
    for name in ("step1-prune.keras", "step5-prune.keras"):
        (out / name).write_bytes((out / "step1-prune.keras").read_bytes())
        before = sorted((p.name, p.read_bytes()) for p in out.iterdir() if p.is_file())
        reads = {**recipe, "model": str(out / name), "baseline": {"epochs": 0}}
        with pytest.raises(CompressError, match=f"reads {out / name} from this folder, and "
                                                "--force replaces"):
            run_recipe(reads, output=out, force=True)
        assert sorted((p.name, p.read_bytes()) for p in out.iterdir() if p.is_file()) == before


@pytest.mark.slow
def test_failure_half_way_keeps_finished_steps_and_says_where(tmp_path):
    recipe = {"name": "fails", "model": "lenet300", "data": "digits", "seed": 0,
              "baseline": {"epochs": 1}, "subset": 200,
              "steps": [{"prune": {"sparsity": 0.5}},
                        {"prune": {"sparsity": 0.5, "layers": ["no_such_layer"]}}]}
    with pytest.raises(CompressError, match=r"steps\[1\].prune"):
        run_recipe(recipe, output=tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "failed" and "steps[1].prune" in report["error"]
    assert (tmp_path / "out" / "step1-prune.keras").exists()
    assert not (tmp_path / "out" / "step2-prune.keras").exists()
    assert "failed" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipe_runs_in_quick_form(path, tmp_path):
    result = run_recipe(path, output=tmp_path / "out", quick=True)
    assert result["status"] == "finished"
    assert len(result["steps"]) == len(load_recipe(path)["steps"])
    for step in result["steps"]:
        assert Path(step["artifact"]).exists()
    # an artifact that disagrees with its float model is said at the top of the report
    # (edge-deployment's quick QAT at 89% top-1 finished without a word)
    report = (tmp_path / "out" / "report.md").read_text()
    unverified = [s["step"] for s in result["steps"] if s["info"].get("verified") is False]
    assert [w.split(":")[0] for w in result.get("warnings", [])] == unverified
    assert all(f"- **{w}**" in report for w in result.get("warnings", []))
    # the plots report.md embeds are as readable as it (they were written 0600)
    mode = (tmp_path / "out" / "report.md").stat().st_mode & 0o777
    for png in ("report-accuracy-size.png", "report-sparsity.png"):
        assert (tmp_path / "out" / png).stat().st_mode & 0o777 == mode
