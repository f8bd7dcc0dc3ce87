"""`ssogen inspect`: the printed figures equal pandas on the Parquet files, the report's PNGs are real plots,
two rounds compare side by side, and empty, all-dropped or foreign folders give a message instead of a crash."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from matplotlib.image import imread
from rich.console import Console

from ssogen.errors import UsageError
from ssogen.output.store import DROPPED_SCHEMA, RECORD_SCHEMA
from ssogen.reading.inspect import load_build, render_plots, run_inspect
from tests.conftest import make_record as record

PLOTS = ("weight_hist.png", "pi_scatter.png", "lengths.png", "features.png", "drops.png")
ROLES = ("chosen", "rejected", "original")
W_ROW = "W"
PI_ROW = {"chosen": "π̃(y+|x) chosen", "rejected": "π̃(y-|x) rejected", "original": "π̃(y°|x) original"}
LENGTH_ROW = {"chosen": "chosen (y+)", "rejected": "rejected (y-)", "original": "original (y°)"}


# --- helpers: run the command as the CLI will, and read the printed tables back -------------------------------


def inspect_text(target: Path | str, report: Path | None = None, compare: Path | str | None = None) -> str:
    # Wide enough that long tmp paths never wrap a cell; the StringIO keeps pytest's output clean.
    console = Console(record=True, width=240, file=io.StringIO())
    code = run_inspect(str(target), report, str(compare) if compare is not None else None, console=console)
    assert code == 0
    return console.export_text()


def table(text: str, title: str) -> tuple[list[str], dict[str, list[str]]]:
    """(header cells, {first cell: other cells}) of the rich table printed under ``title``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == title)
    header: list[str] = []
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1 :]:
        if line.startswith("┃"):
            header = [c.strip() for c in line.strip("┃").split("┃")]
        elif line.startswith("│"):
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            rows[cells[0]] = cells[1:]
        elif line.startswith("└"):
            return header, rows
    raise AssertionError(f"no table under {title!r} in:\n{text}")


def cell(text: str, title: str, row: str, column: str) -> str:
    header, rows = table(text, title)
    return rows[row][header.index(column) - 1]


def number(value: str) -> float:
    match = re.fullmatch(r"([+-]?\d+(?:\.\d+)?)(?: %| pp)?", value)
    assert match, f"not a number: {value!r}"
    return float(match[1])


def read_config(folder: Path, config: str, split: str | None = None) -> pd.DataFrame:
    pattern = f"{split}-*.parquet" if split else "*.parquet"
    files = sorted((folder / "data" / config).glob(pattern))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def splits_of(folder: Path) -> dict[str, dict[str, int]]:
    """{config: {split: rows}} counted by pandas."""
    out: dict[str, dict[str, int]] = {}
    for path in sorted((folder / "data").glob("*/*.parquet")):
        split = path.name.split("-")[0]
        out.setdefault(path.parent.name, {})[split] = len(read_config(folder, path.parent.name, split))
    return out


def assert_real_png(path: Path) -> None:
    image = imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100, path
    pixels = image.reshape(-1, image.shape[-1])
    assert len(np.unique(pixels, axis=0)) > 1, f"{path} is a single flat colour"


def write_build(root: Path, records: list[dict] | None, dropped: list[dict] | None) -> Path:
    """A folder in the layout `ssogen build` writes; None leaves the config's folder out entirely."""
    for config, rows, schema in (("sso", records, RECORD_SCHEMA), ("dropped", dropped, DROPPED_SCHEMA)):
        if rows is not None:
            (root / "data" / config).mkdir(parents=True)
            pq.write_table(
                pa.Table.from_pylist(rows, schema=schema), root / "data" / config / "train-00000-of-00001.parquet"
            )
    (root / "ssogen.yaml").write_text(yaml.safe_dump({"run": {"model": "m", "round": 0, "seed": 0}}))
    return root


