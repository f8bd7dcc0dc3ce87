"""Publish a dataset folder to the Hugging Face Hub: ssogen's only code that writes to the Hub.

Owns: checking the ``--push-to-hub`` repo id, creating the dataset repo, uploading the
folder, tagging the round, retrying transient failures, and turning client errors into
:class:`~ssogen.errors.PublishError` messages that say how to retry and never show the token.

Round policy
    Every push is ONE commit on ``revision`` (default ``main``; any other branch is first
    created from ``main`` if missing) holding the whole folder. Files under ``data/`` that
    the branch had and the folder lacks are deleted in that same commit, so a round with
    fewer parquet shards leaves no leftovers; files outside ``data/`` that the folder lacks
    (``.gitattributes``, ...) are kept. The commit is then tagged ``round-<r>``: the branch
    always shows the latest round and every round stays loadable with
    ``revision="round-<r>"``. A round's tag never moves silently: if ``round-<r>`` already
    exists the push refuses before uploading anything, unless ``overwrite_round=True``
    (``--overwrite-round``), which deletes the tag and recreates it on the new commit.

The local folder is only ever read. Authentication: the ``token`` argument, else the
``HF_TOKEN`` environment variable, else whatever ``huggingface_hub`` finds (its login).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects
from huggingface_hub.utils import validate_repo_id as _hf_validate_repo_id

from ssogen.errors import PublishError, UsageError

try:  # huggingface_hub >= 1.x speaks through httpx2; older releases through httpx
    import httpx2 as _http
except ImportError:  # pragma: no cover
    import httpx as _http  # type: ignore[no-redef]

logger = logging.getLogger(__name__)

__all__ = ["PushResult", "push_folder", "validate_repo_id"]

REPO_TYPE = "dataset"
DEFAULT_BRANCH = "main"
# Only data/ is pruned: the card, settings and .gitattributes are always re-sent or kept.
PRUNED_PREFIX = "data/"
_TRANSIENT_STATUS = frozenset({408, 429})
_AUTH_STATUS = frozenset({401, 403})
# Belt and braces beside the known-token scrub: Hub tokens have a recognisable shape.
_TOKEN_SHAPES = re.compile(r"(hf_[A-Za-z0-9]{8,}|Bearer\s+\S+)")

T = TypeVar("T")


@dataclass(frozen=True)
class PushResult:
    """Where a push landed: the branch commit and the round tag pointing at it."""

    repo_id: str
    revision: str
    commit_oid: str
    commit_url: str
    tag: str


def validate_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is a valid ``ORG/NAME`` Hub id, else raise :class:`UsageError`."""
    problem = f"--push-to-hub expects a Hub dataset id of the form ORG/NAME, got {repo_id!r}"
    # The Hub's own validator also accepts a bare NAME (it means the user's namespace);
    # ssogen wants the owner spelled out so a push never lands somewhere unexpected.
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise UsageError(problem)
    try:
        _hf_validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UsageError(f"{problem}: {err}") from None
    return repo_id


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    round: int,  # shadows the builtin on purpose: the name matches the `round` column and --round
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    overwrite_round: bool = False,
    max_retries: int = 4,
    backoff_seconds: float = 1.0,
    endpoint: str | None = None,
) -> PushResult:
    """Upload ``folder`` to the dataset repo ``repo_id`` in one commit and tag it ``round-<round>``.

    ``endpoint`` defaults to huggingface_hub's (``HF_ENDPOINT`` as read at its import).
    Transient failures (HTTP 408/429/5xx, connection errors) are retried ``max_retries``
    times with exponential backoff from ``backoff_seconds``. Raises :class:`UsageError` for
    bad arguments and :class:`PublishError` for everything the Hub refuses or that fails.
    """
    validate_repo_id(repo_id)
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"cannot push {folder}: not a folder")
    if isinstance(round, bool) or not isinstance(round, int) or round < 0:
        raise UsageError(f"round must be a non-negative integer, got {round!r}")
    files = _local_files(folder)
    if not files:
        raise UsageError(f"cannot push {folder}: it holds no files")
    # An explicit token keeps HF_TOKEN ahead of a stored login; None lets the client decide.
    token = token or os.environ.get("HF_TOKEN") or None
    pusher = _Pusher(
        api=HfApi(endpoint=endpoint, token=token),
        folder=folder,
        repo_id=repo_id,
        secret=token or _known_token(),
        max_retries=max(0, max_retries),
        backoff_seconds=max(0.0, backoff_seconds),
    )
    return pusher.push(
        files,
        round_=round,
        private=private,
        branch=revision or DEFAULT_BRANCH,
        overwrite_round=overwrite_round,
    )


