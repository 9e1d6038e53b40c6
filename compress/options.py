"""One options schema per pass: the CLI flags, the recipe step and the keyword arguments.

A pass declares its options once as a :class:`Schema`. The CLI turns it into click
options (``schema.click_options()``), the recipe runner validates a step's mapping
with it (``schema.validate(step, path="steps[2].prune")``), and the Python function
validates its keyword arguments with the same call, so the three front-ends cannot
drift apart.

Example:

>>> schema = Schema("prune", [
...     Option("sparsity", float, 0.9, "fraction of weights set to zero", low=0.0, high=1.0,
...            high_inclusive=False),
...     Option("method", str, "magnitude", "saliency criterion", choices=("magnitude", "obd")),
... ])
>>> schema.validate({"sparsity": 0.5})
{'sparsity': 0.5, 'method': 'magnitude'}
>>> schema.validate({"sparsity": 1.5}, path="steps[0].prune")
Traceback (most recent call last):
...
compress.errors.CompressError: steps[0].prune.sparsity: must be in [0.0, 1.0), got 1.5
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from collections.abc import Callable
from typing import Any

from compress.errors import CompressError

_TYPE_NAMES = {float: "a number", int: "an integer", str: "a string", bool: "true or false",
               list: "a list"}
# What an error message may quote of a value: a recipe's value can be huge (or, through
# YAML aliases, an exponential tree that only shares its nodes), and a one-line error
# must stay one short line. reprlib bounds the work as well as the text.
QUOTE_LIMIT = 80
_QUOTER = reprlib.Repr()
_QUOTER.maxlevel, _QUOTER.maxstring, _QUOTER.maxother = 3, QUOTE_LIMIT, QUOTE_LIMIT
_QUOTER.maxlist = _QUOTER.maxtuple = _QUOTER.maxdict = _QUOTER.maxset = 6


def shortened(text, limit: int = QUOTE_LIMIT) -> str:
    """``str(text)``, cut to ``limit`` characters with ``...`` when longer."""
    text = str(text) if isinstance(text, (str, int, float, bool, type(None))) else \
        _QUOTER.repr(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def quoted(value, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for an error message, at most ``limit`` characters, cheap for any
    value.

    Example:

    >>> quoted("lots")
    "'lots'"
    >>> len(quoted(list(range(10**6)))) <= QUOTE_LIMIT
    True
    """
    return shortened(_QUOTER.repr(value), limit)


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of a pass.

    Args:
        name: keyword-argument name (``snake_case``); the CLI flag is ``--kebab-case``.
        type: ``float``, ``int``, ``str``, ``bool`` or ``list`` (a list of strings; on the
            CLI a comma-separated value).
        default: the value when not given (``None`` means "not set").
        help: one sentence for ``--help`` and the recipe docs.
        choices: allowed values for a ``str`` option.
        low, high: inclusive bounds for numbers unless ``*_inclusive`` is False.
        cli: False hides the option from the CLI (recipe/Python only).
        flag: override the CLI flag (for example ``"--layers"``).
        file: True for a ``str`` option naming an input file (a recipe's checks require
            it to exist before anything runs).
        finite: a ``float`` option refuses NaN and infinity (an infinite temperature or
            learning rate only turns the loss NaN after the work started); False leaves a
            non-finite value to the pass, which explains it in its own words.
        cli_choice: False lets the CLI take any string for an option with ``choices``
            (a long list, such as Keras loss names): the schema then refuses one outside
            them in one line (exit 1), before anything is loaded, instead of click's usage
            error.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    cli: bool = True
    flag: str | None = None
    file: bool = False
    finite: bool = True
    cli_choice: bool = True

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def check(self, value: Any, where: str) -> Any:
        """Coerce ``value`` to this option's type and check it; raise with ``where``."""
        if value is None:
            return None
        value = self._coerce(value, where)
        if self.choices and value not in self.choices:
            raise CompressError(f"{where}: must be one of {', '.join(map(str, self.choices))}, "
                                f"got {quoted(value)}")
        if self.type is float and self.finite and not math.isfinite(value):
            raise CompressError(f"{where}: must be a finite number, got {value}")
        if self.type in (int, float):
            lo_ok = self.low is None or (value >= self.low if self.low_inclusive
                                         else value > self.low)
            hi_ok = self.high is None or (value <= self.high if self.high_inclusive
                                          else value < self.high)
            if not (lo_ok and hi_ok):
                raise CompressError(f"{where}: must be {self._range_text()}, got {value}")
        return value

    def _coerce(self, value: Any, where: str) -> Any:
        kind = _TYPE_NAMES[self.type]
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            raise CompressError(f"{where}: must be {kind}, got {quoted(value)}")
        if self.type is list:
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return list(value)
            raise CompressError(f"{where}: must be {kind} of strings, got {quoted(value)}")
        if isinstance(value, bool):  # bool is an int subclass; never accept it as a number
            raise CompressError(f"{where}: must be {kind}, got {quoted(value)}")
        if self.type is float and isinstance(value, (int, float)):
            return float(value)
        if self.type is int and isinstance(value, int):
            return value
        if self.type is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if self.type is str and isinstance(value, str):
            return value
        if isinstance(value, str) and self.type in (int, float):
            try:
                return self.type(value)
            except ValueError:
                pass
        raise CompressError(f"{where}: must be {kind}, got {quoted(value)}")

    def _range_text(self) -> str:
        if self.low is not None and self.high is not None:
            return (("in [" if self.low_inclusive else "in (") + f"{self.low}, {self.high}"
                    + ("]" if self.high_inclusive else ")"))
        if self.low is not None:
            return (">= " if self.low_inclusive else "> ") + str(self.low)
        return ("<= " if self.high_inclusive else "< ") + str(self.high)


