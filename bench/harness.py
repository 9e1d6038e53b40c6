"""What a benchmark case returns, and the context it runs in.

A case is a function ``case(ctx: Context) -> Section`` in a module of ``bench/cases/``,
listed in that module's ``CASES = {"name": function}``. It measures everything in the
same run (ratios, not absolute times), writes plots under ``ctx.plot_dir`` and returns
Markdown plus the targets it checked.

Example:

>>> def case_example(ctx):
...     sec = Section("Example")
...     sec.target("accuracy drop <= 0.5 pts", measured=0.2, limit=0.5, met=0.2 <= 0.5)
...     sec.add("| a | b |\\n|---|---|\\n| 1 | 2 |")
...     return sec
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass
class Context:
    """Run settings shared by every case."""

    quick: bool
    seed: int
    plot_dir: Path  # plots referenced from BENCHMARKS.md
    work_dir: Path  # scratch files
    out_dir: Path = Path(".")  # folder of the Markdown file
    facts: dict = dataclasses.field(default_factory=dict)  # numbers shared between cases
    sections: list = dataclasses.field(default_factory=list)  # finished sections, in order

    def measured(self, prefix) -> tuple[str, bool] | None:
        """``(measured, met)`` of the first finished target whose description starts with
        ``prefix`` (a str), or contains every fragment of ``prefix`` (a tuple)."""
        for section in self.sections:
            for t in section.targets:
                if (all(f in t.description for f in prefix) if isinstance(prefix, tuple)
                        else t.description.startswith(prefix)):
                    return t.measured, t.met
        return None

    def image(self, path: Path, alt: str = "") -> str:
        """Markdown image link to a plot, relative to the Markdown file."""
        import os

        return f"![{alt}]({os.path.relpath(path, self.out_dir)})"

    def size(self, quick, full):
        """Pick the quick or the full value of a setting."""
        return quick if self.quick else full


@dataclasses.dataclass
class Target:
    issue: str
    description: str
    measured: str
    limit: str
    met: bool


@dataclasses.dataclass
class Section:
    title: str
    issue: str = ""
    parts: list = dataclasses.field(default_factory=list)
    targets: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def add(self, markdown: str) -> None:
        self.parts.append(markdown)

    def target(self, description: str, measured, limit, met: bool) -> None:
        self.targets.append(Target(self.issue, description, str(measured), str(limit),
                                   bool(met)))

    def markdown(self) -> str:
        body = [f"## {self.title}", ""]
        if self.error:
            body += [f"**Case failed:** `{self.error}`", ""]
        body += [p + "\n" for p in self.parts]
        if self.targets:
            body += ["| target | measured | limit | met |", "|---|---|---|---|"]
            body += [f"| {t.description} | {t.measured} | {t.limit} | "
                     f"{'yes' if t.met else '**no**'} |" for t in self.targets]
            body.append("")
        body.append(f"_Case wall time: {self.seconds:.1f} s._")
        return "\n".join(body) + "\n"


def table(header: list, rows: list[list]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)