def _local_files(folder: Path) -> list[str]:
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    # Same exclusions as upload_folder (.git, huggingface_hub's local cache folders).
    # .ssogen/ holds a build's resumable working state (chunks), not part of the dataset.
    ignore = [*DEFAULT_IGNORE_PATTERNS, ".ssogen/*"]
    return list(filter_repo_objects(paths, ignore_patterns=ignore))


def _known_token() -> str | None:
    # Only used to scrub messages, so a failure to read the login must not stop the push.
    try:
        return get_token()
    except Exception:
        return None


class _Pusher:
    """One push: the client, what to scrub from messages, and the retry policy."""

    def __init__(
        self,
        *,
        api: HfApi,
        folder: Path,
        repo_id: str,
        secret: str | None,
        max_retries: int,
        backoff_seconds: float,
    ) -> None:
        self.api = api
        self.folder = folder
        self.repo_id = repo_id
        self.secret = secret
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds

    def push(self, files: list[str], *, round_: int, private: bool, branch: str, overwrite_round: bool) -> PushResult:
        api, repo_id, tag = self.api, self.repo_id, f"round-{round_}"
        logger.info("pushing %d files from %s to %s@%s as %s", len(files), self.folder, repo_id, branch, tag)
        self._retrying(
            "creating the dataset repo",
            lambda: api.create_repo(repo_id, repo_type=REPO_TYPE, exist_ok=True, private=private),
        )
        refs = self._retrying("listing refs", lambda: api.list_repo_refs(repo_id, repo_type=REPO_TYPE))
        tag_exists = any(t.name == tag for t in refs.tags)
        if tag_exists and not overwrite_round:
            raise PublishError(
                f"tag {tag} already exists in {repo_id}: round {round_} was published before. "
                f"Nothing was uploaded. Pass --overwrite-round to replace it "
                f"({self._retry_command()} --overwrite-round), or publish under another round."
            )
        if branch != DEFAULT_BRANCH and all(b.name != branch for b in refs.branches):
            self._retrying(
                f"creating branch {branch}",
                lambda: api.create_branch(repo_id, branch=branch, repo_type=REPO_TYPE, exist_ok=True),
            )

        # Planned and sent as one unit per attempt: operations are single-use, and
        # re-reading the head makes a retry after a commit whose answer was lost a no-op
        # (every file then matches) instead of a second commit.
        def commit_once() -> tuple[str, str]:
            head = self._branch_head(branch)
            remote = api.list_repo_files(repo_id, repo_type=REPO_TYPE, revision=head) if head else []
            wanted = set(files)
            stale = [p for p in remote if p.startswith(PRUNED_PREFIX) and p not in wanted]
            operations: list[CommitOperationAdd | CommitOperationDelete] = [
                CommitOperationDelete(path_in_repo=p, is_folder=False) for p in stale
            ]
            operations += [CommitOperationAdd(path_in_repo=p, path_or_fileobj=self.folder / p) for p in files]
            # create_commit, not upload_folder: with hf_xet installed upload_folder splits big
            # folders into several commits, and a round must be exactly one commit.
            info = api.create_commit(
                repo_id,
                operations,
                commit_message=f"ssogen: publish round {round_}",
                commit_description=f"{len(files)} files from ssogen, {len(stale)} stale data files removed.",
                repo_type=REPO_TYPE,
                revision=branch,
                parent_commit=head,
            )
            return info.oid, info.commit_url

        oid, url = self._retrying(f"uploading round {round_}", commit_once)
        logger.info("committed round %d to %s@%s: %s", round_, repo_id, branch, oid)

        if tag_exists:
            self._retrying(f"deleting the old tag {tag}", lambda: self._delete_tag(tag))
        self._retrying(
            f"creating tag {tag}",
            lambda: api.create_tag(
                repo_id,
                tag=tag,
                tag_message=f"ssogen round {round_}",
                revision=oid,
                repo_type=REPO_TYPE,
                exist_ok=True,  # a retry after a lost answer finds its own tag; checked below
            ),
        )
        refs = self._retrying("listing refs", lambda: api.list_repo_refs(repo_id, repo_type=REPO_TYPE))
        target = next((t.target_commit for t in refs.tags if t.name == tag), None)
        if target != oid:
            raise PublishError(
                f"tag {tag} in {repo_id} points at {target}, not at the commit just pushed ({oid}): "
                f"someone else published round {round_} meanwhile. "
                f"To retry: {self._retry_command()} --overwrite-round"
            )
        return PushResult(repo_id=repo_id, revision=branch, commit_oid=oid, commit_url=url, tag=tag)

    def _branch_head(self, branch: str) -> str | None:
        refs = self.api.list_repo_refs(self.repo_id, repo_type=REPO_TYPE)
        return next((b.target_commit for b in refs.branches if b.name == branch), None)

    def _delete_tag(self, tag: str) -> None:
        try:
            self.api.delete_tag(self.repo_id, tag=tag, repo_type=REPO_TYPE)
        except HfHubHTTPError as err:
            # Already gone (e.g. our own earlier attempt succeeded but its answer was lost).
            if err.response is None or err.response.status_code != 404:
                raise

    def _retrying(self, what: str, action: Callable[[], T]) -> T:
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return action()
            except Exception as err:
                if not _is_transient(err) or attempt == attempts:
                    raise self._failure(what, err, attempt) from None
                delay = self.backoff_seconds * 2 ** (attempt - 1)
                logger.warning(
                    "%s for %s failed (%s); retry %d/%d in %.2fs",
                    what,
                    self.repo_id,
                    self._scrub(_describe(err)),
                    attempt,
                    self.max_retries,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _failure(self, what: str, err: Exception, attempts: int) -> PublishError:
        status = _status(err)
        if status in _AUTH_STATUS:
            head = (
                f"authentication failed for {self.repo_id}: set HF_TOKEN or run `huggingface-cli login` "
                f"(the Hub answered HTTP {status} while {what}"
                + ("; the token may lack write access to this namespace)" if status == 403 else ")")
            )
        else:
            tries = f" after {attempts} attempts" if attempts > 1 else ""
            head = f"{what} failed for {self.repo_id}{tries}: {_describe(err)}"
        message = self._scrub(f"{head}.\nThe local folder was not changed. To retry: {self._retry_command()}")
        logger.debug("push failed: %s", message)  # the CLI shows the exception; avoid saying it twice
        return PublishError(message)

    def _retry_command(self) -> str:
        return f"ssogen push {shlex.quote(str(self.folder))} {self.repo_id}"

    def _scrub(self, text: str) -> str:
        if self.secret:
            text = text.replace(self.secret, "***")
        return _TOKEN_SHAPES.sub("***", text)


def _status(err: Exception) -> int | None:
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        return err.response.status_code
    return None


def _is_transient(err: Exception) -> bool:
    if isinstance(err, _http.TransportError):
        return True
    status = _status(err)
    return status is not None and (status >= 500 or status in _TRANSIENT_STATUS)


def _describe(err: Exception) -> str:
    """A one-paragraph account of ``err`` built from its message only, never its request headers."""
    if isinstance(err, HfHubHTTPError):
        status = _status(err)
        detail = err.server_message or str(err).strip().splitlines()[0]
        text = f"HTTP {status}: {detail}" if status is not None else detail
    else:
        text = f"{type(err).__name__}: {err}"
    text = " ".join(text.split())
    return text if len(text) <= 500 else text[:497] + "..."
