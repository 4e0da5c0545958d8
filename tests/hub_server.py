"""A small Hugging Face Hub on 127.0.0.1 for tests: the real ``huggingface_hub`` client talks to it through
``HF_ENDPOINT`` / ``endpoint=``.

It serves model repositories from memory in the Hub's URL layout, as much of it as the client uses to download
and to upload:

* ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: the repository's info (``sha``,
  ``siblings``);
* ``GET /api/models/{repo}/tree/{rev}``: its file list (one page, LFS entries for ``*.safetensors``);
* ``HEAD`` / ``GET /{repo}/resolve/{rev}/{path}``: a file, with ``X-Repo-Commit``, ``ETag`` and ``Range``
  support;
* ``POST /api/repos/create``, ``/api/models/{repo}/preupload/{rev}`` (every file "regular") and
  ``/api/models/{repo}/commit/{rev}`` (NDJSON with base64 contents): a new commit on a branch.

Errors carry the Hub's ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``,
``GatedRepo``), which the client turns into its typed exceptions. ``break_after`` makes the next download of a
file send only its first bytes and drop the connection; ``down`` (True, or a set of file paths) answers downloads
with 500. Every request is
logged in ``requests`` (method, path, Range, Authorization).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit sha -> files
    refs: dict[str, str] = field(default_factory=dict)  # branch / tag -> commit sha
    gated_token: str | None = None  # when set, every request needs "Authorization: Bearer <token>"

    def resolve(self, rev: str) -> str | None:
        if rev in self.commits:
            return rev
        return self.refs.get(rev)


class FakeHub:
    """``with FakeHub() as hub: hub.add("owner/name", files); hub.endpoint``"""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[dict] = []
        self.break_after: dict[str, int] = {}  # file path -> bytes sent before the next GET of it drops
        self.down: bool | set[str] = False
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ---- repositories ------------------------------------------------------------------------------------------
    def add(self, repo_id: str, files: dict[str, bytes], ref: str = "main", gated_token: str | None = None) -> str:
        """Commit ``files`` (the whole tree) to ``ref`` of ``repo_id``; returns the commit sha."""
        repo = self.repos.setdefault(repo_id, Repo())
        repo.gated_token = gated_token if gated_token is not None else repo.gated_token
        h = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        h.update(str(len(repo.commits)).encode())
        sha = h.hexdigest()
        repo.commits[sha] = dict(files)
        repo.refs[ref] = sha
        return sha

    # ---- server ------------------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._handle(self, "HEAD")

            def do_GET(self):
                hub._handle(self, "GET")

            def do_POST(self):
                hub._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    # ---- request handling --------------------------------------------------------------------------------------
    def _send(self, h, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, str(v))
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head and body:
            h.wfile.write(body)

    def _json(self, h, data, status=200, head=False):
        self._send(h, status, json.dumps(data).encode(), {"Content-Type": "application/json"}, head)

    def _error(self, h, status, code, message, head=False):
        self._send(h, status, json.dumps({"error": message}).encode(),
                   {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message}, head)

    def _handle(self, h, method: str):
        url = urlsplit(h.path)
        path = unquote(url.path)
        auth = h.headers.get("Authorization")
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0)) if method == "POST" else b""
        with self._lock:
            self.requests.append({"method": method, "path": path, "range": h.headers.get("Range"),
                                  "authorization": auth})
        head = method == "HEAD"
        if method == "POST":
            return self._post(h, path, body, auth)
        if path.startswith("/api/models/"):
            return self._api_get(h, path[len("/api/models/"):], parse_qs(url.query), auth, head)
        if "/resolve/" in path:
            return self._resolve(h, path, auth, head)
        return self._error(h, 404, "EntryNotFound", f"no route {path}", head)

    def _repo(self, h, repo_id, auth, head=False) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(h, 404, "RepoNotFound", "Repository not found", head)
            return None
        if repo.gated_token and auth != f"Bearer {repo.gated_token}":
            self._error(h, 401, "GatedRepo", "Access to this repository is restricted", head)
            return None
        return repo

    def _split_repo(self, rest: str) -> tuple[str, str]:
        parts = rest.split("/")
        return "/".join(parts[:2]), "/".join(parts[2:])

    def _api_get(self, h, rest, query, auth, head):
        repo_id, tail = self._split_repo(rest)
        repo = self._repo(h, repo_id, auth, head)
        if repo is None:
            return
        kind, _, rev = tail.partition("/")
        if tail == "":
            kind, rev = "revision", "main"
        sha = repo.resolve(rev.split("/")[0] if kind == "tree" else rev)
        if sha is None:
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
        files = repo.commits[sha]
        if kind == "revision":
            return self._json(h, {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                                  "gated": bool(repo.gated_token), "disabled": False, "tags": [],
                                  "siblings": [{"rfilename": n} for n in sorted(files)]}, head=head)
        if kind == "tree":
            entries = []
            for name in sorted(files):
                data = files[name]
                entry = {"type": "file", "oid": _git_oid(data), "size": len(data), "path": name}
                if name.endswith(".safetensors"):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries.append(entry)
            return self._json(h, entries, head=head)
        return self._error(h, 404, "EntryNotFound", f"no route {kind}", head)

    def _resolve(self, h, path, auth, head):
        left, _, right = path.lstrip("/").partition("/resolve/")
        repo = self._repo(h, left, auth, head)
        if repo is None:
            return
        rev, _, name = right.partition("/")
        sha = repo.resolve(rev)
        if sha is None:
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
        data = repo.commits[sha].get(name)
        if data is None:
            return self._error(h, 404, "EntryNotFound", f"{name} does not exist", head)
        etag = hashlib.sha256(data).hexdigest() if name.endswith(".safetensors") else _git_oid(data)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if head:
            return self._send(h, 200, data, headers, head=True)
        down = self.down if isinstance(self.down, bool) else name in self.down
        if down and name not in self.break_after:  # a planned break happens first
            return self._error(h, 500, "Internal", "the Hub is down")
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[len("bytes="):].split("-")[0])
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        cut = self.break_after.pop(name, None)
        if cut is None:
            return self._send(h, status, data[start:], headers)
        # announce the whole remainder, send some of it, then drop the connection
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        h.wfile.write(data[start:start + cut])
        h.wfile.flush()
        h.close_connection = True
        h.connection.shutdown(2)

    def _post(self, h, path, body, auth):
        if path == "/api/validate-yaml":  # the client checks a README's front matter before committing it
            return self._json(h, {"errors": [], "warnings": []})
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
            if repo_id in self.repos:
                return self._send(h, 409, json.dumps({"error": "You already created this model repo",
                                                      "url": f"{self.endpoint}/{repo_id}"}).encode(),
                                  {"Content-Type": "application/json", "X-Error-Code": "RepoExists"})
            self.repos[repo_id] = Repo()
            self.add(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
            return self._json(h, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id})
        if not path.startswith("/api/models/"):
            return self._error(h, 404, "EntryNotFound", f"no route {path}")
        repo_id, tail = self._split_repo(path[len("/api/models/"):])
        repo = self._repo(h, repo_id, auth)
        if repo is None:
            return
        kind, _, rev = tail.partition("/")
        if kind == "preupload":
            files = json.loads(body)["files"]
            return self._json(h, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                             for f in files]})
        if kind == "commit":
            sha = repo.resolve(rev)
            files = dict(repo.commits[sha]) if sha else {}
            summary = ""
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "header":
                    summary = item["value"].get("summary", "")
                elif item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "deletedFile":
                    files.pop(item["value"]["path"], None)
                else:
                    return self._error(h, 400, "BadRequest", f"unsupported commit operation {item['key']}")
            new = self.add(repo_id, files, ref=rev)
            return self._json(h, {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{new}", "commitOid": new,
                                  "commitMessage": summary, "success": True})
        return self._error(h, 404, "EntryNotFound", f"no route {kind}")
