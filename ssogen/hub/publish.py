"""Publish a dataset folder to the Hugging Face Hub: ssogen's only code that writes to the Hub.

Owns: checking the repo id; the checks run before a build that ends with a push (`preflight_push`: token,
write access, the round's tag, files in the repo that ssogen did not publish), so that a push refused for
any of these reasons is refused before hours of generation; creating the dataset repo and settling its
visibility; uploading a finished folder in one commit and tagging the round. Retries and error messages
are `ssogen.hub.calls`'s; what a folder sends (and whether it is finished) is `ssogen.hub.readiness`'s.

Visibility
    ``private=True`` (--private) makes the repo private, an existing public one included, before any file
    is sent; ``private=False`` (--no-private) makes it public; ``None`` (neither flag) creates a new repo
    with its namespace's default visibility (an organisation may default to private) and leaves an existing
    repo as it is. Either way the visibility is logged and returned in `PushResult.private`.

Round policy
    Every push is ONE commit on ``push_branch`` (default ``main``; another branch is first created from
    ``main`` if missing) holding the whole folder, tagged ``round-<r>``: the branch shows the latest round
    and every round stays loadable with ``revision="round-<r>"``. A round's tag never moves silently: if
    ``round-<r>`` already holds exactly this folder the push does nothing and says so (re-running a
    finished ``build --push-to-hub`` succeeds); if it holds anything else the push refuses before
    uploading, unless ``overwrite_round`` (--overwrite-round) moves the tag to the new commit.

Files in the repo
    ssogen manages the card (README.md), ssogen.yaml, dataset_info.json, ``data/`` and ``plots/``. Managed
    files that the folder lacks are deleted in the same commit (a round with fewer shards, or without the
    plots of an earlier one, leaves nothing behind); other files (.gitattributes, a LICENSE added by hand)
    are kept. A managed file that ssogen did not publish — the user's own dataset in a repo they made, or
    a file edited on the Hub since ssogen's last push, as read from ssogen's last commit on the branch —
    is never deleted or replaced silently: the push refuses and lists each one, unless
    ``replace_repo_data`` (--replace-repo-data).

The local folder is only ever read. Authentication: the ``token`` argument, else the ``HF_TOKEN``
environment variable, else whatever ``huggingface_hub`` finds (its login).
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile

from ssogen.errors import PublishError, UsageError
from ssogen.hub.calls import BACKOFF_SECONDS, MAX_RETRIES, MAX_WAIT_SECONDS, HubCaller, known_token
from ssogen.hub.readiness import CARD, Outbox, check_finished, outbox
from ssogen.hubmeta import validate_repo_id
from ssogen.output.store import SETTINGS_FILE

logger = logging.getLogger(__name__)

__all__ = ["PushOptions", "PushResult", "preflight_push", "push_folder"]

REPO_TYPE = "dataset"
DEFAULT_BRANCH = "main"
# Every ssogen commit is titled so: how a push finds what ssogen itself published on a branch.
COMMIT_TITLE = "ssogen: publish round"
MANAGED_DIRS = ("data/", "plots/")
MANAGED_FILES = frozenset({CARD, SETTINGS_FILE, "dataset_info.json"})
# Roles in an organisation (whoami's roleInOrg) that may create a repo in it.
_WRITER_ROLES = frozenset({"admin", "write", "contributor"})
_LISTED = 20  # files named in a refusal; the rest are counted

T = TypeVar("T")


@dataclass(frozen=True)
class PushOptions:
    """What the user asked of a push; `command` reproduces it as a retry line."""

    private: bool | None = None
    push_branch: str | None = None
    overwrite_round: bool = False
    replace_repo_data: bool = False

    @property
    def branch(self) -> str:
        return self.push_branch or DEFAULT_BRANCH

    def command(self, folder: Path, repo_id: str, **changes: Any) -> str:
        """``ssogen push FOLDER REPO`` with every flag given (and ``changes``), ready to paste."""
        options = replace(self, **changes)
        words = ["ssogen", "push", str(folder), repo_id]
        if options.push_branch:
            words += ["--push-branch", options.push_branch]
        if options.private is not None:
            words.append("--private" if options.private else "--no-private")
        if options.overwrite_round:
            words.append("--overwrite-round")
        if options.replace_repo_data:
            words.append("--replace-repo-data")
        return shlex.join(words)


@dataclass(frozen=True)
class PushResult:
    """Where a push landed: the branch commit and the round tag pointing at it."""

    repo_id: str
    revision: str
    commit_oid: str
    commit_url: str
    tag: str
    private: bool | None = None
    already_published: bool = False  # the tag already held exactly this folder: nothing was sent
    kept: tuple[str, ...] = ()  # files in the repo that ssogen does not manage, left as they were

    def line(self) -> str:
        where = f"{self.repo_id}@{self.revision} (tag {self.tag}, {_visibility(self.private)})"
        if self.already_published:
            return f"{where} already holds exactly this folder (commit {self.commit_oid[:12]}): nothing to push"
        return f"published {where}: commit {self.commit_oid[:12]}"


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    round: int,  # shadows the builtin on purpose: the name matches the `round` column and --round
    token: str | None = None,
    private: bool | None = None,
    push_branch: str | None = None,
    overwrite_round: bool = False,
    replace_repo_data: bool = False,
    max_retries: int = MAX_RETRIES,
    backoff_seconds: float = BACKOFF_SECONDS,
    max_wait_seconds: float = MAX_WAIT_SECONDS,
    endpoint: str | None = None,
) -> PushResult:
    """Upload the finished ``folder`` to the dataset repo ``repo_id`` in one commit tagged ``round-<round>``.

    ``endpoint`` defaults to huggingface_hub's (``HF_ENDPOINT`` as read at its import). Transient failures
    are retried (`ssogen.hub.calls`). Raises :class:`UsageError` for bad arguments or an unfinished folder
    and :class:`PublishError` for everything the Hub refuses or that fails.
    """
    validate_repo_id(repo_id)
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"cannot push {folder}: not a folder")
    if isinstance(round, bool) or not isinstance(round, int) or round < 0:
        raise UsageError(f"round must be a non-negative integer, got {round!r}")
    check_finished(folder)
    out = outbox(folder, repo_id)
    if not out.files:
        raise UsageError(f"cannot push {folder}: it holds no files")
    options = PushOptions(private, push_branch, overwrite_round, replace_repo_data)
    hub = _Hub.connect(
        repo_id,
        token,
        endpoint,
        closing=f"The local folder was not changed. To retry: {options.command(folder, repo_id)}",
        retries=(max_retries, backoff_seconds, max_wait_seconds),
    )
    return _push(hub, out, options, round)


def preflight_push(
    repo_id: str,
    *,
    folder: Path,
    round: int,
    private: bool | None = None,
    push_branch: str | None = None,
    overwrite_round: bool = False,
    replace_repo_data: bool = False,
    token: str | None = None,
    max_retries: int = MAX_RETRIES,
    backoff_seconds: float = BACKOFF_SECONDS,
    max_wait_seconds: float = MAX_WAIT_SECONDS,
    endpoint: str | None = None,
) -> str:
    """Check, before a build that ends with ``--push-to-hub``, everything that would make its push fail.

    A token that the Hub accepts and may write, a namespace it may create the repo in, a round tag that is
    free (or already holds this very folder: a re-run), no file in the repo that ssogen did not publish
    (unless ``replace_repo_data``). With ``private=True`` an existing public repo is made private now.
    Raises :class:`UsageError` naming the fix; returns a line saying what the push will do.
    """
    validate_repo_id(repo_id)
    folder = Path(folder)
    token = token or os.environ.get("HF_TOKEN") or known_token()
    if not token:
        raise UsageError(
            f"--push-to-hub {repo_id}: no Hugging Face token found; set HF_TOKEN or run `hf auth login` "
            f"(checked before generating anything)."
        )
    options = PushOptions(private, push_branch, overwrite_round, replace_repo_data)
    hub = _Hub.connect(
        repo_id,
        token,
        endpoint,
        closing=(
            "Nothing was generated yet. Fix the cause and run the build again, or build without --push-to-hub "
            f"and publish later with `{options.command(folder, repo_id)}`."
        ),
        retries=(max_retries, backoff_seconds, max_wait_seconds),
        auth_error=UsageError,
    )
    who = _token_user(hub, repo_id)
    user = str(who.get("name") or "?")
    info = hub.info()
    if info is None:
        _check_namespace(who, repo_id)
        return f"{user} may create {repo_id}; the push will create it ({_new_visibility(private)})"
    hub.call(
        f"checking write access to {repo_id}", lambda: hub.api.auth_check(repo_id, repo_type=REPO_TYPE, write=True)
    )
    visibility = hub.settle_visibility(True) if private is True else info.private
    tag = f"round-{round}"
    tagged = hub.tag_target(tag)
    if tagged and not overwrite_round:
        if not _finished_copy_of(hub, tagged, folder):
            raise UsageError(
                f"--round {round}: {repo_id} already has {tag} with other content, so the push at the end would "
                f"be refused. Pass --overwrite-round to replace that round, or choose another --round."
            )
        return f"{user} may write {repo_id} ({_visibility(visibility)}); {tag} already holds this folder"
    # A branch that does not exist yet will be made from main: main's files and history are what it starts with.
    branch = options.branch if hub.branch_head(options.branch) else DEFAULT_BRANCH
    foreign = _plan(hub.tree(hub.branch_head(branch)), hub.ssogen_tree(branch), None).foreign
    if foreign and not replace_repo_data:
        raise UsageError(
            _foreign_message(repo_id, foreign, "the push at the end of the build would delete or replace")
            + " Nothing was generated yet. Pass --replace-repo-data to let ssogen replace them, or publish to "
            "another repo."
        )
    return f"{user} may write {repo_id} ({_visibility(visibility)}); {tag} is free"


# --- the push ---------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """What a commit changes in the managed part of the repo, and whose files those are."""

    stale: list[str]  # managed files the folder lacks: deleted in the commit
    foreign: list[str]  # "delete PATH" / "replace PATH" of files ssogen did not publish
    kept: list[str]  # files ssogen does not manage, left alone


def _push(hub: _Hub, out: Outbox, options: PushOptions, round_: int) -> PushResult:
    api, repo_id, branch, tag = hub.api, hub.repo_id, options.branch, f"round-{round_}"
    logger.info("pushing %d files from %s to %s@%s as %s", len(out.files), out.folder, repo_id, branch, tag)
    private = hub.settle_visibility(options.private)
    tagged = hub.tag_target(tag)
    if tagged and hub.holds(tagged, out):
        url = f"{api.endpoint}/datasets/{repo_id}/commit/{tagged}"
        return PushResult(repo_id, branch, tagged, url, tag, private=private, already_published=True)
    if tagged and not options.overwrite_round:
        raise PublishError(
            f"tag {tag} already exists in {repo_id} and holds other content: round {round_} was published before. "
            f"Nothing was uploaded. Pass --overwrite-round to replace it "
            f"({options.command(out.folder, repo_id, overwrite_round=True)}), or publish under another round."
        )
    if branch != DEFAULT_BRANCH and hub.branch_head(branch) is None:
        hub.call(
            f"creating branch {branch}",
            lambda: api.create_branch(repo_id, branch=branch, repo_type=REPO_TYPE, exist_ok=True),
        )
    kept: list[str] = []

    # Planned and sent as one unit per attempt: operations are single-use, and re-reading the head makes a
    # retry after a commit whose answer was lost a no-op (every file then matches) instead of a second commit.
    def commit_once() -> tuple[str, str]:
        head = hub.branch_head(branch)
        plan = _plan(hub.tree(head), hub.ssogen_tree(branch), out)
        if plan.foreign and not options.replace_repo_data:
            raise PublishError(
                _foreign_message(repo_id, plan.foreign, "this push would delete or replace")
                + " Nothing was uploaded. To let ssogen replace them: "
                f"{options.command(out.folder, repo_id, replace_repo_data=True)} (or publish to another repo)."
            )
        kept[:] = plan.kept
        operations: list[CommitOperationAdd | CommitOperationDelete] = [
            CommitOperationDelete(path_in_repo=p, is_folder=False) for p in plan.stale
        ]
        operations += [CommitOperationAdd(path_in_repo=p, path_or_fileobj=out.content(p)) for p in out.files]
        # create_commit, not upload_folder: with hf_xet installed upload_folder splits big
        # folders into several commits, and a round must be exactly one commit.
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=f"{COMMIT_TITLE} {round_}",
            commit_description=f"{len(out.files)} files from ssogen, {len(plan.stale)} stale files removed.",
            repo_type=REPO_TYPE,
            revision=branch,
            parent_commit=head,
        )
        return info.oid, info.commit_url

    oid, url = hub.call(f"uploading round {round_}", commit_once)
    logger.info("committed round %d to %s@%s: %s", round_, repo_id, branch, oid)
    if kept:
        logger.info("kept %d files ssogen does not manage: %s", len(kept), ", ".join(kept[:_LISTED]))
    if tagged:
        hub.call(f"deleting the old tag {tag}", lambda: hub.delete_tag(tag))
    hub.call(
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
    target = hub.tag_target(tag)
    if target != oid:
        raise PublishError(
            f"tag {tag} in {repo_id} points at {target}, not at the commit just pushed ({oid}): "
            f"someone else published round {round_} meanwhile. "
            f"To retry: {options.command(out.folder, repo_id, overwrite_round=True)}"
        )
    return PushResult(repo_id, branch, oid, url, tag, private=private, kept=tuple(kept))


def _plan(head: dict[str, RepoFile], ssogen: dict[str, RepoFile], out: Outbox | None) -> _Plan:
    """Compare the branch head with what the folder sends (``out``; None before a build: not known yet)."""
    stale, foreign, kept = [], [], []
    for path, entry in sorted(head.items()):
        if out is not None and path in out.files:
            verb = None if _same_content(entry, out, path) else "replace"
        elif _managed(path):
            verb = "delete or replace" if out is None else "delete"
            if out is not None:
                stale.append(path)
        else:
            verb = None
            if path != ".gitattributes":  # the Hub's own file of every repo: not worth a word
                kept.append(path)
        published = path in ssogen and ssogen[path].blob_id == entry.blob_id
        if verb and not published:
            foreign.append(f"{verb} {path}")
    return _Plan(stale=stale, foreign=foreign, kept=kept)


def _managed(path: str) -> bool:
    return path in MANAGED_FILES or path.startswith(MANAGED_DIRS)


def _same_content(entry: RepoFile, out: Outbox, path: str) -> bool:
    git_oid, sha256 = out.digests(path)
    # LFS / Xet files are compared by the sha256 of their content, regular ones by their git blob id.
    return entry.lfs.sha256 == sha256 if entry.lfs is not None else entry.blob_id == git_oid


def _foreign_message(repo_id: str, foreign: list[str], action: str) -> str:
    listed = "; ".join(foreign[:_LISTED]) + (f"; and {len(foreign) - _LISTED} more" if len(foreign) > _LISTED else "")
    files = "1 file" if len(foreign) == 1 else f"{len(foreign)} files"
    return (
        f"{repo_id} holds {files} that ssogen did not publish (your own, or edited on the Hub since ssogen's last "
        f"push), which {action}: {listed}."
    )


def _finished_copy_of(hub: _Hub, commit: str, folder: Path) -> bool:
    """Whether ``folder`` is a finished build whose content is exactly that of ``commit`` (a re-run)."""
    try:
        check_finished(folder)
    except UsageError:
        return False
    return hub.holds(commit, outbox(folder, hub.repo_id))


def _token_user(hub: _Hub, repo_id: str) -> dict[str, Any]:
    """whoami of the token, once the Hub accepted it and it is not read-only."""
    who = hub.call("checking the token (whoami)", lambda: hub.api.whoami())
    token = (who.get("auth") or {}).get("accessToken") or {}
    if token.get("role") == "read":
        raise UsageError(
            f"--push-to-hub {repo_id}: the token of {who.get('name')} is read-only, so the push at the end would "
            f"fail. Use a token with write access (https://huggingface.co/settings/tokens) in HF_TOKEN or "
            f"`hf auth login`."
        )
    return who


def _check_namespace(who: dict[str, Any], repo_id: str) -> None:
    """Whether the user may create ``repo_id`` (a repo that exists is checked by the Hub: auth-check)."""
    name, namespace = str(who.get("name") or "?"), repo_id.split("/")[0]
    orgs = {str(o.get("name")): o.get("roleInOrg") for o in who.get("orgs") or [] if isinstance(o, dict)}
    if namespace != name:
        if namespace not in orgs:
            raise UsageError(
                f"--push-to-hub {repo_id}: the repo does not exist and {name} cannot create it: {namespace} is "
                f"neither your user name nor one of your organisations ({', '.join(sorted(orgs)) or 'none'})."
            )
        role = orgs[namespace]
        if role is not None and role not in _WRITER_ROLES:
            raise UsageError(
                f"--push-to-hub {repo_id}: the repo does not exist and your role in {namespace} ({role}) "
                f"cannot create repos there; ask an admin of {namespace} for write access or create the repo."
            )


def _visibility(private: bool | None) -> str:
    return {True: "private", False: "public"}.get(private, "visibility unknown")


def _asked(private: bool) -> str:
    return "as --private asks" if private else "as --no-private asks"


def _new_visibility(private: bool | None) -> str:
    if private is None:
        return "with its namespace's default visibility; pass --private to make sure it is private"
    return "private, as --private asks" if private else "public, as --no-private asks"


class _Hub:
    """One dataset repo seen through the client, every call made with the retry policy."""

    def __init__(self, api: HfApi, repo_id: str, caller: HubCaller) -> None:
        self.api = api
        self.repo_id = repo_id
        self.caller = caller
        self._trees: dict[str, dict[str, RepoFile]] = {}

    @classmethod
    def connect(
        cls,
        repo_id: str,
        token: str | None,
        endpoint: str | None,
        *,
        closing: str,
        retries: tuple[int, float, float],
        auth_error: type[UsageError] | type[PublishError] = PublishError,
    ) -> _Hub:
        # An explicit token keeps HF_TOKEN ahead of a stored login; None lets the client decide.
        token = token or os.environ.get("HF_TOKEN") or None
        max_retries, backoff_seconds, max_wait_seconds = retries
        caller = HubCaller(
            repo_id=repo_id,
            secret=token or known_token(),
            closing=closing,
            max_retries=max_retries,
            backoff_seconds=backoff_seconds,
            max_wait_seconds=max_wait_seconds,
            auth_error=auth_error,
        )
        return cls(HfApi(endpoint=endpoint, token=token), repo_id, caller)

    def call(self, what: str, action: Callable[[], T]) -> T:
        return self.caller.call(what, action)

    def info(self) -> Any:
        """The repo's info, or None when it does not exist (yet)."""

        def fetch() -> Any:
            try:
                return self.api.repo_info(self.repo_id, repo_type=REPO_TYPE)
            except RepositoryNotFoundError:
                return None

        return self.call(f"reading {self.repo_id}", fetch)

    def settle_visibility(self, private: bool | None) -> bool | None:
        """Create the repo if needed and give it the asked visibility before anything is uploaded; say which."""
        repo_id, info = self.repo_id, self.info()
        if info is None:
            self.call(
                "creating the dataset repo",
                lambda: self.api.create_repo(repo_id, repo_type=REPO_TYPE, exist_ok=True, private=private),
            )
            info = self.info()
            if info is None:
                reason = (
                    "it exists (or was just made) but this token cannot read it: a private repo of another account?"
                )
                raise self.caller.failure("creating the dataset repo", RuntimeError(reason))
            if private is None or info.private == private:
                why = "its namespace's default; --private makes it private" if private is None else _asked(private)
                logger.info("created %s: %s (%s)", repo_id, _visibility(info.private), why)
                return info.private
        elif private is None or info.private == private:
            why = "unchanged: neither --private nor --no-private given" if private is None else _asked(private)
            logger.info("%s is %s (%s)", repo_id, _visibility(info.private), why)
            return info.private
        wanted = _visibility(private)
        self.call(
            f"making {repo_id} {wanted}",
            lambda: self.api.update_repo_settings(repo_id, repo_type=REPO_TYPE, private=private),
        )
        after = self.info()
        if after is None or after.private != private:
            raise self.caller.failure(
                f"making {repo_id} {wanted}",
                RuntimeError(f"it is still {_visibility(getattr(after, 'private', None))}"),
            )
        logger.info("%s was %s; made it %s (%s)", repo_id, _visibility(info.private), wanted, _asked(private))
        return private

    def _refs(self) -> Any:
        return self.call("listing refs", lambda: self.api.list_repo_refs(self.repo_id, repo_type=REPO_TYPE))

    def tag_target(self, tag: str) -> str | None:
        return next((t.target_commit for t in self._refs().tags if t.name == tag), None)

    def branch_head(self, branch: str) -> str | None:
        return next((b.target_commit for b in self._refs().branches if b.name == branch), None)

    def tree(self, revision: str | None) -> dict[str, RepoFile]:
        """Every file at ``revision`` (a commit id: cached, commits never change)."""
        if revision is None:
            return {}
        if revision not in self._trees:
            entries = self.call(
                f"listing the files at {revision[:12]}",
                lambda: list(
                    self.api.list_repo_tree(self.repo_id, repo_type=REPO_TYPE, revision=revision, recursive=True)
                ),
            )
            self._trees[revision] = {e.path: e for e in entries if isinstance(e, RepoFile)}
        return self._trees[revision]

    def ssogen_tree(self, branch: str) -> dict[str, RepoFile]:
        """The files of ssogen's last commit on ``branch``: what ssogen itself published there."""

        def commits() -> list[Any]:
            try:
                return self.api.list_repo_commits(self.repo_id, repo_type=REPO_TYPE, revision=branch)
            except HfHubHTTPError as err:  # a branch not made yet has no history of its own
                if err.response is not None and err.response.status_code == 404:
                    return []
                raise

        history = self.call(f"reading the history of {branch}", commits)
        last = next((c.commit_id for c in history if c.title.startswith(COMMIT_TITLE)), None)
        return self.tree(last)

    def holds(self, commit: str, out: Outbox) -> bool:
        """Whether ``commit`` holds exactly what ``out`` sends, in the part of the repo ssogen manages."""
        files = self.tree(commit)
        managed = {p for p in files if _managed(p)}
        same = all(p in files and _same_content(files[p], out, p) for p in out.files)
        return same and managed <= set(out.files)

    def delete_tag(self, tag: str) -> None:
        try:
            self.api.delete_tag(self.repo_id, tag=tag, repo_type=REPO_TYPE)
        except HfHubHTTPError as err:
            # Already gone (e.g. our own earlier attempt succeeded but its answer was lost).
            if err.response is None or err.response.status_code != 404:
                raise
