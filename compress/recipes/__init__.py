"""YAML recipes: a model, data and an ordered chain of passes, rerunnable as one unit.

A recipe is read with safe loading and a budget on what its YAML aliases expand to
(:mod:`compress.recipes.yaml_reader`) and validated in full before anything runs
(:mod:`compress.recipes.checks`); ``--set`` overrides use a small path language
(:mod:`compress.recipes.overrides`); the runner (:mod:`compress.recipes.runner`) runs
each step's pass from the registry and writes a report. The demo behind ``compress demo``
is a recipe shipped in this package (``demo.yaml``).

Example recipe::

    name: han2015
    seed: 0
    data: mnist5k
    model: lenet300            # a builder name (trains the dense baseline first) or a file
    baseline: {epochs: 30, learning_rate: 0.001, callbacks: {early_stopping: {patience: 5}}}
    steps:
      - prune: {method: magnitude, sparsity: 0.9, schedule: gradual, epochs: 10}
      - quantize: {mode: int8}
      - export: {format: onnx, from: baseline}   # from the baseline, not the previous step

Example:

>>> from compress.recipes import run_recipe
>>> result = run_recipe("recipes/han2015.yaml", output="out/han", overrides=[
...     "steps[0].prune.sparsity=0.95"])                                # doctest: +SKIP
"""

from pathlib import Path

from compress.recipes.checks import TOP_LEVEL, load_recipe, step_kinds, validate_recipe
from compress.recipes.overrides import apply_override
from compress.recipes.runner import run_recipe

DEMO = Path(__file__).resolve().parent / "demo.yaml"

__all__ = ["DEMO", "TOP_LEVEL", "apply_override", "load_recipe", "run_recipe", "step_kinds",
           "validate_recipe"]
