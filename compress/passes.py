"""The pass registry: every pass declared once, and the front-ends derived from it.

A pass module declares itself with one top-level ``PASS = Pass(...)``: its name, its
options :class:`~compress.options.Schema`, its function (by import string, so that
reading the registry imports no TensorFlow), which options make it need data, whether it
trains, and whether it produces a Keras model or an artifact's bytes. The ``compress``
CLI's commands, the ``compress run`` step kinds and their checks, ``compress.<name>`` in
the Python API and the table in docs/developing.md all come from here.

Declaration modules are found by reading the package's source files for that line (no
import of the ones without it), so adding a pass touches one module (plus its tests).
They must stay cheap to import: heavy libraries are imported inside functions.

Example:

>>> from compress import passes
>>> spec = passes.get("prune")
>>> spec.produces, spec.trains
('model', True)
>>> spec.data_reasons(spec.schema.validate({"method": "obd"}))
['method obd']
>>> "export" in passes.names() and "quantize" in passes.names()
True
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from pathlib import Path

from compress.errors import CompressError
from compress.options import Schema

_MARKER = "\nPASS = Pass("


def _no_data(options: dict) -> list[str]:
    return []


@dataclasses.dataclass(frozen=True)
class Pass:
    """One pass, as every front-end sees it.

    Args:
        name: str. The CLI command, the recipe step kind and (unless ``api`` says
            otherwise) the ``compress.<name>`` function.
        summary: str. One line for listings and the docs table.
        function: callable or str (``"module:attribute"``, imported on first use) of
            ``function(model, data=None, *,
            verbose=0, **options) -> (result, info)``; ``result`` is a new Keras model
            (``produces="model"``) or the artifact's bytes (``produces="artifact"``).
        schema: its :class:`~compress.options.Schema` (the only validator of its options).
        needs_data: callable, default: never. ``needs_data(options) -> [reason, ...]``:
            the options (validated) that need data, each as ``"name value"``; empty when
            the pass can run without data.
        trains: bool, default False. Whether it may train (its command gets
            ``--checkpoint-dir``, ``--strategy`` and ``--keep-last-good``).
        produces: str, default ``"model"``. ``"model"`` or ``"artifact"``.
        suffix: callable or None. For an artifact: ``suffix(options) -> ".tflite"``.
        takes_callbacks: bool, default False. Whether recipe steps may give it Keras
            callbacks (a ``callbacks:`` mapping), passed as ``callbacks=[...]``.
        data_hint: str, default "". What the pass can still do without data, appended to
            its data refusal (``"without data only ... is possible"``).
        loads_files: bool, default False. Whether some option names a model file the
            pass loads (it then takes ``unsafe=``, the user's ``--unsafe``).
        cli: bool, default True. Whether it is a ``compress`` command (its module is
            ``compress/cli/<name>.py`` when it has one of its own, else a generic
            model-to-model command is made from the schema).
        api: str or None. The ``compress.<api>`` name, default ``name``; ``""`` for none.
        order: int, default 100. Position in ``--help`` and the docs table.
        check: callable or None. ``check(options)`` refuses, in one line, combinations
            of valid options the pass cannot run (a recipe's ``--check`` calls it too).
    """

    name: str
    summary: str
    function: Callable | str
    schema: Schema
    needs_data: Callable[[dict], list[str]] = _no_data
    trains: bool = False
    produces: str = "model"
    suffix: Callable[[dict], str] | None = None
    takes_callbacks: bool = False
    loads_files: bool = False
    data_hint: str = ""
    cli: bool = True
    api: str | None = None
    order: int = 100
    check: Callable[[dict], None] | None = None

    def __post_init__(self):
        if self.produces not in ("model", "artifact"):
            raise ValueError(f"pass {self.name}: produces must be model or artifact")
        if self.produces == "artifact" and self.suffix is None:
            raise ValueError(f"pass {self.name}: an artifact pass needs suffix(options)")

    @property
    def api_name(self) -> str:
        return self.name if self.api is None else self.api

    def resolve(self) -> Callable:
        """The pass function itself (imports its module when declared by import string)."""
        return _resolve(self.function) if isinstance(self.function, str) else self.function

    def data_reasons(self, options: dict) -> list[str]:
        """The options (validated) that need data; empty when none do."""
        return list(self.needs_data(options))

    def require_data(self, options: dict, data, where: str | None = None,
                     flags: bool = False) -> None:
        """Refuse in one line when ``options`` need data and ``data`` is None.

        Args:
            where: str or None. Prefix naming the place (``steps[1].prune``).
            flags: bool, default False. Name the options as CLI flags (``--method obd``)
                and the fix as ``--data``.
        """
        reasons = self.data_reasons(options)
        if not reasons or data is not None:
            return
        if flags:
            reasons = [self.schema.options[r.split(" ")[0]].cli_flag + r[len(r.split(" ")[0]):]
                       if r.split(" ")[0] in self.schema.options else r for r in reasons]
        verb = "needs" if len(reasons) == 1 else "need"
        fix = ("--data (for example --data mnist5k)" if flags
               else "data (set 'data' at the top level)" if where else "data")
        place = f"{where}: " if where else f"{self.name}: " if not flags else ""
        hint = f"; {self.data_hint}" if self.data_hint else ""
        raise CompressError(f"{place}{', '.join(reasons)} {verb} {fix}{hint}")

    def artifact_suffix(self, options: dict) -> str | None:
        return self.suffix(options) if self.suffix else None

    def run(self, model, data=None, **kwargs):
        """Call the pass function: ``(result, info)``."""
        return self.resolve()(model, data, **kwargs)


def _resolve(target: str):
    module, _, attr = target.partition(":")
    value = importlib.import_module(module)
    return getattr(value, attr) if attr else value


_REGISTRY: dict[str, Pass] = {}
_DISCOVERED = False


def register(spec: Pass) -> Pass:
    """Add a pass (for plugins and tests; the toolkit's own passes are discovered).

    Example:

    >>> from compress.passes import Pass, register, unregister
    >>> from compress.options import Schema
    >>> _ = register(Pass("noop", "does nothing", lambda model, data=None, **o: (model, {}),
    ...                   Schema("noop", []), cli=False))
    >>> unregister("noop")
    """
    _discover()
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"pass '{spec.name}' is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a pass added with :func:`register`."""
    _REGISTRY.pop(name, None)


def _discover() -> None:
    """Register every pass declared in this package (once per process)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    found = discover(Path(__file__).resolve().parent)
    for spec in found:
        _REGISTRY.setdefault(spec.name, spec)
    if found.incomplete:  # asked for while a pass module was being imported: look again
        _DISCOVERED = False  # next time (its PASS line had not run yet)


def discover(root: str | os.PathLike) -> list[Pass]:
    """The passes declared in the package folder ``root`` (importable by its name).

    Reads each module's source for a top-level ``PASS = Pass(`` line and imports only
    those modules; ``cli`` sub-packages are skipped.

    Example:

    >>> [p.name for p in discover(Path(__file__).parent)][:1]    # doctest: +SKIP
    ['export']
    """
    root = Path(root).resolve()
    found = _Found()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent)
        if len(relative.parts) > 1 and relative.parts[1] == "cli":
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if _MARKER not in text:
            continue
        parts = list(relative.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        spec = getattr(importlib.import_module(".".join(parts)), "PASS", None)
        if isinstance(spec, Pass):
            found.append(spec)
        else:  # a module being imported (its import asked for the registry): no PASS yet
            found.incomplete = True
    return found


class _Found(list):
    """The passes :func:`discover` found; ``incomplete`` when a declaring module was
    still being imported (``from compress.export import ...`` as a script's first line:
    its ``from compress import io`` went through the package's ``__getattr__``, which
    read the registry before ``export``'s ``PASS`` line ran, and ``export`` was missing
    for the rest of the process)."""

    incomplete = False


def all_passes() -> list[Pass]:
    """Every registered pass, in ``--help`` order."""
    _discover()
    return sorted(_REGISTRY.values(), key=lambda p: (p.order, p.name))


def names() -> list[str]:
    """The registered pass names, in ``--help`` order."""
    return [p.name for p in all_passes()]


def get(name: str) -> Pass:
    """The pass called ``name``; a one-line error listing the known ones otherwise."""
    _discover()
    if name not in _REGISTRY:
        raise CompressError(f"{name}: unknown pass (known: {', '.join(names())})")
    return _REGISTRY[name]


def find(name: str) -> Pass | None:
    """The pass called ``name``, or None."""
    _discover()
    return _REGISTRY.get(name)


def api_names() -> dict[str, Pass]:
    """``compress.<name>`` -> pass, for the Python API."""
    return {p.api_name: p for p in all_passes() if p.api_name}


def markdown_table() -> str:
    """The passes as a Markdown table (docs/developing.md holds a copy; a test compares)."""
    rows = ["| pass | produces | needs data | trains | what it does |",
            "|---|---|---|---|---|"]
    for p in all_passes():
        data = "no"
        if p.needs_data is not _no_data:
            data = "yes" if p.data_reasons(p.schema.defaults()) else "for some options"
        rows.append(f"| `{p.name}` | {p.produces} | {data} | {'yes' if p.trains else 'no'} "
                    f"| {p.summary} |")
    return "\n".join(rows)
