"""Is a built folder ready to publish, and exactly what does a push send from it.

Owns: refusing a folder that is not a finished dataset (a build or merge that was interrupted: no card, a
config whose files are missing, or finished chunks that the exported data does not hold yet; a single
shard of a sharded build), the list of files a push sends (``.ssogen/`` working state excluded), the card
as published (its ``load_dataset("…")`` snippets naming the repo it is pushed to), and the content
digests a push compares with the Hub's (git blob id for regular files, sha256 for LFS / Xet ones).

The local folder is only ever read here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from ssogen.errors import UsageError
from ssogen.output.store import CHUNKS_DIR, SETTINGS_FILE

CARD = "README.md"
# The card's own snippets: `load_dataset("<this dataset>", ...`.
_SNIPPET = re.compile(r'load_dataset\("([^"\n]*)"')
# Exported configs that carry every query's id: a kept query is in `sso`, a dropped one in `dropped`.
_ID_CONFIGS = ("sso", "dropped")


def read_settings(folder: Path) -> dict[str, Any]:
    """The folder's ``ssogen.yaml`` (empty when unreadable: the checks below then say what is missing)."""
    try:
        return yaml.safe_load((folder / SETTINGS_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def check_finished(folder: Path) -> dict[str, Any]:
    """Refuse a folder that is not a whole dataset; return its settings.

    Raises `UsageError` naming what is missing and the command that finishes it.
    """
    settings = read_settings(folder)
    run = settings.get("run", {}) if isinstance(settings.get("run"), dict) else {}
    finish = (
        "re-run the same `ssogen merge` command"
        if run.get("merged_from")
        else "re-run the same `ssogen build` command (it resumes from the finished chunks)"
    )
    shards = int(run.get("num_shards") or 1)
    if shards > 1:
        raise UsageError(
            f"cannot push {folder}: it is shard {int(run.get('shard_index') or 0)} of {shards}, a fraction of the "
            f"data. Merge the shards first, then push the merged folder: "
            f"`ssogen merge SHARD_FOLDERS... --output MERGED && ssogen push MERGED ORG/NAME`."
        )
    configs = _card_configs(folder)
    if configs is None:
        raise UsageError(
            f"cannot push {folder}: it has no dataset card ({CARD} with its configs), which ssogen writes last: "
            f"the build was interrupted before its export. Nothing was uploaded. To finish it, {finish}."
        )
    for name, patterns in configs.items():
        if not any(any(folder.glob(p)) for p in patterns):
            raise UsageError(
                f"cannot push {folder}: its card lists the config {name!r} but no file matches "
                f"{', '.join(patterns)}: the export is incomplete. Nothing was uploaded. To finish it, {finish}."
            )
    missing = _chunk_ids(folder) - _exported_ids(folder)
    if missing:
        raise UsageError(
            f"cannot push {folder}: {len(missing)} finished queries in {CHUNKS_DIR} are not in its data/ yet "
            f"(the run was interrupted after generating them, before the export). Nothing was uploaded. "
            f"To finish it, {finish}."
        )
    return settings


def _card_configs(folder: Path) -> dict[str, list[str]] | None:
    """{config: data_files patterns} from the card's front matter; None when there is no usable card."""
    try:
        text = (folder / CARD).read_text(encoding="utf-8")
    except OSError:
        return None
    parts = text.split("---", 2)
    if not text.startswith("---") or len(parts) < 3:
        return None
    try:
        header = yaml.safe_load(parts[1]) or {}
    except yaml.YAMLError:
        return None
    entries = header.get("configs") if isinstance(header, dict) else None
    configs: dict[str, list[str]] = {}
    for entry in entries if isinstance(entries, list) else []:
        files = entry.get("data_files") if isinstance(entry, dict) else None
        if isinstance(files, str):
            files = [files]
        patterns = [f["path"] if isinstance(f, dict) else str(f) for f in files or []]
        configs[str(entry.get("config_name"))] = [p for p in patterns if isinstance(p, str)]
    return configs or None


def _ids_in(paths: list[Path]) -> set[str]:
    ids: set[str] = set()
    for path in paths:
        ids.update(pq.read_table(path, columns=["prompt_id"]).column("prompt_id").to_pylist())
    return ids


def _chunk_ids(folder: Path) -> set[str]:
    return _ids_in(sorted((folder / CHUNKS_DIR).glob("*.parquet")))


def _exported_ids(folder: Path) -> set[str]:
    return _ids_in([p for name in _ID_CONFIGS for p in sorted((folder / "data" / name).glob("*.parquet"))])


@dataclass
class Outbox:
    """What one push sends: repo path -> local file, and the card's text as published."""

    folder: Path
    files: list[str]
    card: bytes | None = None
    _digests: dict[str, tuple[str, str]] = field(default_factory=dict)

    def content(self, path: str) -> bytes | Path:
        return self.card if path == CARD and self.card is not None else self.folder / path

    def digests(self, path: str) -> tuple[str, str]:
        """(git blob id, sha256) of what is sent as ``path``: the Hub reports one or the other per file."""
        if path not in self._digests:
            self._digests[path] = _digests(self.content(path))
        return self._digests[path]


def outbox(folder: Path, repo_id: str) -> Outbox:
    """The files of ``folder`` a push sends to ``repo_id``, the card naming that repo in its snippets."""
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    # Same exclusions as upload_folder (.git, huggingface_hub's local cache folders).
    # .ssogen/ holds a build's resumable working state (chunks), not part of the dataset.
    files = list(filter_repo_objects(paths, ignore_patterns=[*DEFAULT_IGNORE_PATTERNS, ".ssogen/*"]))
    card = None
    if CARD in files:
        text = (folder / CARD).read_text(encoding="utf-8")
        card = card_for_repo(text, repo_id).encode("utf-8")
    return Outbox(folder=folder, files=files, card=card)


def card_for_repo(text: str, repo_id: str) -> str:
    """The card with its snippets loading ``repo_id`` instead of the folder or id it was written for."""
    first = _SNIPPET.search(text)
    if first is None or first.group(1) == repo_id:
        return text
    return text.replace(f'load_dataset("{first.group(1)}"', f'load_dataset("{repo_id}"')


def _digests(content: bytes | Path) -> tuple[str, str]:
    # Streamed, so a multi-GB parquet file is never held in memory: a git blob id is sha1("blob <size>\0" + data).
    if isinstance(content, bytes):
        size, chunks = len(content), iter([content])
    else:
        size, chunks = content.stat().st_size, _read_chunks(content)
    git, sha = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False), hashlib.sha256()
    for chunk in chunks:
        git.update(chunk)
        sha.update(chunk)
    return git.hexdigest(), sha.hexdigest()


def _read_chunks(path: Path, size: int = 1 << 20):
    with path.open("rb") as handle:
        while chunk := handle.read(size):
            yield chunk
