"""Chunks at resume: damaged or foreign ones are named, set aside (never deleted) and their queries redone; chunks
say what wrote them; chunk names sort at any count; a folder of another version or other queries is refused."""

from __future__ import annotations

import json
import logging
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ssogen import __version__
from ssogen.config import BuildConfig
from ssogen.errors import UsageError
from ssogen.generation.plan import run_settings
from ssogen.inputs.library import Templates
from ssogen.inputs.models import ModelRef
from ssogen.output.export import export_folder
from ssogen.output.gather import DamagedChunk
from ssogen.output.store import CHUNK_SCHEMA, CHUNKS_DIR, SET_ASIDE_DIR, OutputFolder, ids_digest
from tests.conftest import BUILT_ARGS, QUERIES, build_in_process, make_record, run_cli


def settings(seed: int = 0, version: str = __version__, ids: tuple[str, ...] = ()) -> dict:
    made = run_settings(BuildConfig(seed=seed), ModelRef(path="m", name="m", revision="r"), Templates(None))
    made["run"]["ssogen_version"] = version
    made["run"]["queries_hash"] = ids_digest(ids) if ids else None
    return made


def rows(*numbers: int) -> list[dict]:
    return [{**make_record(i), "drop_reason": None} for i in numbers]


def folder_with_chunks(root, *chunks: list[dict], seed: int = 0) -> OutputFolder:
    folder = OutputFolder(root)
    folder.prepare(settings(seed), overwrite=False)
    for chunk in chunks:
        folder.write_chunk(chunk)
    return folder


def test_damaged_and_foreign_chunks_are_named_set_aside_and_their_queries_not_counted_done(tmp_path, caplog):
    folder = folder_with_chunks(tmp_path / "out", rows(0, 1), rows(2, 3), rows(4, 5), rows(6, 7), rows(8, 9))
    good, truncated, text, other_settings, other_version = folder.chunk_files()
    truncated.write_bytes(truncated.read_bytes()[:-200])  # a copy cut short
    text.write_text("not parquet at all\n")
    shutil.copy(folder_with_chunks(tmp_path / "other", rows(6, 7), seed=1).chunk_files()[0], other_settings)
    table = pq.read_table(other_version)
    stamp = json.loads(table.schema.metadata[b"ssogen"]) | {"version": "0.0.1"}
    pq.write_table(table.replace_schema_metadata({b"ssogen": json.dumps(stamp).encode()}), other_version)
    odd_schema = folder.chunks / "chunk-00000005.parquet"
    fewer_columns = pa.Table.from_pylist(rows(10), schema=CHUNK_SCHEMA).drop_columns(["weight"])
    pq.write_table(fewer_columns.replace_schema_metadata(pq.read_schema(good).metadata), odd_schema)
    unstamped = folder.chunks / "chunk-00000006.parquet"  # as ssogen 0.1.0 wrote them before chunks were stamped
    pq.write_table(pa.Table.from_pylist(rows(11), schema=CHUNK_SCHEMA), unstamped)
    sizes = {p.name: p.stat().st_size for p in folder.chunks.iterdir()}

    with caplog.at_level(logging.WARNING, logger="ssogen.output.store"):
        done = folder.resume()

    assert done == {make_record(i)["prompt_id"] for i in (0, 1)}
    assert folder.chunk_files() == [good]
    said = caplog.text
    assert "chunk .ssogen/chunks/chunk-00000001.parquet is damaged: not readable as Parquet (truncated" in said
    assert "chunk .ssogen/chunks/chunk-00000002.parquet is damaged: not readable as Parquet" in said
    assert "chunk .ssogen/chunks/chunk-00000003.parquet belongs to other settings (run " in said
    assert (
        f"chunk .ssogen/chunks/chunk-00000004.parquet was written by ssogen 0.0.1 (this is ssogen {__version__})"
        in (said)
    )
    assert "chunk .ssogen/chunks/chunk-00000005.parquet has another record schema than this ssogen writes" in said
    assert "chunk .ssogen/chunks/chunk-00000006.parquet was not written by this version of ssogen" in said
    assert said.count("(kept, not deleted); its queries will be done again") == 6
    aside = {p.name: p.stat().st_size for p in (tmp_path / "out" / SET_ASIDE_DIR).iterdir()}
    assert aside == {
        "chunk-00000001.damaged.parquet": sizes["chunk-00000001.parquet"],
        "chunk-00000002.damaged.parquet": sizes["chunk-00000002.parquet"],
        "chunk-00000003.foreign.parquet": sizes["chunk-00000003.parquet"],
        "chunk-00000004.foreign.parquet": sizes["chunk-00000004.parquet"],
        "chunk-00000005.foreign.parquet": sizes["chunk-00000005.parquet"],
        "chunk-00000006.foreign.parquet": sizes["chunk-00000006.parquet"],
    }
    # New chunks never reuse a set-aside chunk's number.
    assert folder.write_chunk(rows(2, 3)).name == "chunk-00000007.parquet"
    assert OutputFolder(tmp_path / "out").write_chunk(rows(4)).name == "chunk-00000008.parquet"


