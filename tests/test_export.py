"""The export: streamed from the chunks in query order, one row per query and only queries of the input, files cut
at a fixed size with the Hub's names and bounded row groups, swapped in whole (a kill leaves the previous export),
memory flat in the number of rows; and `merge` run twice never doubles a row."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import load_dataset

from ssogen.config import BuildConfig
from ssogen.generation.plan import run_settings, shard_of
from ssogen.inputs.library import Templates
from ssogen.inputs.models import ModelRef
from ssogen.inputs.sources import load_queries
from ssogen.output.export import ExportLimits, export_folder
from ssogen.output.store import OutputFolder, ids_digest
from ssogen.output.swap import STAGING
from tests.conftest import REPO, make_record, run_cli
from tests.export_memory import measure, synthetic_text

SMALL = ExportLimits(file_bytes=60_000, row_group_bytes=20_000, bucket_bytes=30_000)


def record(i: int, answer_bytes: int = 0, **changes) -> dict:
    row = {**make_record(i), "drop_reason": None, **changes}
    if answer_bytes:
        for k, role in enumerate(("chosen", "rejected", "original")):
            row[role] = f"{role} {i} " + synthetic_text(i * 3 + k, answer_bytes)
    return row


def build_folder(root: Path, numbers: list[int], chunk: int = 7, answer_bytes: int = 0, shuffle: bool = True):
    """A build folder whose chunks hold records `numbers`, shuffled across chunks (completion order)."""
    folder = OutputFolder(root)
    made = run_settings(BuildConfig(), ModelRef(path="m", name="m", revision="r"), Templates(None))
    folder.prepare(made, overwrite=False)
    written = list(numbers)
    if shuffle:
        random.Random(1).shuffle(written)
    for start in range(0, len(written), chunk):
        folder.write_chunk([record(i, answer_bytes) for i in written[start : start + chunk]])
    return folder, made


def export(folder: OutputFolder, made: dict, order: list[str] | None, limits: ExportLimits = SMALL, test_size=0.2):
    return export_folder(
        folder, order, templates=Templates(None), settings=made, seed=0, test_size=test_size, limits=limits
    )


def ids_of(root: Path, config: str, split: str | None = None) -> list[str]:
    files = sorted((root / "data" / config).glob(f"{split or '*'}-*.parquet"))
    return [pid for f in files for pid in pq.read_table(f, columns=["prompt_id"]).column("prompt_id").to_pylist()]


def load(root: Path, config: str, cache: Path):
    # A cache per load: `datasets` keys a local folder's cache by its name and card, not by its files.
    return load_dataset(str(root), config, cache_dir=str(cache / f"{config}-{time.monotonic_ns()}"))


def test_rows_follow_the_query_order_whatever_order_the_chunks_were_written_in(tmp_path):
    folder, made = build_folder(tmp_path / "out", list(range(60)), answer_bytes=500)
    order = [make_record(i)["prompt_id"] for i in range(60)]
    random.Random(2).shuffle(order)  # the query list's own order, not the ids' order
    export(folder, made, order)
    for config in ("sso", "dpo", "reward", "sso_reference"):
        train, test = ids_of(tmp_path / "out", config, "train"), ids_of(tmp_path / "out", config, "test")
        assert train == [pid for pid in order if pid in set(train)] and test == [p for p in order if p in set(test)]
        assert sorted(train + test) == sorted(order)


def test_duplicates_are_never_exported_the_first_written_copy_is_kept_and_counted(tmp_path, caplog):
    folder, made = build_folder(tmp_path / "out", list(range(10)), shuffle=False)
    folder.write_chunk([record(3, chosen="a later copy"), record(4, chosen="a later copy")])
    order = [make_record(i)["prompt_id"] for i in range(10)]
    with caplog.at_level(logging.WARNING, logger="ssogen.output.export"):
        result = export(folder, made, order)
    assert result.duplicates == 2 and result.kept == 10
    assert "2 duplicate rows (a prompt_id already exported) were left out of the export" in caplog.text
    for config in ("sso", "dpo", "steer_pos", "steer_neg", "reward", "sso_reference"):
        assert sorted(ids_of(tmp_path / "out", config)) == sorted(order), config
    sso = pd.concat(pd.read_parquet(f) for f in (tmp_path / "out" / "data" / "sso").glob("*.parquet"))
    assert "a later copy" not in set(sso.chosen)


def test_rows_of_queries_not_in_the_input_are_never_exported(tmp_path, caplog):
    folder, made = build_folder(tmp_path / "out", list(range(8)))
    removed = {make_record(i)["prompt_id"] for i in (2, 5)}
    order = [make_record(i)["prompt_id"] for i in range(8) if make_record(i)["prompt_id"] not in removed]
    with caplog.at_level(logging.WARNING, logger="ssogen.output.export"):
        result = export(folder, made, order)
    assert result.unknown == 2 and "2 rows of queries that are not in the input were left out" in caplog.text
    for config in ("sso", "dpo", "reward"):
        assert not removed & set(ids_of(tmp_path / "out", config))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "kept **6**" in card


def test_files_are_cut_at_a_fixed_size_with_hub_names_bounded_row_groups_and_all_load(tmp_path):
    folder, made = build_folder(tmp_path / "out", list(range(120)), answer_bytes=400)
    folder.write_chunk([record(500, drop_reason="chosen_equals_rejected")])
    order = [make_record(i)["prompt_id"] for i in [*range(120), 500]]
    result = export(folder, made, order)
    root = tmp_path / "out"
    header = yaml.safe_load((root / "README.md").read_text().split("---")[1])
    listed = {c["config_name"]: {f["split"]: f["path"] for f in c["data_files"]} for c in header["configs"]}
    assert set(listed) == {"sso", "dpo", "steer_pos", "steer_neg", "reward", "sso_reference", "dropped"}
    for config, splits in listed.items():
        for split, pattern in splits.items():
            files = sorted(root.glob(pattern))
            assert [f.name for f in files] == result.files[config][split]
            count = len(files)
            assert [f.name for f in files] == [f"{split}-{k:05d}-of-{count:05d}.parquet" for k in range(count)]
            # Every file but the last is past the size; row groups stay near their bound.
            assert all(f.stat().st_size >= SMALL.file_bytes for f in files[:-1])
            for f in files:
                meta = pq.ParquetFile(f).metadata
                assert all(
                    meta.row_group(i).total_byte_size < 2 * SMALL.row_group_bytes for i in range(meta.num_row_groups)
                )
        dataset = load(root, config, tmp_path / "hf")
        assert {s: len(d) for s, d in dataset.items()} == result.counts[config]
    assert len(result.files["sso"]["train"]) > 2  # the limits above did cut files
    info = json.loads((root / "dataset_info.json").read_text())
    # One LLaMA-Factory entry per file of every split (it reads one file per entry).
    assert sorted(e["file_name"] for e in info.values()) == sorted(
        f"data/sso_reference/{name}" for names in result.files["sso_reference"].values() for name in names
    )
    assert all(e["formatting"] == "sso" for e in info.values())


KILLABLE_EXPORT = """
import json, os, sys
from pathlib import Path
import yaml
from ssogen.output.export import ExportLimits, export_folder
from ssogen.inputs.library import Templates
from ssogen.output.store import OutputFolder

