"""The HTML page of `ssogen inspect --report`: the summary tables and the plots of a build (or two).

Owns: `write_report`, which renders ``prompts/inspect_report.html.j2`` (autoescaped: every value is data)
beside the PNGs of `ssogen.output.plots`, from the same formatted cells the terminal prints (`ssogen.reading.tables`).
"""

from __future__ import annotations

from pathlib import Path

from ssogen.output.plots import PLOTS, render_plots
from ssogen.output.readback import Build, distinct_names
from ssogen.output.store import atomic_write_bytes
from ssogen.reading.tables import compare_sections, sections

REPORT_TEMPLATE = "inspect_report.html.j2"

CAPTIONS = {
    "weight_hist": "Histogram of W, the weight of the steering losses (dashed: medians).",
    "pi_scatter": "π̃(y+|x) against π̃(y-|x) per query; the dotted diagonal is y = x.",
    "lengths": "Answer lengths in tokens per role; x marks answers cut by the token limit.",
    "features": "How many kept queries were steered along each feature.",
    "drops": "Queries dropped, per reason.",
    "audit": "The audit: the judge's P(preferred ≻ other) per pair, and its accuracy by W quartile with 95 % "
    "Wilson intervals (dotted: 0.5, a coin toss).",
}


def write_report(build: Build, out_dir: Path, compare: Build | None = None) -> Path:
    """Write ``out_dir/index.html`` and its PNG plots; returns the path of index.html."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    from ssogen import __version__
    from ssogen.inputs.library import resource_dir

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = render_plots(build, out_dir, compare=compare)
    for name in PLOTS:  # a plot of an earlier report that this one does not have
        if name not in plots:
            (out_dir / f"{name}.png").unlink(missing_ok=True)
    messages = build.messages()
    title = f"ssogen inspect: {build.label}"
    if compare is not None:
        head_a, head_b = distinct_names(build, compare)
        title = f"ssogen inspect: {head_a} vs {head_b}"
        messages = [f"{h.split(':')[0]}: {m}" for h, b in ((head_a, build), (head_b, compare)) for m in b.messages()]
    env = Environment(loader=FileSystemLoader(resource_dir("prompts")), autoescape=True, undefined=StrictUndefined)
    html = env.get_template(REPORT_TEMPLATE).render(
        title=title,
        label=build.label,
        version=__version__,
        messages=messages,
        sections=sections(build),
        compare_sections=compare_sections(build, compare) if compare is not None else [],
        comparison=title.removeprefix("ssogen inspect: ") if compare is not None else None,
        plots=[{"file": p.name, "caption": CAPTIONS[name]} for name, p in plots.items()],
    )
    index = out_dir / "index.html"
    atomic_write_bytes(index, html.encode("utf-8"))
    return index