def dropped_row(i: int, reason: str, **answers: str) -> dict:
    return {"prompt_id": f"d{i}", "prompt": f"dropped {i}", "reason": reason, "features": ["Safety"], **answers}


# --- a real build ---------------------------------------------------------------------------------------------


def test_report_of_a_real_build_references_every_plot_and_each_is_a_real_png(built_folder: Path, tmp_path: Path):
    report = tmp_path / "report"
    inspect_text(built_folder, report=report)
    html = (report / "index.html").read_text(encoding="utf-8")
    for name in PLOTS:
        assert f'src="{name}"' in html, name
        assert_real_png(report / name)
    # The HTML shows the figures the terminal shows.
    median_w = read_config(built_folder, "sso")["weight"].median()
    assert f"<td>{median_w:.4f}</td>" in html


def test_printed_figures_equal_pandas_on_the_parquet_files(built_folder: Path):
    text = inspect_text(built_folder)
    sso = read_config(built_folder, "sso")
    assert len(sso) > 0

    header, rows = table(text, "Rows per config and split")
    expected = splits_of(built_folder)
    assert set(rows) == set(expected)
    for config, splits in expected.items():
        for split, n in splits.items():
            assert int(rows[config][header.index(split) - 1]) == n, (config, split)
        assert int(rows[config][header.index("total") - 1]) == sum(splits.values())

    figures = "W and π̃ (mean per-token log-prob under the bare query)"
    assert number(cell(text, figures, W_ROW, "median")) == pytest.approx(sso["weight"].median(), abs=5.1e-5)
    assert number(cell(text, figures, W_ROW, "p25")) == pytest.approx(sso["weight"].quantile(0.25), abs=5.1e-5)
    assert number(cell(text, figures, W_ROW, "mean")) == pytest.approx(sso["weight"].mean(), abs=5.1e-5)
    for role in ROLES:
        assert number(cell(text, figures, PI_ROW[role], "mean")) == pytest.approx(
            sso[f"logp_{role}"].mean(), abs=5.1e-5
        )
        assert number(cell(text, figures, PI_ROW[role], "max")) == pytest.approx(sso[f"logp_{role}"].max(), abs=5.1e-5)
        lengths = "Answer lengths (tokens)"
        assert number(cell(text, lengths, LENGTH_ROW[role], "mean")) == pytest.approx(
            sso[f"tokens_{role}"].mean(), abs=0.051
        )
        assert int(cell(text, lengths, LENGTH_ROW[role], "max")) == sso[f"tokens_{role}"].max()
        cut = int((sso[f"finish_{role}"] == "length").sum())
        assert int(cell(text, lengths, LENGTH_ROW[role], "cut by the token limit")) == cut
    gap = (sso["logp_chosen"] - sso["logp_rejected"]).median()
    assert number(cell(text, figures, "π̃(y+) − π̃(y-)", "median")) == pytest.approx(gap, abs=5.1e-5)

    _, features = table(text, "Features")
    assert {name: int(cells[0]) for name, cells in features.items()} == sso[
        "features"
    ].explode().value_counts().to_dict()

    truncated = re.search(r"truncated\): ([\d.]+) % \((\d+) of (\d+)\)", text)
    assert truncated, text
    assert float(truncated[1]) == pytest.approx(100 * sso["truncated"].mean(), abs=0.051)
    assert (int(truncated[2]), int(truncated[3])) == (int(sso["truncated"].sum()), len(sso))

    dropped = read_config(built_folder, "dropped")
    if len(dropped):
        _, reasons = table(text, "Drop reasons")
        assert {r: int(c[0]) for r, c in reasons.items()} == dropped["reason"].value_counts().to_dict()
    else:
        assert "No query was dropped." in text


# --- two rounds side by side ----------------------------------------------------------------------------------


