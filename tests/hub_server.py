"""A small Hugging Face Hub stand-in on 127.0.0.1, speaking the endpoints huggingface_hub uses for
create_repo, upload_folder (preupload + commit), branches, tags, revision/tree listings and
resolve (HEAD + GET). The real client runs unmodified against it; nothing leaves the machine."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Store:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.counter = 0
        self.requests: list[str] = []
        self.down = False  # a stopped server also drops kept-alive connections
        # a misbehaving Hub, for every request: {"status": 503} answers that error, {"redirect": URL} a 302 to
        # URL, {"delay": SECONDS} answers nothing for that long (a slow or hung server); "only": a regex of
        # "METHOD /path" limits it to some requests (e.g. "GET .*/resolve/": the file downloads)
        self.fault: dict = {}

    def new_sha(self, seed: str) -> str:
        self.counter += 1
        return hashlib.sha1(f"{seed}:{self.counter}".encode()).hexdigest()

    def create(self, repo_id: str, files: dict[str, bytes] | None = None) -> None:
        sha = self.new_sha(repo_id)
        self.repos[repo_id] = {"commits": {sha: dict(files or {".gitattributes": b"*.safetensors filter=lfs\n"})},
                               "refs": {"main": sha}}

    def resolve(self, repo_id: str, rev: str) -> str | None:
        repo = self.repos[repo_id]
        if rev in repo["refs"]:
            return repo["refs"][rev]
        return rev if rev in repo["commits"] else None


ROUTES = [
    ("POST", r"^/api/repos/create$", "create_repo"),
    ("POST", r"^/api/validate-yaml$", "validate_yaml"),
    ("POST", r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)/preupload/(?P<rev>[^/]+)$", "preupload"),
    ("POST", r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)/commit/(?P<rev>[^/]+)$", "commit"),
    ("POST", r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)/branch/(?P<branch>[^/]+)$", "branch"),
    ("POST", r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)/tag/(?P<rev>[^/]+)$", "tag"),
    ("GET", r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)/revision/(?P<rev>[^/]+)$", "revision"),
    ("GET", r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)/tree/(?P<rev>[^/]+)$", "tree"),
    ("HEAD", r"^/(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
    ("GET", r"^/(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store: Store

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self.route("GET")

    def do_HEAD(self) -> None:
        self.route("HEAD")

    def do_POST(self) -> None:
        self.route("POST")

    def route(self, method: str) -> None:
        if self.store.down:
            self.close_connection = True
            return
        path = urlparse(self.path).path
        self.store.requests.append(f"{method} {path}")
        if self.store.fault and re.search(self.store.fault.get("only", ""), f"{method} {path}"):
            return self.misbehave()
        for m, pattern, name in ROUTES:
            match = re.match(pattern, path)
            if m == method and match:
                groups = {k: unquote(v) for k, v in match.groupdict().items()}
                with self.store.lock:
                    return getattr(self, name)(method, **groups)
        self.send_json(404, {"error": f"no route for {method} {path}"})

    def misbehave(self) -> None:
        fault = self.store.fault
        if "delay" in fault:
            import time

            time.sleep(fault["delay"])
            self.close_connection = True
            return
        if "redirect" in fault:
            self.send_response(302)
            self.send_header("Location", fault["redirect"])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_json(fault["status"], {"error": f"status {fault['status']}"})

    # -- helpers --------------------------------------------------------------------------------------
    def end_headers(self) -> None:
        # One request per connection: a stopped server must look down, not linger in a client's pool.
        self.send_header("Connection", "close")
        self.close_connection = True
        super().end_headers()

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length", 0))
        return self.rfile.read(length) if length else b""

    def send_json(self, status: int, obj, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def error(self, status: int, code: str, message: str) -> None:
        self.send_json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def snapshot(self, repo: str, rev: str) -> tuple[str, dict[str, bytes]] | None:
        """(commit, files) at ``rev``, or None after answering with the Hub's 404."""
        if not self.repo_or_404(repo):
            return None
        sha = self.store.resolve(repo, rev)
        if sha is None:
            self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return sha, self.store.repos[repo]["commits"][sha]

    def repo_or_404(self, repo: str) -> bool:
        if repo not in self.store.repos:
            self.error(404, "RepoNotFound", "Repository not found")
            return False
        return True

    # -- endpoints ------------------------------------------------------------------------------------
    def create_repo(self, method: str) -> None:
        payload = json.loads(self.body() or b"{}")
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        url = f"http://{self.headers['Host']}/{repo_id}"
        if repo_id in self.store.repos:
            return self.send_json(409, {"error": "You already created this model repo", "url": url})
        self.store.create(repo_id)
        self.send_json(200, {"url": url})

    def validate_yaml(self, method: str) -> None:
        self.body()
        self.send_json(200, {"errors": [], "warnings": []})

    def preupload(self, method: str, repo: str, rev: str) -> None:
        payload = json.loads(self.body() or b"{}")
        if not self.repo_or_404(repo):
            return
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in payload.get("files", [])]
        self.send_json(200, {"files": files})

    def commit(self, method: str, repo: str, rev: str) -> None:
        lines = [json.loads(line) for line in self.body().splitlines() if line.strip()]
        if not self.repo_or_404(repo):
            return
        parent = self.store.resolve(repo, rev)
        if parent is None:
            return self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        files = dict(self.store.repos[repo]["commits"][parent])
        for line in lines:
            value = line.get("value", {})
            if line["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "deletedFile":
                files.pop(value["path"], None)
            elif line["key"] == "lfsFile":
                return self.send_json(400, {"error": "this test server only takes regular uploads"})
        sha = self.store.new_sha(repo)
        self.store.repos[repo]["commits"][sha] = files
        self.store.repos[repo]["refs"][rev] = sha
        self.send_json(200, {"commitOid": sha, "commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{sha}"})

    def branch(self, method: str, repo: str, branch: str) -> None:
        payload = json.loads(self.body() or b"{}")
        if not self.repo_or_404(repo):
            return
        refs = self.store.repos[repo]["refs"]
        if branch in refs:
            return self.send_json(409, {"error": "Reference already exists"})
        refs[branch] = self.store.resolve(repo, payload.get("startingPoint", "main"))
        self.send_json(200, {})

    def tag(self, method: str, repo: str, rev: str) -> None:
        payload = json.loads(self.body() or b"{}")
        if not self.repo_or_404(repo):
            return
        sha = self.store.resolve(repo, rev)
        if sha is None:
            return self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        self.store.repos[repo]["refs"][payload["tag"]] = sha
        self.send_json(200, {})

    def revision(self, method: str, repo: str, rev: str) -> None:
        if (found := self.snapshot(repo, rev)) is None:
            return
        sha, files = found
        self.send_json(200, {"id": repo, "modelId": repo, "sha": sha, "private": False,
                             "siblings": [{"rfilename": p} for p in sorted(files)]})

    def tree(self, method: str, repo: str, rev: str) -> None:
        if (found := self.snapshot(repo, rev)) is None:
            return
        _, files = found
        self.send_json(200, [{"type": "file", "path": p, "size": len(d), "oid": git_blob_oid(d)}
                             for p, d in sorted(files.items())])

    def resolve(self, method: str, repo: str, rev: str, path: str) -> None:
        if (found := self.snapshot(repo, rev)) is None:
            return
        sha, files = found
        if path not in files:
            return self.error(404, "EntryNotFound", f"{path} does not exist on {rev}")
        data = files[path]
        self.send_response(200)
        self.send_header("X-Repo-Commit", sha)
        self.send_header("ETag", f'"{git_blob_oid(data)}"')
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if method == "GET":
            self.wfile.write(data)


class HubServer:
    def __init__(self) -> None:
        self.store = Store()
        handler = type("BoundHandler", (Handler,), {"store": self.store})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.store.down = True
        self.httpd.shutdown()
        self.httpd.server_close()
