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
>>> apply_override(recipe, "steps[-1].prune.sparsity=1")
Traceback (most recent call last):
...
compress.errors.CompressError: --set steps[-1].prune.sparsity: negative indexes such as [-1] are not supported; count from the start: [0], [1], ...
"""

from __future__ import annotations

import re

from compress.errors import CompressError
from compress.options import shortened
from compress.recipes.yaml_reader import read_yaml

# One step of a path: a key (after a dot, or first) or a list index.
_PATH_TOKEN = re.compile(r"(?:^|\.)([A-Za-z_][A-Za-z0-9_]*)|\[(-?\d+)\]")


def apply_override(recipe: dict, assignment: str) -> None:
    """Apply ``steps[0].prune.sparsity=0.95`` (the value is parsed as YAML) in place."""
    if "=" not in assignment:
        raise CompressError(f"--set {shortened(assignment)}: must look like PATH=VALUE")
    path, raw = assignment.split("=", 1)
    path = path.strip()
    tokens = _parse_path(path)
    try:
        value = read_yaml(raw, f"--set {shortened(path)}")
    except CompressError as exc:
        if "not valid YAML" not in str(exc):
            raise  # an alias bomb or a Python tag is refused, not taken as text
        value = raw
    node = recipe
    path = shortened(path)
    for i, tok in enumerate(tokens):
        where = _path_text(tokens[:i]) or "the recipe"
        if isinstance(tok, int):
            if not isinstance(node, list):
                raise CompressError(f"--set {path}: {where} is not a list, so it has no "
                                    f"item [{tok}]")
            if tok >= len(node):
                raise CompressError(f"--set {path}: no item [{tok}]")
        elif not isinstance(node, dict):
            kind = "a list (index it with [N])" if isinstance(node, list) else "not a mapping"
            raise CompressError(f"--set {path}: {where} is {kind}, so it has no key "
                                f"'{shortened(tok, 40)}'")
        if i == len(tokens) - 1:
            node[tok] = value
        elif isinstance(tok, int):
            node = node[tok]
        else:
            if node.get(tok) is None:  # a missing key, or a step written without options
                node[tok] = [] if isinstance(tokens[i + 1], int) else {}
            node = node[tok]


def _path_text(tokens: list) -> str:
    return "".join(f"[{t}]" if isinstance(t, int) else ("." if n else "") + t
                   for n, t in enumerate(tokens))


def _parse_path(path: str) -> list:
    """``steps[0].prune.sparsity`` -> ``['steps', 0, 'prune', 'sparsity']``; every character
    must belong to a step of the path."""
    tokens, at = [], 0
    for m in _PATH_TOKEN.finditer(path):
        if m.start() != at:
            break
        if m.group(2) is not None and m.group(2).startswith("-"):
            raise CompressError(f"--set {shortened(path)}: negative indexes such as "
                                f"[{m.group(2)}] are not supported; count from the start: "
                                "[0], [1], ...")
        tokens.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        at = m.end()
    if not path:
        raise CompressError("--set: empty path before '='")
    if at != len(path):
        raise CompressError(f"--set {shortened(path)}: cannot read the path at "
                            f"'{shortened(path[at:], 20)}' (write keys and [N] indexes, such "
                            "as steps[0].prune.sparsity)")
    return tokens
