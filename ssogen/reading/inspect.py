"""`ssogen inspect`: look at a built dataset (or compare two rounds) before training on it.

Owns only the command: read the build(s) (`ssogen.output.readback`), print the summary or the side-by-side tables
(`ssogen.reading.tables`), and write the HTML report with its plots when asked (`ssogen.reading.report`,
`ssogen.output.plots`).
The names other modules import from here (`load_build`, `render_plots`, ...) are re-exported.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.text import Text

from ssogen.output.plots import render_plots
from ssogen.output.readback import Build, load_build
from ssogen.reading.report import write_report
from ssogen.reading.tables import compare_table, summary_table

__all__ = ["Build", "load_build", "render_plots", "run_inspect", "write_report"]


def run_inspect(target: str, report: Path | None, compare: str | None, console: Console | None = None) -> int:
    """`ssogen inspect TARGET [--report DIR] [--compare OTHER]`: print the summary, write the report if asked."""
    console = console or Console()
    build = load_build(target)
    other = load_build(compare) if compare is not None else None
    console.print(summary_table(build) if other is None else compare_table(build, other))
    if report is not None:
        index = write_report(build, Path(report), compare=other)
        console.print(Text(f"report: {index}"))
    return 0
