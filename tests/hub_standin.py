"""STAND-IN for the Hugging Face Hub: a local HTTP server, not the Hub.

Nothing here can reach the real Hub, so tests point the REAL huggingface_hub client at
this server (`HfApi(endpoint=standin.endpoint)` or $HF_ENDPOINT). It answers the endpoints
the client calls for `create_repo` + `upload_folder` over the plain LFS path (read from the
installed huggingface_hub 2.x source, `hf_api.py`, `_commit_api.py`, `lfs.py`):

    POST /api/repos/create                                  create_repo
    POST /api/validate-yaml                                 README.md front matter check
    POST /api/{type}s/{repo}/preupload/{rev}                regular vs LFS, remote oids
    POST /{datasets/}{repo}.git/info/lfs/objects/batch      which LFS objects to send
    PUT  /_standin/lfs/{oid}                                the object itself (S3 on the Hub)
    POST /{datasets/}{repo}.git/info/lfs/objects/verify     LFS verify
    POST /api/{type}s/{repo}/commit/{rev}                   the ndjson commit
    GET  /api/{type}s/{repo}[/revision/{rev}]               repo info: sha, siblings
                                                            (?blobs=true: sizes, LFS oids)

and the reads of `datasets.load_dataset("user/name")` on a repo of Parquet files, of
`hf_hub_download` and of `HfFileSystem` (found by logging what datasets 5.x and
huggingface_hub 2.x ask for; `file_download.py`, `hf_file_system.py`, `datasets/load.py`):

    GET  /api/agent-harnesses                               user-agent registry (empty)
    GET  /api/{type}s/{repo}/tree/{rev}[/{path}]            listing (?recursive=true)
    POST /api/{type}s/{repo}/paths-info/{rev}               entries for the form's `paths`
    HEAD /{datasets/}{repo}/resolve/{rev}/{path}            file metadata: ETag, X-Repo-Commit,
                                                            Content-Length, X-Linked-* (LFS)
    GET  /{datasets/}{repo}/resolve/{rev}/{path}            the bytes as committed (Range: 206)

`{rev}` is a branch or a commit oid (every commit's tree is kept). An LFS file is served
directly with the X-Linked-Etag / X-Linked-Size the Hub puts on its 302 to the CDN; no
redirect is emulated. Reads need no token on a public repo; a private one is "not found"
without it. Tree oids of folders are stand-in hashes, not git's. `datasets` also asks
`datasets-server.{host}` (the dataset viewer, optional to it) and, unless
HF_UPDATE_DOWNLOAD_COUNTS=0, s3.amazonaws.com (download counts): neither is this server.

Xet is not spoken: the client must run with xet disabled (huggingface_hub.constants.
HF_HUB_DISABLE_XET, or $HF_HUB_DISABLE_XET=1 before import), and the LFS batch answer
offers only the "basic" transfer. Any other request is answered 404 and recorded under
the endpoint name "unknown", so a test can assert none happened.

It keeps what arrives (LFS objects by sha256, committed files per repo and branch) so a
test can check bytes, and it can be told to misbehave: fail the next N calls of an
endpoint with a status (429 with Retry-After, 412, 503...), drop the connection in the
middle of reading a request body, or hold requests until released (to kill a client
mid-upload). Every wait is bounded: a held request gives up after `hold_timeout_s`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx2
import huggingface_hub
import huggingface_hub.constants
import pytest
import yaml
from huggingface_hub.utils._http import default_client_factory

# Extensions the Hub's default .gitattributes sends through LFS (the ones a dataset has).
LFS_EXTENSIONS = (".parquet", ".arrow", ".png", ".jpg", ".jpeg", ".webp", ".bin", ".zip", ".gz")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub puts larger files in LFS whatever their name

_REPO = r"(?P<repo>[^/]+/[^/]+?)"
_RESOLVE = re.compile(
    rf"^/(?:(?P<type>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
)
ROUTES: list[tuple[str, str, re.Pattern]] = [
    ("POST", "create_repo", re.compile(r"^/api/repos/create$")),
    ("POST", "validate_yaml", re.compile(r"^/api/validate-yaml$")),
    (
        "POST",
        "preupload",
        re.compile(rf"^/api/(?P<type>[a-z]+)s/{_REPO}/preupload/(?P<rev>[^/]+)$"),
    ),
    ("POST", "commit", re.compile(rf"^/api/(?P<type>[a-z]+)s/{_REPO}/commit/(?P<rev>[^/]+)$")),
    (
        "POST",
        "lfs_batch",
        re.compile(rf"^/(?:(?P<type>datasets|spaces)/)?{_REPO}\.git/info/lfs/objects/batch$"),
    ),
    (
        "POST",
        "lfs_verify",
        re.compile(rf"^/(?:(?P<type>datasets|spaces)/)?{_REPO}\.git/info/lfs/objects/verify$"),
    ),
    ("PUT", "lfs_upload", re.compile(r"^/_standin/lfs/(?P<oid>[0-9a-f]{64})$")),
    (
        "GET",
        "repo_info",
        re.compile(rf"^/api/(?P<type>[a-z]+)s/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"),
    ),
    # ---- reads: what `datasets.load_dataset("user/name")` asks for
    ("GET", "agent_harnesses", re.compile(r"^/api/agent-harnesses$")),
    (
        "GET",
        "tree",
        re.compile(rf"^/api/(?P<type>[a-z]+)s/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"),
    ),
    (
        "POST",
        "paths_info",
        re.compile(rf"^/api/(?P<type>[a-z]+)s/{_REPO}/paths-info/(?P<rev>[^/]+)$"),
    ),
    ("HEAD", "resolve", _RESOLVE),  # a HEAD answer is the GET's headers without the body
    ("GET", "resolve", _RESOLVE),
]
# Pre-signed on the real Hub (S3), so the client sends no token there.
UNAUTHENTICATED = {"lfs_upload"}
# Public on the real Hub: answered without a token unless the repo is private.
READS = {"repo_info", "agent_harnesses", "tree", "paths_info", "resolve"}


@dataclass
class Call:
    """One request as the stand-in saw it."""

    method: str
    endpoint: str  # a ROUTES name, or "unknown"
    path: str
    status: int | str | None = None  # HTTP status, "dropped", or None while in flight
    authorized: bool | None = None  # bearer token matched (None: not checked)
    injected: bool = False  # the status was a fault the test asked for


@dataclass
class _Fault:
    kind: str  # "status" | "drop"
    remaining: int
    status: int = 503
    retry_after: int | None = None


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    changed: list[str]


@dataclass
class _Repo:
    private: bool
    branches: dict[str, str | None] = field(default_factory=lambda: {"main": None})
    trees: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    lfs_paths: dict[str, set[str]] = field(default_factory=lambda: {"main": set()})
    commits: list[Commit] = field(default_factory=list)
    # commit oid -> (files, LFS paths) as of that commit: reads may name a commit, not a branch
    snapshots: dict[str, tuple[dict[str, bytes], set[str]]] = field(default_factory=dict)

    def at(self, rev: str) -> tuple[str | None, dict[str, bytes], set[str]] | None:
        """(commit oid, files, LFS paths) at a branch or a commit oid; None if unknown."""
        if rev in self.branches:
            return self.branches[rev], self.trees[rev], self.lfs_paths[rev]
        if rev in self.snapshots:
            return (rev, *self.snapshots[rev])
        return None


class HubStandIn:
    """A threaded local HTTP server on 127.0.0.1 (free port) answering as the Hub would.

    Use as a context manager; `endpoint` is the URL to give the client.
    """

    def __init__(
        self,
        *,
        expected_token: str | None = None,
        hold_timeout_s: float = 30.0,
        lfs_extensions: tuple[str, ...] = LFS_EXTENSIONS,
    ):
        self.expected_token = expected_token
        self.lfs_extensions = lfs_extensions
        self.hold_timeout_s = hold_timeout_s
        self.calls: list[Call] = []
        self.lfs_store: dict[str, bytes] = {}
        self.repos: dict[tuple[str, str], _Repo] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self._holds: dict[str, int] = {}  # endpoint -> requests let through before holding
        self._release = threading.Event()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> HubStandIn:
        standin = self

        class Handler(_Handler):
            pass

        Handler.standin = standin
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="hub-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()  # let held requests finish so their threads end
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubStandIn:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "stand-in not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ test controls

    def fail(
        self, endpoint: str, times: int = 1, status: int = 429, retry_after: int | None = None
    ) -> None:
        """Answer the next `times` calls of `endpoint` with `status` (and Retry-After)."""
        with self._lock:
            self._faults.setdefault(endpoint, []).append(
                _Fault("status", times, status, retry_after)
            )

    def drop(self, endpoint: str, times: int = 1) -> None:
        """Close the connection half-way through reading the next `times` request bodies."""
        with self._lock:
            self._faults.setdefault(endpoint, []).append(_Fault("drop", times))

    def hold(self, endpoint: str, after: int = 0) -> None:
        """Let `after` more calls of `endpoint` through, then hold the rest until release()."""
        with self._lock:
            self._holds[endpoint] = after
            self._release.clear()

    def release(self) -> None:
        with self._lock:
            self._holds.clear()
        self._release.set()

    def clear_calls(self) -> None:
        with self._lock:
            self.calls.clear()

    # ------------------------------------------------------------------ inspection

    def count(self, endpoint: str, status: int | str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for c in self.calls
                if c.endpoint == endpoint and (status is None or c.status == status)
            )

    def sequence(self) -> list[str]:
        """Endpoint names in arrival order."""
        with self._lock:
            return [c.endpoint for c in self.calls]

    def held(self, endpoint: str) -> int:
        with self._lock:
            return sum(1 for c in self.calls if c.endpoint == endpoint and c.status == "held")

    def wait_until(self, predicate, timeout: float) -> bool:
        """Wait (bounded) until predicate(self) holds; re-checked on every state change."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout=timeout)

    def files(
        self, repo_id: str, repo_type: str = "dataset", revision: str = "main"
    ) -> dict[str, bytes]:
        with self._lock:
            return dict(self.repos[(repo_type, repo_id)].trees[revision])

    def commits(self, repo_id: str, repo_type: str = "dataset") -> list[Commit]:
        with self._lock:
            return list(self.repos[(repo_type, repo_id)].commits)

    # ------------------------------------------------------------------ internals

    def _record(self, call: Call) -> None:
        with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    def _set_status(self, call: Call, status: int | str, injected: bool = False) -> None:
        with self._changed:
            call.status = status
            call.injected = injected
            self._changed.notify_all()

    def _take_fault(self, endpoint: str) -> _Fault | None:
        with self._lock:
            for f in self._faults.get(endpoint, []):
                if f.remaining > 0:
                    f.remaining -= 1
                    return f
            return None

    def _should_hold(self, endpoint: str) -> bool:
        with self._lock:
            if endpoint not in self._holds:
                return False
            if self._holds[endpoint] > 0:
                self._holds[endpoint] -= 1
                return False
            return True


