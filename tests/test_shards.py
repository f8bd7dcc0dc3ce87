"""Shards and merge: N independent jobs cover every query once, and their merge equals one unsharded run."""

from __future__ import annotations

import pandas as pd
import pytest

from ssogen.generation.plan import shard, shard_of
from ssogen.inputs.sources import load_queries
from tests.conftest import BUILT_ARGS, QUERIES, build_in_process, run_cli


def test_shards_cover_every_query_exactly_once():
    queries = load_queries(str(QUERIES))
    parts = [shard(queries, 4, i) for i in range(4)]
    ids = [q.prompt_id for part in parts for q in part.queries]
    assert sorted(ids) == sorted(q.prompt_id for q in queries.queries)
    assert all(len(part.queries) >= 6 for part in parts)  # 48 queries split roughly evenly
    assert shard_of("00000000000000ff", 4) == 0xFF % 4


def ids(folder, config="sso") -> set[str]:
    return {pid for path in (folder / "data" / config).glob("*.parquet") for pid in pd.read_parquet(path).prompt_id}


@pytest.fixture(scope="module")
def shard_folders(tmp_path_factory, engine):
    """Two shards of the shared build's queries, built in this process (the merge, not the build, is tested here)."""
    folders = []
    for index in range(2):
        out = tmp_path_factory.mktemp(f"shard{index}") / "out"
        args = (*BUILT_ARGS, "--num-shards", "2", "--shard-index", str(index), "--output", str(out))
        summary = build_in_process(engine, "--queries", str(QUERIES), *args)
        assert summary.kept + sum(summary.dropped.values()) > 0
        folders.append(out)
    return folders


def test_two_merged_shards_equal_the_unsharded_run_in_query_ids(shard_folders, built_folder, tmp_path):
    first, second = (ids(f) | ids(f, "dropped") for f in shard_folders)
    assert first and second and not first & second
    merged = tmp_path / "merged"
    result = run_cli("merge", *map(str, shard_folders), "--output", str(merged))
    assert result.returncode == 0, result.stderr[-3000:]
    assert ids(merged) | ids(merged, "dropped") == ids(built_folder) | ids(built_folder, "dropped")
    assert set(p.name for p in (merged / "data").iterdir()) == set(p.name for p in (built_folder / "data").iterdir())
    assert "config_name: dpo" in (merged / "README.md").read_text()


def test_merging_folders_built_with_different_settings_is_refused(shard_folders, tmp_path):
    merged = tmp_path / "merged"
    reseeded = _reseeded_copy(shard_folders[1], tmp_path / "other")
    refused = run_cli("merge", str(shard_folders[0]), str(reseeded), "--output", str(merged))
    assert refused.returncode == 2
    assert "different settings" in refused.stderr and "seed: 0 vs 7" in refused.stderr
    assert not merged.exists()


def _reseeded_copy(folder, target):
    import shutil

    import yaml

    shutil.copytree(folder, target)
    settings = yaml.safe_load((target / "ssogen.yaml").read_text())
    settings["run"]["seed"] = 7
    (target / "ssogen.yaml").write_text(yaml.safe_dump(settings))
    return target