def test_a_chunk_with_a_damaged_page_is_caught_at_resume(tmp_path):
    folder = folder_with_chunks(tmp_path / "out", rows(0, 1, 2))
    (path,) = folder.chunk_files()
    data = bytearray(path.read_bytes())
    start = data.find(b"good 1")
    data[start : start + 6] = b"GOOD 1"  # one flipped word inside a page: the footer is intact
    path.write_bytes(bytes(data))
    assert folder.resume() == set()
    assert [p.name for p in folder.set_aside.iterdir()] == ["chunk-00000000.damaged.parquet"]


def test_a_chunk_that_fails_during_the_export_is_set_aside_and_the_previous_export_kept(tmp_path):
    folder = folder_with_chunks(tmp_path / "out", rows(0, 1), rows(2, 3))
    order = [make_record(i)["prompt_id"] for i in range(4)]
    made = settings()
    export_folder(folder, order, templates=Templates(None), settings=made, seed=0, test_size=0.0)
    before = {p: p.read_bytes() for p in (tmp_path / "out" / "data").rglob("*.parquet")}
    second = folder.chunk_files()[1]
    data = bytearray(second.read_bytes())
    start = data.find(b"bad 3")
    data[start : start + 5] = b"BAD 3"
    second.write_bytes(bytes(data))
    with pytest.raises(DamagedChunk, match="run the same command again to redo its queries") as failed:
        export_folder(folder, order, templates=Templates(None), settings=made, seed=0, test_size=0.0)
    assert str(second) in str(failed.value) and failed.value.exit_code == 1
    assert {p: p.read_bytes() for p in (tmp_path / "out" / "data").rglob("*.parquet")} == before
    assert [p.name for p in folder.set_aside.iterdir()] == ["chunk-00000001.damaged.parquet"]


def test_chunk_names_sort_as_numbers_at_any_count(tmp_path):
    folder = folder_with_chunks(tmp_path / "out")
    folder.chunks.mkdir(parents=True)
    template = folder_with_chunks(tmp_path / "t", rows(0)).chunk_files()[0]
    for name in ("chunk-99999.parquet", "chunk-100000.parquet", "chunk-9.parquet"):
        shutil.copy(template, folder.chunks / name)
    assert [p.name for p in folder.chunk_files()] == ["chunk-9.parquet", "chunk-99999.parquet", "chunk-100000.parquet"]
    assert folder.write_chunk(rows(1)).name == "chunk-00100001.parquet"
    assert [p.name for p in folder.chunk_files()][-1] == "chunk-00100001.parquet"