class Schema:
    """The options of one pass, shared by its CLI command, recipe step and function.

    Args:
        name: the pass name (``prune``, ``share``, ...), used in error paths.
        options: the :class:`Option` list, in ``--help`` order.
    """

    def __init__(self, name: str, options: list[Option]):
        self.name = name
        self.options = {o.name: o for o in options}

    def names(self) -> list[str]:
        return list(self.options)

    def defaults(self) -> dict:
        return {n: o.default for n, o in self.options.items()}

    def validate(self, values: dict | None, path: str | None = None) -> dict:
        """Return ``values`` checked and completed with defaults.

        Unknown keys, wrong types and out-of-range values raise :class:`CompressError`
        naming the field path, e.g. ``steps[2].quantize.mode: must be one of ...``.
        """
        path = self.name if path is None else path
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise CompressError(f"{path}: must be a mapping of options, got {quoted(values)}")
        unknown = [k for k in values if k not in self.options]
        if unknown:
            raise CompressError(f"{path}.{shortened(unknown[0])}: unknown option "
                                f"(known: {', '.join(self.options)})")
        out = {}
        for name, opt in self.options.items():
            out[name] = opt.check(values.get(name, opt.default), f"{path}.{name}")
        return out

    def click_options(self) -> Callable:
        """A decorator adding one click option per CLI-visible option."""
        import click

        def decorate(func):
            for opt in reversed([o for o in self.options.values() if o.cli]):
                help_text = opt.help
                if opt.default is not None and opt.type is not bool:
                    help_text += f"  [default: {opt.default}]"
                if opt.type is bool:
                    flag = opt.cli_flag
                    func = click.option(f"{flag}/--no-{flag[2:]}", opt.name, default=opt.default,
                                        help=opt.help)(func)
                    continue
                click_type = {float: float, int: int, str: str, list: str}[opt.type]
                if opt.choices and opt.cli_choice:
                    click_type = click.Choice([str(c) for c in opt.choices])
                func = click.option(opt.cli_flag, opt.name, type=click_type, default=None,
                                    help=help_text)(func)
            return func

        return decorate

    def from_cli(self, kwargs: dict) -> dict:
        """Pick this schema's values out of a click command's kwargs and validate them."""
        out = {}
        for name, opt in self.options.items():
            value = kwargs.get(name)
            out[name] = opt.check(opt.default if value is None else value, opt.cli_flag)
        return out
