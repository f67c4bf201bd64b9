"""A small Hub-compatible HTTP server for tests, written with the standard library only.

It speaks enough of the Hugging Face Hub protocol for the *unmodified* `huggingface_hub` client and
`datasets` to create repos, branches and tags, upload files (regular files inline in the commit, large
or binary files through LFS batch + basic PUT + verify), commit, list trees, and download with
`hf_hub_download` / `snapshot_download` / `load_dataset`. Storage is in memory: each repo holds commits
(``{path: blob}`` plus a parent) and refs pointing at them. The protocol facts it implements are
collected in ``shared/notes/hub-test-server.md``.

Xet is not implemented: clients must run with ``HF_HUB_DISABLE_XET=1`` (``tests/conftest.py`` sets it).

Test hooks:

* ``server.requests``: every request received (method, path, headers, body, status), for assertions
  such as "the dry run sent nothing" or "the token only ever travelled in the Authorization header";
* ``server.fail_next(n, status=500, path_contains="/commit/")``: answer the next ``n`` matching
  requests with an error status, without processing them;
* ``server.drop_next(n, path_contains=..., after=False)``: close the connection without answering
  (``after=True`` processes the request first, i.e. the response is lost but the effect is not);
* ``server.delay_next(n, seconds, path_contains=...)``: sleep before answering;
* ``server.history(repo_id, ...)`` / ``server.files(repo_id, ...)``: inspect commits and contents.

Example:

```py
>>> with HubServer() as server:
...     HfApi(endpoint=server.endpoint, token="hf_x").create_repo("user/demo")
```
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import hashlib
import itertools
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

#: File name endings the server stores through LFS (like the Hub's default .gitattributes).
LFS_SUFFIXES = (
    ".parquet", ".arrow", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5",
    ".msgpack", ".npy", ".npz", ".pkl", ".pickle", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".zip",
    ".gz", ".tar", ".zst", ".7z",
)
#: Files larger than this are stored through LFS whatever their name.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as ``oid`` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclasses.dataclass(frozen=True)
class Blob:
    """One file's content; ``lfs`` says whether it was committed as an LFS pointer."""

    data: bytes
    lfs: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n"
        ).encode()

    @property
    def oid(self) -> str:
        """Tree ``oid``: git sha1 of the content, or of the LFS pointer."""
        return git_blob_oid(self.pointer if self.lfs else self.data)

    @property
    def etag(self) -> str:
        """What HEAD /resolve reports: sha256 for LFS files, git sha1 otherwise (as the Hub does)."""
        return self.sha256 if self.lfs else git_blob_oid(self.data)

    def entry(self, path: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.oid, "size": self.size, "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(self.pointer)}
        return entry


@dataclasses.dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, Blob]
    title: str
    message: str = ""
    date: str = dataclasses.field(default_factory=_now)


@dataclasses.dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool = False
    commits: dict[str, Commit] = dataclasses.field(default_factory=dict)
    branches: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    pull_requests: dict[int, str] = dataclasses.field(default_factory=dict)
    created_at: str = dataclasses.field(default_factory=_now)

    def resolve(self, revision: str) -> Commit | None:
        """A branch, tag, ``refs/...`` name, PR ref, full commit sha or a sha prefix (>= 7 chars)."""
        for prefix, table in (("refs/heads/", self.branches), ("refs/tags/", self.tags)):
            if revision.startswith(prefix) and revision[len(prefix):] in table:
                return self.commits[table[revision[len(prefix):]]]
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.tags:
            return self.commits[self.tags[revision]]
        match = re.fullmatch(r"refs/pr/(\d+)", revision)
        if match and int(match.group(1)) in self.pull_requests:
            return self.commits[self.pull_requests[int(match.group(1))]]
        if revision in self.commits:
            return self.commits[revision]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            found = [c for oid, c in self.commits.items() if oid.startswith(revision)]
            if len(found) == 1:
                return found[0]
        return None

    def history(self, revision: str = "main") -> list[Commit]:
        """Commits reachable from ``revision``, newest first."""
        commit, out = self.resolve(revision), []
        while commit is not None:
            out.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return out