def test_compare_prints_both_builds_side_by_side_equal_to_pandas_and_the_report_has_it(
    built_folder: Path, built_folder_seed1: Path, tmp_path: Path
):
    report = tmp_path / "report"
    text = inspect_text(built_folder, report=report, compare=built_folder_seed1)
    header, rows = table(text, "Builds side by side")
    head_a, head_b = header[1], header[2]
    assert head_a.startswith("A: ") and head_b.startswith("B: ")
    seeds = []
    for side, (head, folder) in enumerate(((head_a, built_folder), (head_b, built_folder_seed1))):
        run = yaml.safe_load((folder / "ssogen.yaml").read_text())["run"]
        assert f"seed {run['seed']}" in head and f"round {run['round']}" in head
        assert rows["source"][side] == str(folder)
        assert rows["seed"][side] == str(run["seed"])
        seeds.append(run["seed"])
    assert seeds[0] != seeds[1]

    sa, sb = read_config(built_folder, "sso"), read_config(built_folder_seed1, "sso")
    _, figures = table(text, "W and π̃")
    for label, column, stat in (
        ("W · median", "weight", "median"),
        ("W · mean", "weight", "mean"),
        ("π̃(y+|x) chosen · mean", "logp_chosen", "mean"),
        ("π̃(y-|x) rejected · mean", "logp_rejected", "mean"),
        ("π̃(y°|x) original · median", "logp_original", "median"),
    ):
        a, b, delta = (number(c) for c in figures[label])
        expected_a, expected_b = getattr(sa[column], stat)(), getattr(sb[column], stat)()
        assert a == pytest.approx(expected_a, abs=5.1e-5), label
        assert b == pytest.approx(expected_b, abs=5.1e-5), label
        assert delta == pytest.approx(expected_b - expected_a, abs=1.1e-4), label

    _, config_rows = table(text, "Rows per config and split")
    for side, folder in ((0, built_folder), (1, built_folder_seed1)):
        for config, splits in splits_of(folder).items():
            for split, n in splits.items():
                assert int(config_rows[f"{config} / {split}"][side]) == n, (folder, config, split)

    _, features = table(text, "Features (queries)")
    for side, frame in ((0, sa), (1, sb)):
        counts = frame["features"].explode().value_counts().to_dict()
        assert {name: int(cells[side]) for name, cells in features.items() if int(cells[side])} == counts

    html = (report / "index.html").read_text(encoding="utf-8")
    assert 'id="comparison"' in html
    assert head_a in html and head_b in html
    assert f"<td>{sa['weight'].median():.4f}</td>" in html and f"<td>{sb['weight'].median():.4f}</td>" in html
    for name in PLOTS:
        assert_real_png(report / name)
    # The W histogram and the π̃ scatter overlay the second build.
    alone = render_plots(load_build(str(built_folder)), tmp_path / "alone")
    for name in ("weight_hist", "pi_scatter"):
        assert not np.array_equal(imread(alone[name]), imread(report / f"{name}.png")), name


# --- nothing kept, nothing built -------------------------------------------------------------------------------


@pytest.mark.parametrize("empty_sso", [False, True], ids=["no-sso-folder", "sso-without-rows"])
def test_all_dropped_build_names_the_reasons_prints_the_drop_table_and_renders_a_report(
    tmp_path: Path, empty_sso: bool
):
    reasons = ["identical y+ and y-", "identical y+ and y-", "empty answer"]
    folder = write_build(tmp_path / "b", [] if empty_sso else None, [dropped_row(i, r) for i, r in enumerate(reasons)])
    report = tmp_path / "report"
    text = inspect_text(folder, report=report)
    message = "no kept rows: all 3 queries were dropped (reasons: identical y+ and y-: 2, empty answer: 1)"
    assert message in text
    _, drops = table(text, "Drop reasons")
    assert {r: int(c[0]) for r, c in drops.items()} == {"identical y+ and y-": 2, "empty answer": 1}
    assert "nan" not in text.lower()
    html = (report / "index.html").read_text(encoding="utf-8")
    assert message in html and 'src="drops.png"' in html
    assert_real_png(report / "drops.png")
    assert sorted(p.name for p in report.glob("*.png")) == ["drops.png"]  # no empty plot of kept rows