root, die_in_swap = Path(sys.argv[1]), sys.argv[2] == "swap"
if die_in_swap:  # the process dies the moment the new data/ would be renamed in (the old one is out already)
    real = Path.replace
    def replace(self, target):
        if Path(target).name == "data":
            os._exit(9)
        return real(self, target)
    Path.replace = replace
folder = OutputFolder(root)
settings = yaml.safe_load((root / "ssogen.yaml").read_text())
with folder.lock("export test"):
    export_folder(folder, json.loads(sys.argv[3]), templates=Templates(None), settings=settings, seed=0,
                  test_size=0.2, limits=ExportLimits(**json.loads(sys.argv[4])))
"""


def killable_export(root: Path, order: list[str], limits: ExportLimits, die_in_swap: bool = False) -> subprocess.Popen:
    limits_json = json.dumps({k: getattr(limits, k) for k in ("file_bytes", "row_group_bytes", "bucket_bytes")})
    mode = "swap" if die_in_swap else "-"
    return subprocess.Popen(
        [sys.executable, "-c", KILLABLE_EXPORT, str(root), mode, json.dumps(order), limits_json],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )


def snapshot(root: Path) -> dict[str, bytes]:
    visible = [*(root / "data").rglob("*"), root / "README.md", root / "dataset_info.json"]
    return {str(p.relative_to(root)): p.read_bytes() for p in visible if p.is_file()}


@pytest.mark.slow
def test_a_kill_during_the_export_leaves_the_previous_export_whole(tmp_path, caplog):
    root = tmp_path / "out"
    folder, made = build_folder(root, list(range(40)), answer_bytes=2000)
    old_order = [make_record(i)["prompt_id"] for i in range(40)]
    export(folder, made, old_order)
    previous = snapshot(root)
    for start in range(40, 1000, 50):
        folder.write_chunk([record(i, 2000) for i in range(start, start + 50)])
    order = [make_record(i)["prompt_id"] for i in range(1000)]

    proc = killable_export(root, order, SMALL)
    deadline = time.monotonic() + 120
    while not (root / STAGING / "data").exists():  # the new export has started to be written
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert snapshot(root) == previous  # not one file of data/, the card or dataset_info changed
    assert sum(len(s) for s in load(root, "sso", tmp_path / "hf").values()) == 40

    with caplog.at_level(logging.INFO, logger="ssogen.output.swap"), OutputFolder(root).lock("the next command"):
        assert "removing an unfinished export" in caplog.text
    assert not (root / STAGING).exists()
    export(folder, made, order)
    assert sum(len(s) for s in load(root, "sso", tmp_path / "hf").values()) == 1000


def test_a_kill_in_the_middle_of_the_swap_is_finished_by_the_next_command(tmp_path, caplog):
    root = tmp_path / "out"
    folder, made = build_folder(root, list(range(30)))
    export(folder, made, [make_record(i)["prompt_id"] for i in range(30)])
    folder.write_chunk([record(i) for i in range(30, 45)])
    order = [make_record(i)["prompt_id"] for i in range(45)]

    proc = killable_export(root, order, SMALL, die_in_swap=True)
    assert proc.wait(timeout=120) == 9, proc.stderr.read()[-2000:]
    assert not (root / "data").exists() or sorted(ids_of(root, "sso")) in (sorted(order[:30]), sorted(order))

    with caplog.at_level(logging.WARNING, logger="ssogen.output.swap"), OutputFolder(root).lock("the next command"):
        assert "finishing the export of" in caplog.text
    assert sorted(ids_of(root, "sso")) == sorted(order)  # the new export, whole
    assert sum(len(s) for s in load(root, "sso", tmp_path / "hf").values()) == 45
    assert "kept **45**" in (root / "README.md").read_text()
    assert not (root / STAGING).exists() and not (root / ".ssogen" / "export-old").exists()


def shard_folders(tmp_path: Path, queries: Path) -> list[Path]:
    """Two shard folders of one build whose every query is finished (synthetic records)."""
    listed = load_queries(str(queries))
    everything = [q.prompt_id for q in listed.queries + listed.empty]
    folders = []
    for index in range(2):
        folder = OutputFolder(tmp_path / f"shard{index}")
        config = BuildConfig(queries=str(queries), num_shards=2, shard_index=index)
        made = run_settings(config, ModelRef(path="m", name="m", revision="r"), Templates(None), ids_digest(everything))
        folder.prepare(made, overwrite=False)
        mine = [q for q in listed.queries if shard_of(q.prompt_id, 2) == index]
        folder.write_chunk([record(i, prompt_id=q.prompt_id, prompt=q.prompt) for i, q in enumerate(mine)])
        folders.append(folder.root)
    return folders


@pytest.mark.slow
def test_the_same_merge_run_twice_gives_the_same_rows_never_doubled(tmp_path):
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"prompt": f"Question number {i}?"}) + "\n" for i in range(12)))
    first_shard, second_shard = shard_folders(tmp_path, queries)
    merged = tmp_path / "merged"

    partial = run_cli("merge", str(first_shard), "--output", str(merged))  # one shard was not done yet
    assert partial.returncode == 0, partial.stderr[-3000:]
    once = run_cli("merge", str(first_shard), str(second_shard), "--output", str(merged))
    assert once.returncode == 0, once.stderr[-3000:]
    files = snapshot(merged)
    twice = run_cli("merge", str(first_shard), str(second_shard), "--output", str(merged))  # the Slurm flow, redone
    assert twice.returncode == 0, twice.stderr[-3000:]

    ids = ids_of(merged, "sso")
    assert len(ids) == 12 and len(set(ids)) == 12
    assert snapshot(merged) == files  # the same folder, byte for byte
    expected = [q.prompt_id for q in load_queries(str(queries)).queries]
    assert ids_of(merged, "sso", "train") == [pid for pid in expected if pid in set(ids_of(merged, "sso", "train"))]
    assert "merged 0 queries from 2 folders" in twice.stderr and "(12 were there already)" in twice.stderr


@pytest.mark.slow
def test_the_exports_peak_memory_does_not_grow_with_the_rows(tmp_path):
    # Bounds made small so that both sizes fill them; `python -m tests.export_memory` measures the defaults.
    limits = {"file_bytes": 16_000_000, "row_group_bytes": 4 * 2**20, "bucket_bytes": 4 * 2**20}
    small = measure(800, tmp_path, limits=limits)
    large = measure(3200, tmp_path, limits=limits)
    assert large["rows"] == 3200 and large["sso_train_files"] >= 2
    # Before streaming, each row cost about 0.18 MiB (+430 MiB here); now the peak is the same give or take.
    assert large["peak_rss_mib"] < small["peak_rss_mib"] + 100, (small, large)
    assert large["largest_row_group_mib"] < 8


def test_export_order_is_by_prompt_id_when_the_query_list_is_unknown(tmp_path):
    folder, made = build_folder(tmp_path / "out", list(range(25)))
    export(folder, made, None, test_size=0.0)
    ids = ids_of(tmp_path / "out", "sso")
    assert ids == sorted(ids) and len(ids) == 25


def test_a_previous_exports_files_and_plots_are_replaced_never_mixed_in(tmp_path):
    folder, made = build_folder(tmp_path / "out", list(range(5)))
    old = tmp_path / "out" / "data" / "sso"
    old.mkdir(parents=True)
    (old / "train-00000-of-00002.parquet").write_bytes(b"a file of an older export")
    (tmp_path / "out" / "plots").mkdir()
    export(folder, made, [make_record(i)["prompt_id"] for i in range(5)], test_size=0.0)
    (only,) = (tmp_path / "out" / "data" / "sso").iterdir()
    assert only.name == "train-00000-of-00001.parquet" and pq.read_table(only).num_rows == 5
    assert not (tmp_path / "out" / "plots").exists()  # the previous export's plots went with it
