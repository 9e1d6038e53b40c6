"""Reading a recipe's YAML (and ``--set`` values) safely, with a budget on aliases.

``yaml.safe_load`` builds no Python objects, but YAML aliases let a few hundred bytes
stand for an exponential tree (``a: &a [x, x]``, ``b: &b [*a, *a]``, ...): the value
itself shares its nodes, yet anything that walks or prints it (an error message quoting
it) expands it to gigabytes. :func:`read_yaml` composes the document, counts the values
it would expand to without expanding them, and refuses more than :data:`MAX_VALUES`
before a single Python object is built. Python tags (``!!python/object``) and nesting
deeper than Python's stack get their own one-line refusals.

Example:

>>> read_yaml("steps: [{prune: {sparsity: 0.5}}]", "recipe.yaml")
{'steps': [{'prune': {'sparsity': 0.5}}]}
>>> read_yaml("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\\n"
...           "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\\n"
...           "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\\n"
...           "d: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\\n", "bomb.yaml")
Traceback (most recent call last):
...
compress.errors.CompressError: bomb.yaml: its YAML aliases expand to more than 10000 values (a recipe has a few hundred); refusing to build it
"""

from __future__ import annotations

import yaml

from compress.errors import CompressError

# A recipe has tens of steps of a few options each: a few hundred values at most.
MAX_VALUES = 10_000


class _BudgetExceeded(Exception):
    pass


class _CountingLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses a document expanding to more than MAX_VALUES values."""

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node, MAX_VALUES)
        return node


def _expanded_size(node, budget: int) -> int:
    """The number of values ``node`` stands for once every alias is expanded.

    Shared nodes (aliases) are counted once per use but measured once: linear in the
    document, whatever it expands to. A node that contains itself (``&a [*a]``) is
    infinite.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(n) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise _BudgetExceeded("recursive")
        open_nodes.add(key)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            children = n.value
        elif isinstance(n, yaml.MappingNode):
            children = [item for pair in n.value for item in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > budget:
                raise _BudgetExceeded("large")
        open_nodes.discard(key)
        sizes[key] = total
        return total

    return size(node) if node is not None else 0


def read_yaml(text: str, where: str):
    """Parse ``text`` as YAML with safe loading and the alias budget.

    Args:
        text: the YAML document.
        where: what to name in errors (the recipe file, or ``--set PATH``).

    Raises:
        CompressError: one line: invalid YAML (with its line), a Python or unknown tag,
            aliases expanding beyond the budget, or nesting too deep.
    """
    loader = None
    try:
        loader = _CountingLoader(text)  # a SafeLoader: yaml.load's steps, with the budget
        return loader.get_single_data()
    except _BudgetExceeded as exc:
        if str(exc) == "recursive":
            raise CompressError(f"{where}: a YAML alias refers to a value that contains it "
                                "(an endless value); refusing to build it") from None
        raise CompressError(f"{where}: its YAML aliases expand to more than {MAX_VALUES} "
                            "values (a recipe has a few hundred); refusing to build it"
                            ) from None
    except RecursionError:
        raise CompressError(f"{where}: YAML nested too deeply") from None
    except yaml.constructor.ConstructorError as exc:
        raise CompressError(f"{where}: {_tag_problem(exc)}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise CompressError(f"{where}: not valid YAML{at}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _tag_problem(exc) -> str:
    mark = getattr(exc, "problem_mark", None)
    at = f"line {mark.line + 1}: " if mark else ""
    problem = str(getattr(exc, "problem", "") or "")
    tag = problem.split("tag ", 1)[-1].strip(" '") if "tag " in problem else ""
    short = tag.replace("tag:yaml.org,2002:", "!!")
    if short.startswith("!!python/"):
        return (f"{at}'{short[:80]}' is a Python tag, refused: recipes are read with safe "
                "loading, which never builds Python objects")
    if tag:
        return f"{at}unknown YAML tag '{short[:80]}' (recipes use plain YAML values)"
    return f"{at}not valid YAML ({' '.join(problem.split())[:80]})"