def test_empty_build_says_it_holds_no_queries_and_still_renders_a_report(tmp_path: Path):
    folder = write_build(tmp_path / "b", [], None)
    report = tmp_path / "report"
    text = inspect_text(folder, report=report)
    assert "no kept rows: the build holds no queries" in text
    assert "No query was dropped." in text
    assert "no kept rows" in (report / "index.html").read_text(encoding="utf-8")
    assert_real_png(report / "drops.png")


def test_compare_with_an_all_dropped_round_reports_it_instead_of_crashing(built_folder: Path, tmp_path: Path):
    empty = write_build(tmp_path / "empty", None, [dropped_row(0, "empty answer")])
    report = tmp_path / "report"
    text = inspect_text(built_folder, report=report, compare=empty)
    assert "B: no kept rows: the only query was dropped (reasons: empty answer: 1)" in text
    _, figures = table(text, "W and π̃")
    assert figures["W · median"][1:] == ["–", "–"]
    for name in ("weight_hist.png", "pi_scatter.png"):
        assert_real_png(report / name)


@pytest.mark.parametrize("kind", ["empty folder", "other files", "missing", "file"])
def test_target_that_is_not_a_build_raises_usage_error_naming_it(tmp_path: Path, kind: str):
    target = tmp_path / "not_a_build"
    if kind == "empty folder":
        target.mkdir()
    elif kind == "other files":
        (target / "data" / "train").mkdir(parents=True)
        (target / "README.md").write_text("# hello\n")
    elif kind == "file":
        target.write_text("x")
    with pytest.raises(UsageError, match=re.escape(str(target))) as error:
        run_inspect(str(target), None, None, console=Console(quiet=True))
    assert "ssogen build" in str(error.value)


# --- rendering: data is data ----------------------------------------------------------------------------------


def test_feature_names_and_reasons_print_verbatim_and_are_escaped_in_the_html(tmp_path: Path):
    odd = "[bold]<script>alert(1)</script>"
    folder = write_build(
        tmp_path / "b", [record(i, features=[odd, "Safety"]) for i in range(4)], [dropped_row(0, "<b>odd</b>")]
    )
    report = tmp_path / "report"
    text = inspect_text(folder, report=report)
    _, features = table(text, "Features")
    assert features[odd][0] == "4"
    html = (report / "index.html").read_text(encoding="utf-8")
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;odd&lt;/b&gt;" in html


def test_hub_dataset_id_downloads_only_what_inspect_reads_and_is_labelled_by_the_id(built_folder: Path, tmp_path: Path):
    calls: list[dict] = []

    def fake_snapshot_download(repo_id: str, **kwargs: object) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        local = tmp_path / "snapshot"
        for part in ("data/sso", "data/dropped", "ssogen.yaml", "README.md"):
            source = built_folder / part
            if source.is_dir():
                shutil.copytree(source, local / part)
            elif source.is_file():
                local.mkdir(exist_ok=True)
                shutil.copy(source, local / part)
        return str(local)

    with mock.patch("huggingface_hub.snapshot_download", fake_snapshot_download):
        build = load_build("someone/sso-round0")
    assert calls == [
        {
            "repo_id": "someone/sso-round0",
            "repo_type": "dataset",
            "allow_patterns": [
                "data/sso/*",
                "data/dropped/*",
                "data/audit/*",
                "ssogen.yaml",
                "audit.yaml",
                "README.md",
            ],
        }
    ]
    assert build.label.startswith("someone/sso-round0 (round ")
    assert build.kept == len(read_config(built_folder, "sso"))
    # Configs the card lists but the download skipped are named, not counted as empty.
    assert build.counts["dpo"]["train"] is None


