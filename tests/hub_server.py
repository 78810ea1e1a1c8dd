"""A small Hugging Face Hub of our own on 127.0.0.1, for the real ``huggingface_hub`` client
(pointed at it with ``HF_ENDPOINT``): the routes a snapshot download calls, served from checkpoint
folders, with the Hub's error headers (``X-Error-Code``) and a log of every request.

Routes (as huggingface.co answers them):
- ``GET /api/models/{org}/{name}[/revision/{rev}]``: repo info (``sha``, ``siblings``)
- ``GET /api/models/{org}/{name}/tree/{rev}[/{path}]``: the file listing (``recursive``, one page)
- ``HEAD|GET /{org}/{name}/resolve/{rev}/{path}``: a file, with ``X-Repo-Commit``, ``ETag`` and, for
  weights, the LFS headers (``X-Linked-Etag``, ``X-Linked-Size``); ``Range`` for resumed downloads
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".h5", ".msgpack", ".onnx")


@dataclass
class Repo:
    """One repo: commits (sha -> folder of files), refs (branch or tag -> sha), optional gate."""

    commits: dict[str, Path]
    refs: dict[str, str]
    token: str | None = None  # gated: requests need ``Authorization: Bearer <token>``
    sizes: dict[str, int] = field(default_factory=dict)  # listed sizes that differ from the file's (disk-full tests)


def commit_sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None
    range: str | None


class FakeHub:
    """``with FakeHub() as hub: hub.add(...); os.environ["HF_ENDPOINT"] = hub.url``."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.log: list[Request] = []
        self.down = False
        self.cuts: dict[str, int] = {}  # file path -> how many next GETs stop half-way (a dropped connection)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub.handle(self, body=False)

            def do_GET(self) -> None:
                hub.handle(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        """Stop: the listener closes, and connections the client keeps alive are dropped unanswered."""
        self.down = True
        self.server.shutdown()
        self.server.server_close()

    def add(
        self, repo_id: str, folders: dict[str, Path], refs: dict[str, str] | None = None, token: str | None = None
    ) -> dict[str, str]:
        """Publish ``repo_id``: ``folders`` maps a label to a folder, each one commit; ``main`` points
        at the last unless ``refs`` (ref -> label) says otherwise. Returns label -> commit sha."""
        shas = {label: commit_sha(f"{repo_id}:{label}") for label in folders}
        refs = {name: shas[label] for name, label in (refs or {}).items()}
        refs.setdefault("main", shas[list(folders)[-1]])
        self.repos[repo_id] = Repo({shas[k]: v for k, v in folders.items()}, refs, token)
        return shas

    def requested(self, suffix: str = "") -> list[str]:
        """Paths of the files fetched or probed (resolve route), optionally only those ending in ``suffix``."""
        return [r.path for r in self.log if "/resolve/" in r.path and r.path.endswith(suffix)]

    # -- serving -----------------------------------------------------------------------------
    def handle(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        if self.down:
            h.close_connection = True
            h.connection.shutdown(2)
            return
        url = urlsplit(h.path)
        path = unquote(url.path)
        self.log.append(Request(h.command, path, h.headers.get("Authorization"), h.headers.get("Range")))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id, rest = "/".join(parts[2:4]), parts[4:]
            repo = self.check(h, repo_id)
            if repo is None:
                return
            if not rest or rest[0] == "revision":
                sha = self.commit(h, repo, rest[1] if len(rest) > 1 else "main")
                if sha:
                    files = self.files(repo, sha)
                    self.json(
                        h,
                        {
                            "id": repo_id,
                            "modelId": repo_id,
                            "sha": sha,
                            "private": False,
                            "gated": "manual" if repo.token else False,
                            "tags": [],
                            "downloads": 0,
                            "likes": 0,
                            "siblings": [{"rfilename": p} for p in files],
                        },
                    )
                return
            if rest[0] == "tree" and len(rest) >= 2:
                sha = self.commit(h, repo, rest[1])
                if sha:
                    prefix = "/".join(rest[2:])
                    self.json(
                        h, [self.entry(repo, p, f) for p, f in self.files(repo, sha).items() if p.startswith(prefix)]
                    )
                return
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id = "/".join(parts[:2])
            repo = self.check(h, repo_id)
            if repo is None:
                return
            sha = self.commit(h, repo, parts[3])
            if not sha:
                return
            name = "/".join(parts[4:])
            file = self.files(repo, sha).get(name)
            if file is None:
                return self.error(h, 404, "EntryNotFound", f"{name} does not exist at {sha}")
            self.file(h, sha, name, file, body)
            return
        self.error(h, 404, "RepoNotFound", "no such route")

    def check(self, h: BaseHTTPRequestHandler, repo_id: str) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self.error(h, 401, "RepoNotFound", "Repository not found")  # as the Hub: 401 for missing repos
            return None
        if repo.token and h.headers.get("Authorization") != f"Bearer {repo.token}":
            self.error(
                h,
                401,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it "
                "and be authenticated to access it. Please log in.",
            )
            return None
        return repo

    def commit(self, h: BaseHTTPRequestHandler, repo: Repo, rev: str) -> str | None:
        sha = repo.refs.get(rev) or (rev if rev in repo.commits else None)
        if sha is None:
            self.error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return sha

    @staticmethod
    def files(repo: Repo, sha: str) -> dict[str, Path]:
        root = repo.commits[sha]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    @staticmethod
    def hashes(file: Path) -> tuple[str, str]:
        data = file.read_bytes()
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        return blob, hashlib.sha256(data).hexdigest()

    def entry(self, repo: Repo, path: str, file: Path) -> dict:
        blob, sha256 = self.hashes(file)
        size = repo.sizes.get(path, file.stat().st_size)
        item = {"type": "file", "oid": blob, "size": size, "path": path}
        if path.endswith(LFS_SUFFIXES):
            item["lfs"] = {"oid": sha256, "size": size, "pointerSize": 134}
        return item

    def file(self, h: BaseHTTPRequestHandler, sha: str, name: str, file: Path, body: bool) -> None:
        data = file.read_bytes()
        blob, sha256 = self.hashes(file)
        start = 0
        ranged = h.headers.get("Range")
        if body and ranged and ranged.startswith("bytes="):
            start = int(ranged[6:].split("-")[0] or 0)
        part = data[start:]
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", sha)
        h.send_header("ETag", f'"{blob}"')
        if name.endswith(LFS_SUFFIXES):
            h.send_header("X-Linked-Etag", f'"{sha256}"')
            h.send_header("X-Linked-Size", str(len(data)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(part)))
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        if not body:
            return
        if self.cuts.get(name, 0) > 0:  # announce it all, send half, drop the connection
            self.cuts[name] -= 1
            h.wfile.write(part[: len(part) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        h.wfile.write(part)

    @staticmethod
    def json(h: BaseHTTPRequestHandler, value) -> None:
        data = json.dumps(value).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def error(h: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        data = json.dumps({"error": message}).encode()
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