def test_every_chunk_says_what_wrote_it(tmp_path):
    folder = folder_with_chunks(tmp_path / "out", rows(0))
    stamp = json.loads(pq.read_schema(folder.chunk_files()[0]).metadata[b"ssogen"])
    assert stamp["version"] == __version__ and stamp["run"] == folder.run_digest and stamp["schema"]


def test_a_folder_built_by_another_version_is_refused_naming_both(tmp_path):
    OutputFolder(tmp_path / "out").prepare(settings(version="0.0.9"), overwrite=False)
    with pytest.raises(UsageError) as refused:
        OutputFolder(tmp_path / "out").prepare(settings(), overwrite=False)
    message = str(refused.value)
    assert f"ssogen_version: '0.0.9' -> '{__version__}'" in message
    assert f"it was built by ssogen 0.0.9, this is {__version__}" in message and "--overwrite" in message


def test_the_fingerprint_covers_the_queries_content_and_the_version():
    a = settings(ids=("a", "b", "c"))["run"]
    assert a["ssogen_version"] == __version__
    assert a["queries_hash"] == ids_digest(["a", "b", "c"])
    assert ids_digest(["a", "b"]) != ids_digest(["a", "b", "c"]) != ids_digest(["b", "a", "c"])


@pytest.mark.slow
def test_a_resume_after_removing_a_query_is_refused_and_the_query_never_exported(tmp_path):
    queries = tmp_path / "q.jsonl"
    prompts = ["Name a colour.", "Name a fruit.", "My card number is 4111 1111 1111 1111."]
    queries.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    out = tmp_path / "out"
    from ssogen.generation.plan import plan_build

    plan = plan_build(BuildConfig(queries=str(queries), output=out))
    plan.folder.prepare(plan.settings, overwrite=False)
    done = [make_record(i, prompt_id=q.prompt_id, prompt=q.prompt) for i, q in enumerate(plan.queries.queries)]
    plan.folder.write_chunk([{**row, "drop_reason": None} for row in done])
    queries.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts[:2]))  # personal data removed

    rerun = run_cli("build", "--queries", str(queries), "--output", str(out))
    assert rerun.returncode == 2, rerun.stderr[-2000:]
    assert "queries_hash: " in rerun.stderr and "the queries are not the same ones" in rerun.stderr
    assert not (out / "data").exists()


def test_a_truncated_chunk_and_a_chunk_of_other_settings_are_set_aside_and_redone(
    tmp_path, built_folder, engine, caplog
):
    out = tmp_path / "out"
    shutil.copytree(built_folder, out)
    first, second, _ = OutputFolder(out).chunk_files()
    first.write_bytes(first.read_bytes()[:1000])
    foreign = folder_with_chunks(tmp_path / "other", rows(0, 1, 2), seed=1).chunk_files()[0]
    shutil.copy(foreign, second)

    caplog.set_level("INFO")
    build_in_process(engine, "--queries", str(QUERIES), *BUILT_ARGS, "--output", str(out))
    said = caplog.text
    assert f"chunk {first.relative_to(out)} is damaged: not readable as Parquet" in said
    assert f"chunk {second.relative_to(out)} belongs to other settings" in said
    assert "resuming: 3 of 9 queries already done" in said
    assert sorted(p.name for p in (out / SET_ASIDE_DIR).iterdir()) == [
        f"{first.stem}.damaged.parquet",
        f"{second.stem}.foreign.parquet",
    ]
    files = [*(out / "data" / "sso").glob("*.parquet"), *(out / "data" / "dropped").glob("*.parquet")]
    ids = pd.concat([pd.read_parquet(f, columns=["prompt_id"]) for f in files]).prompt_id
    reference = [*(built_folder / "data" / "sso").glob("*.parquet"), *(built_folder / "data" / "dropped").glob("*")]
    assert ids.is_unique and set(ids) == set(pd.concat([pd.read_parquet(f) for f in reference]).prompt_id)
    assert len(list((out / CHUNKS_DIR).glob("chunk-*.parquet"))) == 3