def _git_blob_sha1(data: bytes) -> str:
    # What the Hub reports as a regular file's oid (git's blob hash).
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _file_entry(path: str, data: bytes, lfs: bool) -> dict[str, Any]:
    """A file as the tree / paths-info endpoints list it."""
    if not lfs:
        return {"type": "file", "oid": _git_blob_sha1(data), "size": len(data), "path": path}
    sha256 = hashlib.sha256(data).hexdigest()
    # git holds the LFS pointer, so the blob oid is the pointer's hash.
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
    return {
        "type": "file",
        "oid": _git_blob_sha1(pointer.encode()),
        "size": len(data),
        "path": path,
        "lfs": {"oid": sha256, "size": len(data), "pointerSize": len(pointer)},
    }


def _tree_entries(tree: dict[str, bytes], lfs_paths: set[str]) -> dict[str, dict[str, Any]]:
    """Every file and folder of a tree by path; a folder's oid is a stand-in hash, not git's."""
    entries = {p: _file_entry(p, data, p in lfs_paths) for p, data in tree.items()}
    folders: dict[str, list[str]] = {}
    for p, e in entries.items():
        parts = p.split("/")
        for i in range(1, len(parts)):
            folders.setdefault("/".join(parts[:i]), []).append(e["oid"])
    for folder, oids in folders.items():
        oid = hashlib.sha1(f"{folder}\0{sorted(oids)}".encode()).hexdigest()
        entries[folder] = {"type": "directory", "oid": oid, "size": 0, "path": folder}
    return entries


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """`Range: bytes=a-b` / `bytes=a-` / `bytes=-n` -> [start, end) within size; None if unusable."""
    found = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not found or found[1] == found[2] == "":
        return None
    if found[1] == "":  # the last n bytes
        start, end = max(size - int(found[2]), 0), size
    else:
        start = int(found[1])
        end = min(int(found[2]) + 1, size) if found[2] else size
    return (start, end) if start < end else None


