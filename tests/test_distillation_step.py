"""compress.distillation.step: the one distill step that `compress distill` and recipes run."""

from __future__ import annotations

import keras
import pytest

from compress.errors import CompressError
from compress.recipes import run_recipe


def _recipe(mlp_file, steps, **extra):
    return {"model": str(mlp_file[0]), "data": "digits", "seed": 0, "steps": steps, **extra}


def test_recipe_distill_trains_the_baseline_unless_told_not_to(mlp_file, tmp_path):
    result = run_recipe(_recipe(mlp_file, [
        {"distill": {"width": 0.5, "epochs": 1}},
        {"distill": {"width": 0.5, "epochs": 1, "baseline": False}}]), output=tmp_path / "out")
    with_baseline, without = (step["info"] for step in result["steps"])
    assert 0.0 <= with_baseline["student_alone_accuracy"] <= 1.0
    assert "gap_closed" in with_baseline
    assert "student_alone_accuracy" not in without and "gap_closed" not in without


def _lambda_student(path):
    model = keras.Sequential([keras.Input((8, 8, 1)),
                              keras.layers.Lambda(lambda t: t * 1.0, name="scale"),
                              keras.layers.Flatten(),
                              keras.layers.Dense(12, activation="relu", name="hidden"),
                              keras.layers.Dense(10, activation="softmax")], name="lambda")
    model.save(path)
    return path


def test_recipe_distill_loads_the_student_file_with_the_users_unsafe(mlp_file, tmp_path):
    student = _lambda_student(tmp_path / "lambda_student.keras")
    steps = [{"distill": {"student": str(student), "epochs": 1, "baseline": False}}]
    with pytest.raises(CompressError, match="Lambda"):
        run_recipe(_recipe(mlp_file, steps), output=tmp_path / "safe")
    # The recipe's own `unsafe: true` is not enough: only the user's --unsafe turns it off.
    with pytest.raises(CompressError, match="cannot turn Keras safe mode off by itself"):
        run_recipe(_recipe(mlp_file, steps, unsafe=True), output=tmp_path / "asked")
    result = run_recipe(_recipe(mlp_file, steps, unsafe=True), output=tmp_path / "unsafe",
                        unsafe=True)
    info = result["steps"][0]["info"]
    assert info["student_source"] == str(student) and info["student_params"] < \
        keras.models.load_model(mlp_file[0]).count_params()
