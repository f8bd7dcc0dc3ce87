"""Loopback stand-in for the Hugging Face Hub HTTP API, for ssogen's publishing tests.

Run it as its own process (standard library only)::

    python tests/hub_server.py --port 0 --storage DIR --token TOKEN [--fail-first N]
        [--read-token TOKEN] [--org NAME:ROLE ...] [--private-org NAME ...] [--fault SPEC ...]

It prints ``READY <port>`` on stdout once it listens on 127.0.0.1. Point the real
``huggingface_hub`` client at ``http://127.0.0.1:<port>`` (``endpoint=...``).

It speaks the part of the Hub API that the client uses to publish and read back a
dataset (paths as the client builds them, ``{t}`` = ``models`` | ``datasets`` | ``spaces``):

    GET  /api/whoami-v2                          POST /api/validate-yaml
    POST /api/repos/create                       GET  /api/{t}/{repo}[/revision/{rev}]
    PUT  /api/{t}/{repo}/settings                GET  /api/{t}/{repo}/auth-check[/write]
    POST /api/{t}/{repo}/preupload/{rev}         POST /api/{t}/{repo}/commit/{rev}  (NDJSON)
    GET  /api/{t}/{repo}/tree/{rev}[/{path}]     GET  /api/{t}/{repo}/refs
    GET  /api/{t}/{repo}/commits/{rev}           POST|DELETE /api/{t}/{repo}/branch/{name}
    POST /api/{t}/{repo}/tag/{rev}               DELETE /api/{t}/{repo}/tag/{name}
    HEAD|GET /[datasets/|spaces/]{repo}/resolve/{rev}/{path}   (a GET with ``Range: bytes=A-B`` answers 206)

The pre-upload call answers ``"uploadMode": "regular"`` for every file, so file content
arrives inline (base64) in the commit payload: no LFS, no Xet. Every request must carry
``Authorization: Bearer <TOKEN>``; anything else gets a Hub-like 401.

Who the token is: the user ``tester``, member of the organisations given by ``--org NAME:ROLE``
(default ``ssogen-test:write``; roles as the Hub's ``roleInOrg``: admin, write, contributor, read).
``--read-token T`` is a second, read-only token of the same user: reads work, every write
answers 403. A repo is created under ``tester`` or an organisation with a role that may write,
else 403. ``--private-org NAME`` makes NAME private by default: a repo created there without an
explicit visibility is private (as an organisation setting on the Hub).

Faults, to exercise client retries: ``--fault "METHOD PATH KIND COUNT"`` answers the first COUNT
requests whose method is METHOD and whose path contains PATH with KIND: an HTTP status
(``500``), ``503-html`` (a 503 whose body is an HTML page, as a gateway sends), or
``429:<seconds>`` (too many requests, with ``Retry-After: <seconds>``). ``--fail-first N`` is
``--fault "POST /commit/ 500 N"``.

Storage, rewritten on every change so a test can read it while the server runs (and
reloaded at start, so a restart keeps the repos):

    DIR/<t>/<org>/<name>/commits/<oid>/<path>   full snapshot of every commit's files
    DIR/<t>/<org>/<name>/repo.json              {"private", "branches": {name: oid},
                                                 "tags": {name: oid}, "commits": [oldest first]}
    DIR/requests.log                            "METHOD path status" per request (no headers; a
                                                ranged read of a file is a GET answered 206)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
USER = "tester"
GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"


# Blob ids of large files by the identity of their bytes (kept alive with them): a model's weights are listed
# and resolved many times, and hashing 270 MB again each time made every listing take a second.
_LARGE_BLOB_IDS: dict[int, tuple[bytes, str]] = {}


def git_hash(data: bytes) -> str:
    """The git blob id, which the client compares with its own to skip unchanged files."""
    known = _LARGE_BLOB_IDS.get(id(data))
    if known is not None and known[0] is data:
        return known[1]
    digest = hashlib.sha1(b"blob %d\0" % len(data))
    digest.update(data)
    if len(data) > 1 << 20:
        _LARGE_BLOB_IDS[id(data)] = (data, digest.hexdigest())
    return digest.hexdigest()


class HubError(Exception):
    """An HTTP error answer: status, message and the X-Error-Code the client dispatches on."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict | None = None,
        body: bytes | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = body  # a raw body (an HTML page) instead of the JSON {"error": message}


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, bytes]


