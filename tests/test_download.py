"""Models listed with a url: downloaded on first use from a local HTTP server on 127.0.0.1 (started
and stopped by the fixture), verified, cached; every failure is one line and caches nothing."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest

from GTVAutoSegLib.bundle import open_model, resolve_model, save_bundle
from GTVAutoSegLib.catalog import list_models, prefetch
from GTVAutoSegLib.download import cache_folder
from GTVAutoSegLib.errors import GTVError

from test_cascade import _fake_bundle


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut: set[str] = set()  # paths whose body stops halfway (Content-Length still says the whole)
    requests: list[str] = []

    def do_GET(self):  # noqa: N802  (http.server's name)
        self.requests.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.path in self.cut else body)
        if self.path in self.cut:
            self.close_connection = True

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server():
    _Handler.files, _Handler.cut, _Handler.requests = {}, set(), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GTVAUTOSEG_CACHE", str(tmp_path / "cache"))
    assert cache_folder() == tmp_path / "cache" / "models"
    return cache_folder()


@pytest.fixture
def bundle_bytes(tmp_path) -> bytes:
    path = tmp_path / "made.pt"
    save_bundle(_fake_bundle(), path)
    return path.read_bytes()


def _models_json(folder: Path, url: str, sha256: str, file: str = "remote_v1.pt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "Models.json"
    path.write_text(json.dumps({"models": [{"name": "remote", "version": "1.0", "file": file, "sha256": sha256,
                                            "title": "Remote model", "default": True, "url": url}]}))
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_first_use_downloads_verifies_and_caches_then_reuses(server, cache, bundle_bytes, tmp_path):
    base, handler = server
    handler.files["/models/remote_v1.pt"] = bundle_bytes
    models = _models_json(tmp_path / "Resources", f"{base}/models/remote_v1.pt", hashlib.sha256(bundle_bytes).hexdigest())
    assert list_models(models)[0].display_name() == "Remote model (1.0, downloaded on first use)"
    seen = []

    prefetch(None, models, progress=lambda stage, fraction: seen.append((stage, fraction)))
    bundle = open_model("remote", models)

    assert bundle.name == "fake" and handler.requests == ["/models/remote_v1.pt"]
    assert _leftovers(cache) == ["remote_v1.pt"] and (cache / "remote_v1.pt").read_bytes() == bundle_bytes
    fractions = [f for s, f in seen if s == "download"]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    # Used from the cache afterwards: the server is not asked again.
    path, sha, _ = resolve_model("remote@1.0", models)
    assert path == cache / "remote_v1.pt" and handler.requests == ["/models/remote_v1.pt"]
    # A damaged cached copy is replaced by a fresh download, not loaded.
    (cache / "remote_v1.pt").write_bytes(b"damaged")
    assert open_model(None, models).name == "fake" and len(handler.requests) == 2


@pytest.mark.parametrize("case, message", [
    ("truncated file", "does not match its SHA-256 in Models.json .*nothing was cached"),
    ("wrong hash", "does not match its SHA-256 in Models.json .*nothing was cached"),
    ("cut connection", "stopped after .*bytes.*nothing was cached"),
    ("missing on the server", "the server answered 404 Not Found"),
])
def test_bad_downloads_are_one_line_and_cache_nothing(server, cache, bundle_bytes, tmp_path, case, message):
    base, handler = server
    sha = hashlib.sha256(bundle_bytes).hexdigest()
    if case == "truncated file":
        handler.files["/m.pt"] = bundle_bytes[:-1000]
    elif case == "wrong hash":
        handler.files["/m.pt"] = bundle_bytes
        sha = hashlib.sha256(b"another model").hexdigest()
    elif case == "cut connection":
        handler.files["/m.pt"] = bundle_bytes
        handler.cut.add("/m.pt")
    models = _models_json(tmp_path / "Resources", f"{base}/m.pt", sha)

    with pytest.raises(GTVError, match=message) as error:
        open_model(None, models)

    assert "\n" not in str(error.value) and "remote@1.0" in str(error.value)
    assert _leftovers(cache) == []


def test_server_down_is_one_line(cache, bundle_bytes, tmp_path):
    with socket.socket() as s:  # a port nothing listens on any more
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    models = _models_json(tmp_path / "Resources", f"http://127.0.0.1:{port}/m.pt", "0" * 64)
    with pytest.raises(GTVError, match=r"cannot download model remote@1.0 from http://127.0.0.1:\d+/m.pt: .*refused"):
        open_model(None, models)
    assert _leftovers(cache) == []


def test_models_in_the_repository_need_no_server(cache, bundle_bytes, tmp_path):
    resources = tmp_path / "Resources"
    models = _models_json(resources, "http://127.0.0.1:9/never-asked.pt", hashlib.sha256(bundle_bytes).hexdigest())
    (resources / "remote_v1.pt").write_bytes(bundle_bytes)
    assert open_model("remote", models).name == "fake"
    assert resolve_model(None, models)[0] == resources / "remote_v1.pt" and _leftovers(cache) == []
    with pytest.raises(GTVError, match="only http"):
        _models_json(resources, "file:///etc/passwd", "0" * 64, file="elsewhere.pt")
        open_model(None, resources / "Models.json")


def test_the_shipped_models_json_still_resolves_in_the_repository():
    entries = list_models()
    assert entries and all(e.path(Path(__file__).resolve().parents[1] / "Resources").is_file() or e.url for e in entries)
    path, sha, entry = resolve_model(None)
    assert path.is_file() and sha == entry.sha256