def test_cli_inspect_prints_the_summary_and_writes_the_report(built_folder, tmp_path):
    from tests.conftest import run_cli

    result = run_cli("inspect", str(built_folder), "--report", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "W and π̃" in result.stdout and (tmp_path / "report" / "index.html").is_file()
    missing = run_cli("inspect", str(tmp_path / "nothing-here"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


# --- loops and features that ignore the query (issue 14: the card and inspect) -------------------------------


def card_of(folder: Path) -> str:
    from ssogen.config import BuildConfig
    from ssogen.generation.plan import run_settings
    from ssogen.inputs.library import Templates
    from ssogen.inputs.models import ModelRef
    from ssogen.output.card import render_card

    build = load_build(str(folder))
    settings = run_settings(BuildConfig(), ModelRef(path="m", name="m", revision="r"), Templates(None))
    counts = {c: {s: n or 0 for s, n in splits.items()} for c, splits in build.counts.items()}
    return render_card(
        Templates(None), records=build.sso, dropped=build.dropped, counts=counts, settings=settings,
        repo_id=None, parent=None, license="other",
    )  # fmt: skip


def test_degenerate_answers_are_counted_by_role_in_inspect_and_the_card(tmp_path: Path):
    records = [
        record(i, degenerate_rejected=i < 3, finish_rejected="repetition" if i < 2 else "stop") for i in range(6)
    ]
    dropped = [
        # y+ looped, and so did its y- (stopped by the engine before the query was dropped): both count.
        dropped_row(0, "degenerate_chosen", finish_chosen="repetition", finish_rejected="repetition"),
        # y+ looped by compression (cut at the limit); y- ended normally, y° was abandoned: only y+ counts.
        dropped_row(
            1, "degenerate_chosen", finish_chosen="length", finish_rejected="stop", finish_original="abandoned"
        ),
        dropped_row(2, "degenerate_original"),
        dropped_row(3, "empty answer"),
    ]
    folder = write_build(tmp_path / "b", records, dropped)
    text = inspect_text(folder)
    header, rows = table(text, "Degenerate answers (loops)")
    assert header == ["role", "in kept rows", "of which stopped by the engine", "in dropped queries", "total"]
    assert rows == {
        "chosen (y+)": ["0", "0", "2", "2"],
        "rejected (y-)": ["3", "2", "1", "4"],
        "original (y°)": ["0", "0", "1", "1"],
    }
    card = card_of(folder)
    for line in ("| chosen | 0 | 0 | 2 | 2 |", "| rejected | 3 | 2 | 1 | 4 |", "| original | 0 | 0 | 1 | 1 |"):
        assert line in card, line

    # A build made before loops were recorded says so instead of printing zeros.
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    path = next((old / "data" / "sso").glob("*.parquet"))
    table_ = pq.read_table(path)
    pq.write_table(table_.drop_columns([f"degenerate_{r}" for r in ROLES]), path)
    assert "Not recorded: this build has no degenerate_* columns" in inspect_text(old)
    assert "| role | in kept rows |" not in card_of(old)


def test_a_feature_on_more_than_90_percent_of_kept_rows_is_warned_in_inspect_the_report_and_the_card(tmp_path: Path):
    # Helpfulness on 10 of 10 rows (warned); Safety on 9 of 10, exactly 90 % (not more: no warning).
    records = [record(i, features=["Helpfulness", "Safety" if i < 9 else "Accuracy"]) for i in range(10)]
    folder = write_build(tmp_path / "b", records, [])
    report = tmp_path / "report"
    text = inspect_text(folder, report=report)
    warning = "the feature Helpfulness steers 100.0 % of the kept rows (10 of 10)"
    assert warning in text and "the feature Safety steers" not in text
    assert warning in (report / "index.html").read_text(encoding="utf-8")
    card = card_of(folder)
    assert "**Warning:** the feature Helpfulness steers 100.0 % of the kept rows (10 of 10)" in card
    assert "the feature Safety steers" not in card

    varied = write_build(tmp_path / "v", [record(i, features=[f"F{i % 3}"]) for i in range(9)], [])
    assert "warning" not in inspect_text(varied) and "**Warning:**" not in card_of(varied)
