"""The override language of ``compress run --set PATH=VALUE`` and a recipe's ``quick`` form.

A path names a field by keys and list indexes (``steps[0].prune.sparsity``); the value is
read as YAML, so ``0.95`` is a number, ``true`` a boolean and ``[a, b]`` a list.

Example:

>>> recipe = {"steps": [{"prune": {"sparsity": 0.9}}]}
>>> apply_override(recipe, "steps[0].prune.sparsity=0.95")
>>> recipe["steps"][0]["prune"]["sparsity"]
0.95
>>> apply_override(recipe, "steps[3].prune.sparsity=1")
Traceback (most recent call last):
...
compress.errors.CompressError: --set steps[3].prune.sparsity: no item [3]
"""

from __future__ import annotations

import re

from compress.errors import CompressError

_PATH_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def apply_override(recipe: dict, assignment: str) -> None:
    """Apply ``steps[0].prune.sparsity=0.95`` (the value is parsed as YAML) in place."""
    import yaml

    if "=" not in assignment:
        raise CompressError(f"--set {assignment}: must look like PATH=VALUE")
    path, raw = assignment.split("=", 1)
    tokens = []
    for part in path.strip().split("."):
        for m in _PATH_TOKEN.finditer(part):
            tokens.append(m.group(1) if m.group(1) else int(m.group(2)))
    if not tokens:
        raise CompressError(f"--set {assignment}: empty path")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node = recipe
    for i, tok in enumerate(tokens[:-1]):
        nxt = tokens[i + 1]
        if isinstance(tok, int):
            if not isinstance(node, list) or tok >= len(node):
                raise CompressError(f"--set {path}: no item [{tok}]")
            node = node[tok]
        else:
            if not isinstance(node, dict):
                raise CompressError(f"--set {path}: '{tok}' is not a mapping")
            node = node.setdefault(tok, [] if isinstance(nxt, int) else {})
    last = tokens[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise CompressError(f"--set {path}: no item [{last}]")
        node[last] = value
    else:
        if not isinstance(node, dict):
            raise CompressError(f"--set {path}: parent is not a mapping")
        node[last] = value