@dataclass
class Repo:
    root: Path
    repo_type: str
    repo_id: str
    private: bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit:
        oid = self.branches.get(rev) or self.tags.get(rev) or (rev if rev in self.commits else None)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return self.commits[oid]

    def add_commit(self, branch: str, files: dict[str, bytes], title: str, message: str) -> Commit:
        parent = self.branches.get(branch)
        seed = f"{parent}\n{title}\n{time.time_ns()}\n{len(self.order)}\n" + "".join(
            f"{p}:{git_hash(b)}\n" for p, b in sorted(files.items())
        )
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, title, message, date, files)
        for path, data in files.items():  # commits are immutable: written once, never touched again
            target = self.root / "commits" / commit.oid / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        self.commits[commit.oid] = commit
        self.order.append(commit.oid)
        self.branches[branch] = commit.oid
        return commit

    def save(self) -> None:
        meta = {
            "private": self.private,
            "branches": self.branches,
            "tags": self.tags,
            "commits": [
                {k: getattr(self.commits[o], k) for k in ("oid", "parent", "title", "message", "date")}
                for o in self.order
            ],
        }
        tmp = self.root / "repo.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, self.root / "repo.json")  # atomic, so a reading test never sees half a file

    @classmethod
    def load(cls, root: Path, repo_type: str, repo_id: str) -> Repo:
        meta = json.loads((root / "repo.json").read_text())
        repo = cls(root, repo_type, repo_id, meta["private"], branches=meta["branches"], tags=meta["tags"])
        for c in meta["commits"]:
            snap = root / "commits" / c["oid"]
            files = {p.relative_to(snap).as_posix(): p.read_bytes() for p in snap.rglob("*") if p.is_file()}
            repo.commits[c["oid"]] = Commit(files=files, **c)
            repo.order.append(c["oid"])
        return repo


@dataclass
class Fault:
    """Answer the next ``count`` requests matching ``method`` and ``path`` with an error of ``kind``."""

    method: str
    path: str
    kind: str
    count: int

    @classmethod
    def parse(cls, spec: str) -> Fault:
        method, path, kind, count = spec.split()
        return cls(method.upper(), path, kind, int(count))

    def error(self) -> HubError:
        if self.kind == "503-html":
            page = b"<html><head><title>503 Service Temporarily Unavailable</title></head><body>busy</body></html>"
            return HubError(503, "", headers={"Content-Type": "text/html"}, body=page)
        if self.kind.startswith("429:"):
            wait = self.kind.split(":", 1)[1]
            return HubError(429, "Too many requests - injected by --fault", headers={"Retry-After": wait})
        return HubError(int(self.kind), "Internal Error - injected by --fault")


WRITE_ROLES = frozenset({"admin", "write", "contributor"})


class Hub:
    """All repos, behind one lock: requests arrive on many threads."""

    def __init__(
        self,
        storage: Path,
        tokens: dict[str, str],
        orgs: dict[str, str],
        private_orgs: set[str],
        faults: list[Fault],
    ):
        self.storage, self.tokens, self.orgs, self.private_orgs = storage, tokens, orgs, private_orgs
        self.faults = faults
        self.lock = threading.Lock()
        self.repos: dict[tuple[str, str], Repo] = {}
        for meta in storage.glob("*/*/*/repo.json"):
            t, org, name = meta.parent.relative_to(storage).parts
            if t in REPO_TYPES:
                repo_id = f"{org}/{name}"
                self.repos[(REPO_TYPES[t], repo_id)] = Repo.load(meta.parent, REPO_TYPES[t], repo_id)

    def repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo


class Handler(BaseHTTPRequestHandler):
    server_version = "hub-loopback/1.0"
    hub: Hub  # set on the class by main()

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: object) -> None:
        pass  # requests.log is written by _dispatch; stderr stays for tracebacks

    # -- plumbing ---------------------------------------------------------------------------
    def _dispatch(self) -> None:
        # Read the whole body first: answering early (e.g. 401) with unread data can reset the socket.
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        status = 500
        try:
            auth = self.headers.get("Authorization") or ""
            self.role = self.hub.tokens.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None
            if self.role is None:
                msg = "Invalid credentials in Authorization header"
                raise HubError(401, msg, None, {"X-Error-Message": msg})
            self._inject_fault(url.path)
            # Split before unquoting: the client quotes "/" inside a revision as %2F.
            status, payload, headers = self._route([unquote(s) for s in url.path.strip("/").split("/")])
        except HubError as err:
            status = err.status
            headers = {**({"X-Error-Message": err.message} if err.message else {}), **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            payload = err.body if err.body is not None else {"error": err.message}
        except Exception as err:
            traceback.print_exc()
            status, payload, headers = 500, {"error": f"hub_server bug: {err!r}"}, {}
        finally:
            with open(self.hub.storage / "requests.log", "a") as log:
                log.write(f"{self.command} {url.path} {status}\n")
        if isinstance(payload, bytes):
            self._send(status, payload, {"Content-Type": "application/octet-stream", **headers})
        else:
            self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **headers})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", headers.get("Content-Length", str(len(body))))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _base(self) -> str:
        return f"http://{self.headers.get('Host')}"

    def _inject_fault(self, path: str) -> None:
        with self.hub.lock:
            for fault in self.hub.faults:
                if fault.count > 0 and fault.method == self.command and fault.path in path:
                    fault.count -= 1
                    raise fault.error()

    def _require_write(self, what: str) -> None:
        if self.role != "write":
            raise HubError(403, f"You don't have the rights to {what}: this token is read-only")

    def _json(self) -> dict:
        return json.loads(self.body or b"{}")

    def _route(self, seg: list[str]) -> tuple[int, object, dict]:
        with self.hub.lock:
            m = self.command
            if seg[:2] == ["api", "whoami-v2"]:
                return 200, self._whoami(), {}
            if seg[:2] == ["api", "validate-yaml"] and m == "POST":
                return 200, {"errors": [], "warnings": []}, {}
            if seg[:3] == ["api", "repos", "create"] and m == "POST":
                return self._create_repo()
            if len(seg) >= 4 and seg[0] == "api" and seg[1] in REPO_TYPES:
                repo = self.hub.repo(REPO_TYPES[seg[1]], f"{seg[2]}/{seg[3]}")
                return self._repo_api(repo, seg[4:])
            if m in ("GET", "HEAD"):
                t = seg[0] if seg and seg[0] in ("datasets", "spaces") else "models"
                rest = seg[1:] if t != "models" else seg
                if len(rest) >= 5 and rest[2] == "resolve":
                    repo = self.hub.repo(REPO_TYPES[t], f"{rest[0]}/{rest[1]}")
                    return self._resolve(repo, rest[3], "/".join(rest[4:]))
            raise HubError(404, f"Not found: {m} {self.path}")

    # -- endpoints --------------------------------------------------------------------------
    def _whoami(self) -> dict:
        orgs = [{"type": "org", "name": name, "roleInOrg": role} for name, role in sorted(self.hub.orgs.items())]
        token = {"displayName": f"{self.role} token", "role": self.role}
        return {"type": "user", "name": USER, "orgs": orgs, "auth": {"type": "access_token", "accessToken": token}}

    def _create_repo(self) -> tuple[int, object, dict]:
        body = self._json()
        repo_type = body.get("type") or "model"
        namespace = body.get("organization") or USER
        repo_id = f"{namespace}/{body['name']}"
        url = f"{self._base()}/{URL_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.hub.repos:
            # The client reads "url" from this 409 body too (create_repo with exist_ok=True).
            msg = f"You already created this {repo_type} repo"
            return 409, {"error": msg, "url": url}, {"X-Error-Message": msg}
        self._require_write("create a repo")
        if namespace != USER and self.hub.orgs.get(namespace) not in WRITE_ROLES:
            raise HubError(403, f"You don't have the rights to create a {repo_type} under the namespace {namespace}")
        root = self.hub.storage / f"{repo_type}s" / repo_id
        if "visibility" in body or "private" in body:
            private = body.get("visibility") == "private" or bool(body.get("private"))
        else:
            private = namespace in self.hub.private_orgs  # the organisation's default
        repo = Repo(root, repo_type, repo_id, private)
        # Like the Hub: a new repo already has one commit on main holding .gitattributes.
        repo.add_commit("main", {".gitattributes": GITATTRIBUTES}, "initial commit", "")
        repo.save()
        self.hub.repos[(repo_type, repo_id)] = repo
        return 200, {"url": url, "name": repo_id, "id": repo_id}, {}

    def _repo_api(self, repo: Repo, rest: list[str]) -> tuple[int, object, dict]:
        m, action, arg = self.command, rest[0] if rest else "", rest[1] if len(rest) > 1 else "main"
        if m == "GET" and action in ("", "revision"):
            return 200, self._info(repo, repo.resolve(arg)), {}
        if m == "GET" and action == "refs":

            def refs(kind: str, table: dict[str, str]) -> list[dict]:
                return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": o} for n, o in sorted(table.items())]

            body = {"branches": refs("heads", repo.branches), "tags": refs("tags", repo.tags), "converts": []}
            return 200, {**body, "pullRequests": []}, {}
        if m == "GET" and action == "tree":
            return 200, self._tree(repo.resolve(arg), "/".join(rest[2:])), {}
        if m == "GET" and action == "commits":
            out, oid = [], repo.resolve(arg).oid
            while oid is not None:
                c = repo.commits[oid]
                item = {"id": c.oid, "title": c.title, "message": c.message, "date": c.date}
                out.append({**item, "authors": [{"user": USER}]})
                oid = c.parent
            return 200, out, {}
        if m == "GET" and action == "auth-check":
            if rest[1:] == ["write"]:
                self._require_write(f"write to {repo.repo_id}")
            return 200, {}, {}
        if m in ("POST", "PUT", "DELETE") and action in ("settings", "preupload", "commit", "branch", "tag"):
            self._require_write(f"change {repo.repo_id}")
        if m == "PUT" and action == "settings":
            body = self._json()
            if "visibility" in body or "private" in body:
                repo.private = body.get("visibility") == "private" or body.get("private") is True
            repo.save()
            return 200, {}, {}
        if m == "POST" and action == "preupload":
            return 200, self._preupload(repo, arg), {}
        if m == "POST" and action == "commit":
            return self._commit(repo, arg)
        if m in ("POST", "DELETE") and action in ("branch", "tag"):
            return self._ref(repo, action, arg)
        raise HubError(404, f"Not found: {m} {self.path}")

    def _info(self, repo: Repo, commit: Commit) -> dict:
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "lastModified": commit.date,
            "createdAt": commit.date,
            "tags": [],
            "downloads": 0,
            "likes": 0,
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        }

    def _tree(self, commit: Commit, base: str) -> list[dict]:
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        prefix = f"{base.strip('/')}/" if base.strip("/") else ""
        files = {p: b for p, b in commit.files.items() if p.startswith(prefix)}
        if prefix and not files:
            raise HubError(404, f"Entry not found: {base}", "EntryNotFound")
        dirs: set[str] = set()
        entries = []
        for path in sorted(files):
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                dirs.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                data = files[path]
                entries.append({"type": "file", "oid": git_hash(data), "size": len(data), "path": path})
        for d in sorted(dirs):
            if recursive or "/" not in d[len(prefix) :]:
                oid = hashlib.sha1(f"{commit.oid}:{d}".encode()).hexdigest()
                entries.append({"type": "directory", "oid": oid, "size": 0, "path": d})
        return entries

    def _preupload(self, repo: Repo, rev: str) -> dict:
        try:
            existing = repo.resolve(rev).files
        except HubError:
            existing = {}  # a branch about to be made: nothing to compare against
        files = []
        for f in self._json().get("files", []):
            data = existing.get(f["path"])
            oid = git_hash(data) if data is not None else None
            files.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        return {"files": files}

    def _commit(self, repo: Repo, branch: str) -> tuple[int, object, dict]:
        if "create_pr" in self.query:
            raise HubError(400, "Pull requests are not supported by this test server")
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        head = repo.commits[repo.branches[branch]]
        parent = header.get("parentCommit")
        if parent and not head.oid.startswith(parent):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for op in (x for x in lines if x["key"] != "header"):
            key, value = op["key"], op["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: b for p, b in files.items() if not p.startswith(folder)}
            else:
                raise HubError(400, f"Unsupported commit operation {key!r}: this server only takes regular files")
        commit = repo.add_commit(branch, files, header.get("summary", ""), header.get("description", ""))
        repo.save()
        url = f"{self._base()}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
        return 200, {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None}, {}

    def _ref(self, repo: Repo, kind: str, arg: str) -> tuple[int, object, dict]:
        table = repo.branches if kind == "branch" else repo.tags
        if self.command == "DELETE":
            if table.pop(arg, None) is None:
                raise HubError(404, f"Invalid rev id: {arg}", "RevisionNotFound")
            repo.save()
            return 200, {}, {}
        body = self._json()
        name, start = (arg, body.get("startingPoint") or "main") if kind == "branch" else (body["tag"], arg)
        if name in repo.branches or name in repo.tags:
            raise HubError(409, "Reference already exists")
        table[name] = repo.resolve(start).oid
        repo.save()
        return 200, {}, {}

    def _resolve(self, repo: Repo, rev: str, path: str) -> tuple[int, object, dict]:
        commit = repo.resolve(rev)
        if path not in commit.files:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = commit.files[path]
        headers = {"ETag": f'"{git_hash(data)}"', "X-Repo-Commit": commit.oid, "Content-Length": str(len(data))}
        headers["Content-Disposition"] = f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}"
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", (self.headers.get("Range") or "").strip())
        if self.command == "GET" and wanted:
            # A part of the file, as the Hub answers: vLLM reads a safetensors file's header this way (the
            # client asks for its first 100 kB), which is no download of the file.
            start, end = int(wanted[1]), min(int(wanted[2] or len(data) - 1), len(data) - 1)
            if start > end:
                raise HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            part = data[start : end + 1]
            headers.update({"Content-Range": f"bytes {start}-{end}/{len(data)}", "Content-Length": str(len(part))})
            return 206, part, headers
        return 200, data, headers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--storage", type=Path, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--fail-first", type=int, default=0, help="answer the first N commits with HTTP 500")
    parser.add_argument("--read-token", default=None, help="a second token that may only read")
    parser.add_argument("--org", action="append", default=None, help="NAME:ROLE (default ssogen-test:write)")
    parser.add_argument("--private-org", action="append", default=[], help="an org whose new repos are private")
    parser.add_argument("--fault", action="append", default=[], help='"METHOD PATH KIND COUNT" (see the docstring)')
    args = parser.parse_args(argv)
    args.storage.mkdir(parents=True, exist_ok=True)
    tokens = {args.token: "write", **({args.read_token: "read"} if args.read_token else {})}
    orgs = dict(spec.split(":", 1) for spec in (args.org or ["ssogen-test:write"]))
    faults = [Fault.parse(spec) for spec in args.fault]
    if args.fail_first:
        faults.append(Fault("POST", "/commit/", "500", args.fail_first))
    Handler.hub = Hub(args.storage, tokens, orgs, set(args.private_org), faults)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