class _Handler(BaseHTTPRequestHandler):
    standin: HubStandIn
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects
    timeout = 30  # an idle or stuck client connection is closed, never waited on forever

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    # ------------------------------------------------------------------ plumbing

    def _dispatch(self, method: str) -> None:
        s = self.standin
        path = urlsplit(self.path).path
        endpoint, match = "unknown", None
        for m, name, pattern in ROUTES:
            if m == method and (found := pattern.match(path)):
                endpoint, match = name, found
                break
        call = Call(method=method, endpoint=endpoint, path=self.path)
        self._call = call
        s._record(call)

        if s._should_hold(endpoint):
            s._set_status(call, "held")
            s._release.wait(timeout=s.hold_timeout_s)
            self._read_body()
            self._reply(call, 503, {"error": "stand-in: held request released"}, injected=True)
            return

        fault = s._take_fault(endpoint)
        if fault is not None and fault.kind == "drop":
            self._drop_mid_body(call)
            return
        body = self._read_body()
        if fault is not None:
            headers = (
                {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            )
            self._reply(
                call, fault.status, {"error": f"stand-in: injected {fault.status}"}, headers, True
            )
            return

        if endpoint not in UNAUTHENTICATED and s.expected_token is not None:
            call.authorized = self.headers.get("authorization") == f"Bearer {s.expected_token}"
            anonymous_read = endpoint in READS and self.headers.get("authorization") is None
            if not call.authorized and not anonymous_read:  # private repos: see _readable
                self._reply(
                    call,
                    401,
                    {"error": "Invalid credentials"},
                    {"X-Error-Code": "InvalidCredentials"},
                )
                return
        if endpoint == "unknown":
            self._reply(call, 404, {"error": f"stand-in: not implemented: {method} {path}"})
            return
        try:
            status, payload, headers = getattr(self, f"_h_{endpoint}")(match, body)
        except Exception as e:  # noqa: BLE001 - a stand-in bug must fail the request, not hang it
            status, payload, headers = 500, {"error": f"stand-in error: {e!r}"}, {}
        self._reply(call, status, payload, headers)

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _drop_mid_body(self, call: Call) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length > 1:
            self.rfile.read(length // 2)
        self.standin._set_status(call, "dropped", injected=True)  # before the client sees it
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _reply(
        self,
        call: Call,
        status: int,
        payload: Any,
        headers: dict[str, str] | None = None,
        injected: bool = False,
    ) -> None:
        if isinstance(payload, bytes):  # file content (resolve)
            data, content_type = payload, "application/octet-stream"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json"
        # Recorded before the bytes go out: once the client has its answer, a test may count
        # calls at once, and a status set after the write raced with it (seen in CI).
        self.standin._set_status(call, status, injected)
        try:
            self.send_response(status)
            head = {"Content-Type": content_type, "Content-Length": str(len(data))}
            for k, v in {**head, **(headers or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":  # a HEAD answer has the headers of a GET, no body
                self.wfile.write(data)
        except OSError:  # the client went away (e.g. it was killed while held)
            self.close_connection = True

    def _repo(self, match: re.Match) -> tuple[_Repo | None, str]:
        kind = (match.groupdict().get("type") or "models").rstrip("s")
        key = (kind, match["repo"])
        return self.standin.repos.get(key), kind

    @staticmethod
    def _not_found(what: str, **headers: str) -> tuple[int, Any, dict[str, str]]:
        code = {"revision": "RevisionNotFound", "entry": "EntryNotFound"}.get(what, "RepoNotFound")
        return 404, {"error": f"{what} not found"}, {"X-Error-Code": code, **headers}

    def _readable(self, match: re.Match):
        """(repo, (commit oid, files, LFS paths) at the revision) or a 404 answer to return.

        A private repo is not found without the token, as on the Hub; a stand-in made
        without `expected_token` lets every reader in.
        """
        repo, _ = self._repo(match)
        if repo is None or (
            repo.private and self.standin.expected_token is not None and not self._call.authorized
        ):
            return None, self._not_found("repository")
        at = repo.at(unquote(match["rev"] or "main"))
        if at is None:
            return None, self._not_found("revision")
        return repo, at

    def _query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)

    # ------------------------------------------------------------------ endpoints

    def _h_create_repo(self, match: re.Match, body: bytes):
        req = json.loads(body)
        kind = req.get("type") or "model"
        repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
        prefix = "" if kind == "model" else f"{kind}s/"
        url = f"{self.standin.endpoint}/{prefix}{repo_id}"
        with self.standin._lock:
            if (kind, repo_id) in self.standin.repos:
                # The Hub's 409 names the existing repo; the client reads `url` from it.
                return 409, {"error": f"You already created this {kind} repo", "url": url}, {}
            private = req.get("visibility") == "private" or bool(req.get("private"))
            self.standin.repos[(kind, repo_id)] = _Repo(private=private)
        return 200, {"url": url, "name": repo_id}, {}

    def _h_validate_yaml(self, match: re.Match, body: bytes):
        content = json.loads(body).get("content", "")
        if not content.startswith("---"):
            return (
                200,
                {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]},
                {},
            )
        end = content.find("\n---", 3)
        try:
            meta = yaml.safe_load(content[3:end]) if end > 0 else None
        except yaml.YAMLError as e:
            return 400, {"errors": [{"message": f"invalid YAML: {e}"}]}, {}
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "metadata must be a YAML mapping"}]}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _h_preupload(self, match: re.Match, body: bytes):
        repo, _ = self._repo(match)
        rev = unquote(match["rev"])
        if repo is None:
            return self._not_found("repository")
        if rev not in repo.branches:
            return self._not_found("revision")
        tree, lfs_paths = repo.trees[rev], repo.lfs_paths[rev]
        answers = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = (
                f["path"].lower().endswith(self.standin.lfs_extensions)
                or f["size"] > LFS_SIZE_THRESHOLD
                or b"\0" in sample
            )
            oid = None
            if f["path"] in tree:
                data = tree[f["path"]]
                oid = (
                    hashlib.sha256(data).hexdigest()
                    if f["path"] in lfs_paths
                    else _git_blob_sha1(data)
                )
            answers.append(
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        return 200, {"files": answers, "commitOid": repo.branches[rev]}, {}

    def _h_lfs_batch(self, match: re.Match, body: bytes):
        repo, _ = self._repo(match)
        if repo is None:
            return self._not_found("repository")
        req = json.loads(body)
        if req.get("operation") != "upload" or "basic" not in req.get("transfers", ["basic"]):
            return 422, {"message": "stand-in speaks only the basic upload transfer"}, {}
        base = self.standin.endpoint
        prefix = "datasets/" if match.groupdict().get("type") == "datasets" else ""
        objects = []
        for obj in req["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if self.standin.lfs_store.get(obj["oid"]) is None:  # missing: ask for it
                answer["actions"] = {
                    "upload": {"href": f"{base}/_standin/lfs/{obj['oid']}"},
                    "verify": {
                        "href": f"{base}/{prefix}{match['repo']}.git/info/lfs/objects/verify"
                    },
                }
            objects.append(answer)
        return 200, {"transfer": "basic", "objects": objects}, {}

    def _h_lfs_upload(self, match: re.Match, body: bytes):
        oid = match["oid"]
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {"error": "content does not match its sha256"}, {}
        with self.standin._lock:
            self.standin.lfs_store[oid] = body
        return 200, {}, {"ETag": f'"{oid[:32]}"'}

    def _h_lfs_verify(self, match: re.Match, body: bytes):
        req = json.loads(body)
        data = self.standin.lfs_store.get(req["oid"])
        if data is None or len(data) != req["size"]:
            return 404, {"error": "object not found or wrong size"}, {}
        return 200, {"success": True}, {}

    def _h_commit(self, match: re.Match, body: bytes):
        repo, kind = self._repo(match)
        rev = unquote(match["rev"])
        if repo is None:
            return self._not_found("repository")
        if rev not in repo.branches:
            return self._not_found("revision")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return 400, {"error": "commit payload must start with a header line"}, {}
        header = lines[0]["value"]
        with self.standin._lock:
            head = repo.branches[rev]
            if header.get("parentCommit") and header["parentCommit"] != head:
                return (
                    412,
                    {"error": "A commit has happened since. Please refresh and try again."},
                    {},
                )
            tree, lfs_paths = dict(repo.trees[rev]), set(repo.lfs_paths[rev])
            changed = []
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                p = value["path"]
                if key == "file":
                    tree[p] = base64.b64decode(value["content"])
                    lfs_paths.discard(p)
                elif key == "lfsFile":
                    data = self.standin.lfs_store.get(value["oid"])
                    if data is None:
                        return 422, {"error": f"LFS object for {p} was never uploaded"}, {}
                    tree[p] = data
                    lfs_paths.add(p)
                elif key == "deletedFile":
                    tree.pop(p, None)
                    lfs_paths.discard(p)
                else:
                    return 400, {"error": f"stand-in does not support commit key {key!r}"}, {}
                changed.append(p)
            oid = hashlib.sha1(json.dumps([head, header, changed]).encode() + body).hexdigest()
            repo.trees[rev], repo.lfs_paths[rev], repo.branches[rev] = tree, lfs_paths, oid
            repo.snapshots[oid] = (tree, lfs_paths)
            repo.commits.append(
                Commit(oid=oid, parent=head, message=header.get("summary", ""), changed=changed)
            )
        prefix = "" if kind == "model" else f"{kind}s/"
        url = f"{self.standin.endpoint}/{prefix}{match['repo']}/commit/{oid}"
        return (
            200,
            {"success": True, "commitOid": oid, "commitUrl": url, "pullRequestUrl": None},
            {},
        )

    def _h_repo_info(self, match: re.Match, body: bytes):
        repo, at = self._readable(match)
        if repo is None:
            return at
        oid, tree, lfs_paths = at
        blobs = self._query().get("blobs", ["false"])[-1] == "true"  # files_metadata=True
        siblings = []
        for p in sorted(tree):
            sibling: dict[str, Any] = {"rfilename": p}
            if blobs:
                entry = _file_entry(p, tree[p], p in lfs_paths)
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if "lfs" in entry:
                    sibling["lfs"] = {
                        "sha256": entry["lfs"]["oid"],
                        "size": entry["lfs"]["size"],
                        "pointerSize": entry["lfs"]["pointerSize"],
                    }
            siblings.append(sibling)
        return (
            200,
            {
                "id": match["repo"],
                "sha": oid,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "siblings": siblings,
            },
            {},
        )

    def _h_agent_harnesses(self, match: re.Match, body: bytes):
        # huggingface_hub fetches this registry (best effort) for its user agent: none known.
        return 200, {"standardEnvVars": [], "harnesses": {}}, {}

    def _h_tree(self, match: re.Match, body: bytes):
        repo, at = self._readable(match)
        if repo is None:
            return at
        _, tree, lfs_paths = at
        base = unquote(match["path"] or "").strip("/")
        query = self._query()
        recursive = query.get("recursive", ["false"])[-1] == "true"
        entries = _tree_entries(tree, lfs_paths)
        if base and entries.get(base, {}).get("type") != "directory":
            return self._not_found("entry")  # no such folder (or a file)
        prefix = f"{base}/" if base else ""
        listing = [
            e
            for p, e in sorted(entries.items())
            if p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])
        ]
        return 200, listing, {}

    def _h_paths_info(self, match: re.Match, body: bytes):
        repo, at = self._readable(match)
        if repo is None:
            return at
        _, tree, lfs_paths = at
        form = parse_qs(body.decode())  # form-encoded: paths=a&paths=b&expand=False
        entries = _tree_entries(tree, lfs_paths)
        wanted = [p.strip("/") for p in form.get("paths", [])]
        return 200, [entries[p] for p in wanted if p in entries], {}

    def _h_resolve(self, match: re.Match, body: bytes):
        repo, at = self._readable(match)
        if repo is None:
            return at
        oid, tree, lfs_paths = at
        path = unquote(match["path"])
        commit = {"X-Repo-Commit": oid} if oid else {}
        if path not in tree:
            return self._not_found("entry", **commit)
        data = tree[path]
        entry = _file_entry(path, data, path in lfs_paths)
        headers = {**commit, "ETag": f'"{entry["oid"]}"', "Accept-Ranges": "bytes"}
        if "lfs" in entry:
            # On the Hub a 302 to a CDN carries these; here the bytes are served directly.
            headers["ETag"] = f'"{entry["lfs"]["oid"]}"'
            headers["X-Linked-Etag"] = f'"{entry["lfs"]["oid"]}"'
            headers["X-Linked-Size"] = str(len(data))
        wanted = self.headers.get("range")
        if wanted:
            span = _byte_range(wanted, len(data))
            if span is None:
                return (
                    416,
                    {"error": f"bad range {wanted}"},
                    {"Content-Range": f"bytes */{len(data)}"},
                )
            start, end = span
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
            return 206, data[start:end], headers
        return 200, data, headers


# --- the real client, pointed at a stand-in -------------------------------------------------
@pytest.fixture
def real_client_for_standin(monkeypatch, tmp_path):
    """Real client, xet off, every request bounded by a timeout, no real login leaking in."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    # tests/conftest.py turns the Hub off for every other test; the stand-in is local.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")  # for child processes
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(
        huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-login-token")
    )
    # huggingface_hub's shared client has no timeout by default: bound every request here.
    huggingface_hub.set_client_factory(
        lambda: httpx2.Client(follow_redirects=True, timeout=httpx2.Timeout(20.0))
    )
    yield
    huggingface_hub.set_client_factory(default_client_factory)