@dataclasses.dataclass
class LoggedRequest:
    """One request as the server received it (headers keep their original case)."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    status: int | None = None

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclasses.dataclass
class _Fault:
    kind: str  # "fail" | "drop" | "delay"
    remaining: int
    path_contains: str
    method: str | None
    status: int = 500
    after: bool = False
    seconds: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and self.path_contains in path
            and (self.method is None or self.method.upper() == method)
        )


class _HttpError(Exception):
    """Raised by route handlers; becomes a response with the Hub's error headers."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclasses.dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    content_length: int | None = None  # for HEAD: the length of the body a GET would send

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: dict | None = None) -> _Response:
        return cls(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})


class HubServer:
    """In-memory Hub on ``127.0.0.1``; use as a context manager or call `start` / `stop`.

    Args:
        port: TCP port (0 picks a free one).
        user: the user name every token maps to (``whoami``, namespace of repos created without one).
    """

    def __init__(self, port: int = 0, user: str = "spark-tester"):
        self.user = user
        self.token: str | None = None  # the token tests configure clients with (informational)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[LoggedRequest] = []
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- test hooks --------------------------------------------------------------------------------
    def fail_next(self, n: int = 1, status: int = 500, path_contains: str = "", method: str | None = None) -> None:
        """Answer the next ``n`` requests whose path contains ``path_contains`` with ``status``."""
        with self._lock:
            self._faults.append(_Fault("fail", n, path_contains, method, status=status))

    def drop_next(
        self, n: int = 1, path_contains: str = "", method: str | None = None, after: bool = False
    ) -> None:
        """Close the connection of the next ``n`` matching requests without answering.

        With ``after=True`` the request is processed first (e.g. the commit lands) and only the
        response is lost, which is what a client sees when a connection dies mid-answer.
        """
        with self._lock:
            self._faults.append(_Fault("drop", n, path_contains, method, after=after))

    def delay_next(
        self, n: int = 1, seconds: float = 0.5, path_contains: str = "", method: str | None = None
    ) -> None:
        """Sleep ``seconds`` before handling the next ``n`` matching requests."""
        with self._lock:
            self._faults.append(_Fault("delay", n, path_contains, method, seconds=seconds))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def requests_to(self, path_contains: str, method: str | None = None) -> list[LoggedRequest]:
        """Logged requests whose path contains ``path_contains`` (and with ``method``, if given)."""
        with self._lock:
            return [
                r for r in self.requests
                if path_contains in r.path and (method is None or r.method == method.upper())
            ]

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def history(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[Commit]:
        """Commits reachable from ``revision``, newest first (the initial commit is the last one)."""
        with self._lock:
            return self.repo(repo_id, repo_type).history(revision)

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """``{path: bytes}`` of the repo at ``revision``."""
        with self._lock:
            commit = self.repo(repo_id, repo_type).resolve(revision)
            if commit is None:
                raise KeyError(f"no revision {revision!r} in {repo_type} {repo_id}")
            return {path: blob.data for path, blob in commit.files.items()}

    def all_stored_bytes(self) -> list[bytes]:
        """Every file content and LFS object the server holds (for leak scans)."""
        with self._lock:
            out = list(self.lfs_objects.values())
            for repo in self.repos.values():
                for commit in repo.commits.values():
                    out.extend(blob.data for blob in commit.files.values())
                    out.append(f"{commit.title}\n{commit.message}".encode())
            return out

    # -- internals ---------------------------------------------------------------------------------
    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.remaining -= 1
                    return fault
        return None

    def _new_commit(
        self, repo: Repo, parent: Commit | None, files: dict[str, Blob], title: str, message: str = ""
    ) -> Commit:
        seed = f"{repo.repo_id}\n{parent.oid if parent else ''}\n{title}\n{time.time_ns()}\n{next(self._counter)}"
        seed += "".join(f"\n{path}:{blob.oid}" for path, blob in sorted(files.items()))
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(oid, parent.oid if parent else None, files, title, message)
        repo.commits[commit.oid] = commit
        return commit

    def _create_repo(self, repo_type: str, repo_id: str, private: bool = False) -> Repo:
        repo = Repo(repo_type, repo_id, private)
        initial = self._new_commit(repo, None, {".gitattributes": Blob(GITATTRIBUTES.encode())}, "initial commit")
        repo.branches["main"] = initial.oid
        self.repos[(repo_type, repo_id)] = repo
        return repo


def _make_handler(server: HubServer):
    class Handler(_HubHandler):
        hub = server

    return Handler


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr access log
        pass

    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    # -- plumbing ----------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self, method: str) -> None:
        raw_path, _, query = self.path.partition("?")
        body = self._read_body()
        record = LoggedRequest(method, self.path, list(self.headers.items()), body)
        with self.hub._lock:
            self.hub.requests.append(record)

        fault = self.hub._take_fault(method, raw_path)
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
            fault = None
        if fault is not None and fault.kind == "drop" and not fault.after:
            self.close_connection = True
            return
        if fault is not None and fault.kind == "fail":
            response = _Response.json({"error": f"injected failure {fault.status}"}, fault.status,
                                      {"X-Error-Message": f"injected failure {fault.status}"})
        else:
            try:
                response = self._route(method, raw_path, parse_qs(query, keep_blank_values=True), body)
            except _HttpError as e:
                headers = {"X-Error-Message": e.message, **e.headers}
                if e.code:
                    headers["X-Error-Code"] = e.code
                response = _Response.json({"error": e.message}, e.status, headers)
            except Exception as e:  # a bug in the test server: answer 500 with the reason
                response = _Response.json({"error": f"test server error: {e!r}"}, 500)
        record.status = response.status
        if fault is not None and fault.kind == "drop":  # after=True: processed, answer lost
            record.status = None
            self.close_connection = True
            return
        self._send(method, response)

    def _send(self, method: str, response: _Response) -> None:
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        length = response.content_length if response.content_length is not None else len(response.body)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if method != "HEAD" and response.body:
            self.wfile.write(response.body)

    @property
    def base_url(self) -> str:
        return f"http://{self.headers.get('Host') or '127.0.0.1:%d' % self.hub.port}"

    def _require_auth(self) -> None:
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            raise _HttpError(401, "Invalid username or password.")

    # -- routing -----------------------------------------------------------------------------------
    def _route(self, method: str, raw_path: str, query: dict, body: bytes) -> _Response:
        parts = [unquote(p) for p in raw_path.strip("/").split("/")]
        hub = self.hub
        with hub._lock:
            if parts[:1] == ["api"]:
                return self._api(method, parts[1:], query, body)
            if len(parts) == 2 and parts[0] == "lfs-upload" and method == "PUT":
                return self._lfs_put(parts[1], body)
            if len(parts) == 2 and parts[0] == "lfs-verify" and method == "POST":
                return self._lfs_verify(parts[1], body)
            repo_type = "model"
            if parts[0] in ("datasets", "spaces"):
                repo_type, parts = REPO_TYPES[parts[0]], parts[1:]
            if len(parts) >= 3 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
                return self._lfs_batch(repo_type, f"{parts[0]}/{parts[1][:-4]}", body)
            if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(method, repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        raise _HttpError(404, f"not found: {method} {raw_path}")

    def _api(self, method: str, parts: list[str], query: dict, body: bytes) -> _Response:
        if parts == ["whoami-v2"]:
            self._require_auth()
            return _Response.json({
                "type": "user", "name": self.hub.user, "fullname": self.hub.user, "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            })
        if parts == ["repos", "create"] and method == "POST":
            return self._create_repo(json.loads(body or b"{}"))
        if parts == ["repos", "delete"] and method == "DELETE":
            self._require_auth()
            payload = json.loads(body or b"{}")
            repo_id = f"{payload.get('organization') or self.hub.user}/{payload['name']}"
            if self.hub.repos.pop((payload.get("type") or "model", repo_id), None) is None:
                raise _HttpError(404, "Repository not found", "RepoNotFound")
            return _Response.json({})
        if parts == ["validate-yaml"] and method == "POST":
            return _Response.json({"errors": [], "warnings": []})
        if len(parts) >= 3 and parts[0] in REPO_TYPES:
            repo_type, repo_id, rest = REPO_TYPES[parts[0]], f"{parts[1]}/{parts[2]}", parts[3:]
            return self._repo_api(method, repo_type, repo_id, rest, query, body)
        raise _HttpError(404, f"unknown API route /api/{'/'.join(parts)}")

    def _repo_api(self, method, repo_type, repo_id, rest, query, body) -> _Response:
        repo = self._get_repo(repo_type, repo_id)
        action = rest[0] if rest else None
        if action is None and method == "GET":
            return self._info(repo, "main")
        if action == "revision" and method == "GET" and len(rest) >= 2:
            return self._info(repo, "/".join(rest[1:]))
        if action == "refs" and method == "GET":
            return self._refs(repo, query)
        if action == "branch" and len(rest) >= 2:
            return self._branch(method, repo, "/".join(rest[1:]), body)
        if action == "tag" and len(rest) >= 2:
            return self._tag(method, repo, "/".join(rest[1:]), body)
        if action == "tree" and method == "GET" and len(rest) >= 2:
            return self._tree(repo, rest[1], "/".join(rest[2:]), query)
        if action == "paths-info" and method == "POST" and len(rest) >= 2:
            return self._paths_info(repo, "/".join(rest[1:]), body)
        if action == "preupload" and method == "POST" and len(rest) >= 2:
            return self._preupload(repo, "/".join(rest[1:]), body)
        if action == "commit" and method == "POST" and len(rest) >= 2:
            return self._commit(repo, "/".join(rest[1:]), query, body)
        if action == "commits" and method == "GET" and len(rest) >= 2:
            return self._commits(repo, "/".join(rest[1:]))
        raise _HttpError(404, f"unknown route for {repo_type} {repo_id}: {method} {'/'.join(rest)}")

    # -- repos, refs -------------------------------------------------------------------------------
    def _get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None:
            raise _HttpError(404, "Repository not found", "RepoNotFound")
        if repo.private:
            self._require_auth()
        return repo

    def _get_commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.base_url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    def _create_repo(self, payload: dict) -> _Response:
        self._require_auth()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload['name']}"
        url = f"{self.base_url}/{URL_PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.hub.repos:
            return _Response.json({"error": "You already created this repo", "url": url}, 409)
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.hub._create_repo(repo_type, repo_id, private)
        return _Response.json({"url": url, "name": repo_id})

    def _info(self, repo: Repo, revision: str) -> _Response:
        commit = self._get_commit(repo, revision)
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling = {"rfilename": path, "size": blob.size, "blobId": blob.oid}
            if blob.lfs:
                sibling["lfs"] = {"size": blob.size, "sha256": blob.sha256, "pointerSize": len(blob.pointer)}
            siblings.append(sibling)
        return _Response.json({
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0], "sha": commit.oid, "private": repo.private,
            "gated": False, "disabled": False, "lastModified": commit.date, "createdAt": repo.created_at,
            "tags": [], "downloads": 0, "likes": 0, "siblings": siblings,
        })

    def _refs(self, repo: Repo, query: dict) -> _Response:
        def ref(name, prefix, oid):
            return {"name": name, "ref": f"{prefix}{name}", "targetCommit": oid}

        out = {
            "branches": [ref(n, "refs/heads/", o) for n, o in sorted(repo.branches.items())],
            "converts": [],
            "tags": [ref(n, "refs/tags/", o) for n, o in sorted(repo.tags.items())],
        }
        if query.get("include_prs", ["0"])[0] not in ("0", "false", "False", ""):
            out["pullRequests"] = [ref(str(n), "refs/pr/", o) for n, o in sorted(repo.pull_requests.items())]
        return _Response.json(out)

    def _branch(self, method: str, repo: Repo, branch: str, body: bytes) -> _Response:
        self._require_auth()
        if method == "POST":
            if branch in repo.branches:
                raise _HttpError(409, f"Reference already exists: refs/heads/{branch}")
            if branch.startswith("refs/") or not branch:
                raise _HttpError(400, f"Invalid reference for a branch: {branch}")
            start = json.loads(body or b"{}").get("startingPoint") or "main"
            repo.branches[branch] = self._get_commit(repo, start).oid
            return _Response.json({})
        if method == "DELETE":
            if branch not in repo.branches:
                raise _HttpError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            del repo.branches[branch]
            return _Response.json({})
        raise _HttpError(405, f"method {method} not allowed")

    def _tag(self, method: str, repo: Repo, revision_or_tag: str, body: bytes) -> _Response:
        self._require_auth()
        if method == "POST":
            tag = json.loads(body or b"{}")["tag"]
            if tag in repo.tags:
                raise _HttpError(409, f"Tag already exists: {tag}")
            repo.tags[tag] = self._get_commit(repo, revision_or_tag).oid
            return _Response.json({})
        if method == "DELETE":
            if repo.tags.pop(revision_or_tag, None) is None:
                raise _HttpError(404, f"Invalid rev id: {revision_or_tag}", "RevisionNotFound")
            return _Response.json({})
        raise _HttpError(405, f"method {method} not allowed")

    # -- listing -----------------------------------------------------------------------------------
    @staticmethod
    def _directories(commit: Commit) -> set[str]:
        dirs = set()
        for path in commit.files:
            parts = path.split("/")[:-1]
            dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return dirs

    @staticmethod
    def _dir_entry(commit: Commit, path: str) -> dict[str, Any]:
        oid = hashlib.sha1(f"{commit.oid}:{path}".encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}

    def _tree(self, repo: Repo, revision: str, path: str, query: dict) -> _Response:
        commit = self._get_commit(repo, revision)
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        path = path.strip("/")
        dirs = self._directories(commit)
        if path and path not in dirs:
            raise _HttpError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        prefix = f"{path}/" if path else ""

        def wanted(p: str) -> bool:
            return p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])

        entries = [self._dir_entry(commit, d) for d in sorted(dirs) if wanted(d)]
        entries += [blob.entry(p) for p, blob in sorted(commit.files.items()) if wanted(p)]
        return _Response.json(entries)

    def _paths_info(self, repo: Repo, revision: str, body: bytes) -> _Response:
        commit = self._get_commit(repo, revision)
        form = parse_qs(body.decode(), keep_blank_values=True)
        dirs = self._directories(commit)
        out = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                out.append(commit.files[path].entry(path))
            elif path in dirs:
                out.append(self._dir_entry(commit, path))
        return _Response.json(out)

    def _commits(self, repo: Repo, revision: str) -> _Response:
        self._get_commit(repo, revision)
        return _Response.json([
            {"id": c.oid, "title": c.title, "message": c.message, "date": c.date,
             "authors": [{"user": self.hub.user}]}
            for c in repo.history(revision)
        ])

    # -- upload ------------------------------------------------------------------------------------
    def _preupload(self, repo: Repo, revision: str, body: bytes) -> _Response:
        self._require_auth()
        commit = self._get_commit(repo, revision)
        out = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f.get("sample") or "")
            lfs = (
                f["path"].lower().endswith(LFS_SUFFIXES) or f["size"] > LFS_SIZE_THRESHOLD or b"\x00" in sample
            )
            entry = {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            existing = commit.files.get(f["path"])
            if existing is not None:
                entry["oid"] = existing.sha256 if existing.lfs else git_blob_oid(existing.data)
            out.append(entry)
        return _Response.json({"files": out, "commitOid": commit.oid})

    def _lfs_batch(self, repo_type: str, repo_id: str, body: bytes) -> _Response:
        self._require_auth()
        self._get_repo(repo_type, repo_id)
        payload = json.loads(body)
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], obj["size"]
            stored = self.hub.lfs_objects.get(oid)
            if stored is not None and len(stored) == size:
                objects.append({"oid": oid, "size": size})
            else:
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                    "upload": {"href": f"{self.base_url}/lfs-upload/{oid}"},
                    "verify": {"href": f"{self.base_url}/lfs-verify/{oid}"},
                }})
        return _Response(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                         {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, oid: str, body: bytes) -> _Response:
        if hashlib.sha256(body).hexdigest() != oid:
            raise _HttpError(400, f"sha256 of the uploaded content does not match {oid}")
        self.hub.lfs_objects[oid] = body
        return _Response(200)

    def _lfs_verify(self, oid: str, body: bytes) -> _Response:
        self._require_auth()
        payload = json.loads(body)
        stored = self.hub.lfs_objects.get(oid)
        if stored is None or len(stored) != payload.get("size"):
            raise _HttpError(404, f"LFS object {oid} not found")
        return _Response.json({"success": True})

    def _commit(self, repo: Repo, revision: str, query: dict, body: bytes) -> _Response:
        self._require_auth()
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item["key"] == "header"), {})
        create_pr = query.get("create_pr", ["0"])[0] in ("1", "true", "True")
        if revision not in repo.branches:
            if repo.resolve(revision) is None:
                raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            raise _HttpError(400, f"Can only commit to a branch, not to {revision}")
        head = repo.commits[repo.branches[revision]]
        parent = header.get("parentCommit")
        if parent and not create_pr and not head.oid.startswith(parent):
            raise _HttpError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = Blob(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                data = self.hub.lfs_objects.get(value["oid"])
                if data is None:
                    raise _HttpError(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = Blob(data, lfs=True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise _HttpError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for path in [p for p in files if p.startswith(prefix)]:
                    del files[path]
            elif key != "header":
                raise _HttpError(400, f"unsupported commit operation {key!r}")
        commit = self.hub._new_commit(
            repo, head, files, header.get("summary") or "commit", header.get("description") or ""
        )
        pr_url = None
        if create_pr:
            number = max(repo.pull_requests, default=0) + 1
            repo.pull_requests[number] = commit.oid
            pr_url = f"{self._repo_url(repo)}/discussions/{number}"
        else:
            repo.branches[revision] = commit.oid
        return _Response.json({
            "success": True, "commitOid": commit.oid, "commitUrl": f"{self._repo_url(repo)}/commit/{commit.oid}",
            "pullRequestUrl": pr_url, "hookOutput": "",
        })

    # -- download ----------------------------------------------------------------------------------
    def _resolve(self, method: str, repo_type: str, repo_id: str, revision: str, path: str) -> _Response:
        repo = self._get_repo(repo_type, repo_id)
        commit = self._get_commit(repo, revision)
        blob = commit.files.get(path)
        if blob is None:
            raise _HttpError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {
            "X-Repo-Commit": commit.oid, "ETag": f'"{blob.etag}"', "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        data = blob.data
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            if not match or (not match.group(1) and not match.group(2)):
                raise _HttpError(416, f"unsupported range {range_header}")
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), len(data) - 1) if match.group(2) else len(data) - 1
            else:
                start, end = max(0, len(data) - int(match.group(2))), len(data) - 1
            if start >= len(data) and len(data) > 0:
                raise _HttpError(416, "range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            status, data = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
        if method == "HEAD":
            return _Response(status, b"", headers, content_length=len(data))
        return _Response(status, data, headers)


__all__ = ["HubServer", "Blob", "Commit", "Repo", "LoggedRequest", "git_blob_oid"]
