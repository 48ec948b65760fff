"""hub_download.download_base against a small fake Hub (a threaded http.server on localhost, HF_ENDPOINT pointing to it):
the model's file list with hashes (/api/models/<id>), HEAD and GET (with Range) of /<id>/resolve/<commit>/<file> with
the headers huggingface_hub 0.36 reads (X-Repo-Commit, ETag or X-Linked-Etag, Content-Length or X-Linked-Size).
Resuming a cut download, verifying the hashes, and M030 when a file does not match."""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from afinar.errors import AfinarError

REPO = "org-falsa/modelo-pequeno"
COMMIT = "a" * 40


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324


class FakeHub:
    def __init__(self):
        self.files = {"config.json": b'{"model_type": "llama"}', "tokenizer.json": b"{}",
                      "model.safetensors": bytes(range(256)) * 4096,  # 1 MiB, LFS
                      "pytorch_model.bin": b"x" * 100}  # another format's weights: never fetched
        self.lfs = {"model.safetensors"}
        self.corrupt: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []

    def info(self) -> dict:
        siblings = []
        for name, data in self.files.items():
            entry = {"rfilename": name, "size": len(data), "blobId": git_sha1(data)}
            if name in self.lfs:
                entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            siblings.append(entry)
        return {"id": REPO, "modelId": REPO, "sha": COMMIT, "private": False, "siblings": siblings}

    def handler(hub):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _file(self):
                prefix = f"/{REPO}/resolve/{COMMIT}/"
                if not self.path.startswith(prefix):
                    return None, None
                name = self.path[len(prefix):]
                return name, hub.files.get(name)

            def _headers(self, name, data, length):
                self.send_header("X-Repo-Commit", COMMIT)
                if name in hub.lfs:
                    self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("ETag", f'"{git_sha1(data)}"')
                self.send_header("Content-Length", str(length))
                self.send_header("Accept-Ranges", "bytes")

            def _not_found(self):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):  # noqa: N802
                hub.requests.append(("HEAD", self.path, None))
                name, data = self._file()
                if data is None:
                    self._not_found()
                    return
                self.send_response(200)
                self._headers(name, data, len(data))
                self.end_headers()

            def do_GET(self):  # noqa: N802
                hub.requests.append(("GET", self.path, self.headers.get("Range")))
                if self.path.split("?")[0] in (f"/api/models/{REPO}", f"/api/models/{REPO}/revision/main"):
                    body = json.dumps(hub.info()).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                name, data = self._file()
                if data is None:
                    self._not_found()
                    return
                served = bytes(255 - b for b in data) if name in hub.corrupt else data
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self._headers(name, data, len(data) - start)
                self.end_headers()
                self.wfile.write(served[start:])

        return Handler


@pytest.fixture
def hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    fake = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("AFINAR_HOME", str(tmp_path / "afinar"))
    yield fake
    server.shutdown()
    server.server_close()


def test_download_verifies_and_skips_other_formats(hub, tmp_path):
    from afinar.hub_download import download_base

    said = []
    folder = download_base(REPO, say=said.append)
    assert (folder / "model.safetensors").read_bytes() == hub.files["model.safetensors"]
    assert (folder / "config.json").is_file() and not (folder / "pytorch_model.bin").exists()
    assert "Descargando" in said[0] and "continúa donde quedó" in said[0]
    assert any("verificados" in s for s in said)
    assert not any("pytorch_model.bin" in path for _, path, _ in hub.requests)
    # verified once: a second call neither downloads nor hashes again
    hub.requests.clear()
    said.clear()
    assert download_base(REPO, say=said.append) == folder
    assert not any(method == "GET" and "/resolve/" in path for method, path, _ in hub.requests)
    assert not any("Verificando" in s for s in said)


def test_a_cut_download_resumes_with_a_range_request(hub, tmp_path):
    from afinar.hub_download import download_base

    data = hub.files["model.safetensors"]
    blobs = tmp_path / "hf" / f"models--{REPO.replace('/', '--')}" / "blobs"
    blobs.mkdir(parents=True)
    half = len(data) // 2
    (blobs / f"{hashlib.sha256(data).hexdigest()}.incomplete").write_bytes(data[:half])  # what a cut leaves
    folder = download_base(REPO, say=lambda *a: None)
    assert (folder / "model.safetensors").read_bytes() == data
    ranges = [r for method, path, r in hub.requests if method == "GET" and path.endswith("model.safetensors")]
    assert ranges == [f"bytes={half}-"]


def test_a_file_that_does_not_match_its_hash_is_deleted_m030(hub, tmp_path):
    from afinar.hub_download import download_base

    hub.corrupt.add("model.safetensors")  # same size, other bytes: only the hash tells
    with pytest.raises(AfinarError) as bad:
        download_base(REPO, say=lambda *a: None)
    assert bad.value.code == "M030" and "model.safetensors" in bad.value.message and "vuelve a intentarlo" in bad.value.hint
    snapshot = tmp_path / "hf" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    assert not (snapshot / "model.safetensors").exists()
    blobs = tmp_path / "hf" / f"models--{REPO.replace('/', '--')}" / "blobs"
    assert not (blobs / hashlib.sha256(hub.files["model.safetensors"]).hexdigest()).exists()
    hub.corrupt.clear()  # retrying fetches it anew and passes
    folder = download_base(REPO, say=lambda *a: None)
    assert (folder / "model.safetensors").read_bytes() == hub.files["model.safetensors"]


def test_unknown_repo_is_m003(hub):
    from afinar.hub_download import download_base

    with pytest.raises(AfinarError) as missing:
        download_base("org-falsa/no-existe", say=lambda *a: None)
    assert missing.value.code == "M003"


def test_wanted_files():
    from afinar.hub_download import wanted_files

    names = ["config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
             "onnx/model.onnx", "tokenizer.model", "merges.txt", "modeling_x.py", "chat_template.jinja",
             "original/consolidated.00.pth", "README.md", "model.gguf"]
    assert wanted_files(names) == ["config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
                                   "tokenizer.model", "merges.txt", "chat_template.jinja"]
