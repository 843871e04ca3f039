"""Pretrained weights by name: downloaded from a loopback HTTP server (CNNLAB_WEIGHTS_URL_BASE) into
torch's hub cache with the published checksum, then used offline. Nothing here reaches the internet."""

from __future__ import annotations

import enum
import hashlib
import http.server
import importlib.util
import io
import socket
import threading
from pathlib import Path

import pytest
import torch
import torchvision

from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.models import pretrained
from cnnlab.models.pretrained import Published, fetch, torchvision_file
from cnnlab.models.tv import TorchvisionNet
from tests.conftest import run_cli


class Files(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (path -> (bytes, headers)); a path in ``server.cut`` sends half its bytes
    under the full Content-Length and closes the connection."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path not in self.server.files:
            self.send_error(404)
            return
        body, headers = self.server.files[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.path in self.server.cut else body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A loopback HTTP server in a thread, stopped after the test."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    httpd.files, httpd.cut, httpd.requests = {}, set(), []
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch's hub cache in the test's folder; the URL base at nothing until a test sets it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path / "torch" / "hub" / "checkpoints"


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once the socket is closed


def state_bytes(module: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getvalue()


def published(body: bytes, path="/models/net") -> Published:
    prefix = hashlib.sha256(body).hexdigest()[:8]
    return Published(f"https://download.example{path}-{prefix}.pth", f"{path.rsplit('/', 1)[1]}-{prefix}.pth",
                     prefix)  # fmt: skip


def test_torchvision_names_map_to_the_published_files():
    file = torchvision_file("resnet18", "DEFAULT")
    assert file == torchvision_file("resnet18", "IMAGENET1K_V1")
    assert file.url == torchvision.models.ResNet18_Weights.DEFAULT.url
    assert file.file_name == "resnet18-f37072fd.pth" and file.hash_prefix == "f37072fd"
    with pytest.raises(ConfigError, match=r"neither a file nor a weights name of resnet18.*IMAGENET1K_V1"):
        torchvision_file("resnet18", "IMAGENET")


def test_download_verifies_caches_and_is_used_offline(server, hub, monkeypatch, capsys):
    body = b"weights" * 50_000
    file = published(body)
    server.files[f"/models/{file.file_name}"] = (body, {})
    monkeypatch.setenv(pretrained.URL_BASE_ENV, server.base)
    path = fetch(file)
    assert path == hub / file.file_name and path.read_bytes() == body
    assert "downloading net-" in capsys.readouterr().err  # plain progress lines: stderr is not a terminal
    monkeypatch.setenv(pretrained.URL_BASE_ENV, closed_port())  # offline: the cache answers
    assert fetch(file) == path and len(server.requests) == 1
    assert sorted(p.name for p in hub.iterdir()) == [file.file_name]


def test_wrong_checksum_keeps_nothing(server, hub, monkeypatch):
    body = b"not the published file"
    file = Published("https://download.example/models/net-0123abcd.pth", "net-0123abcd.pth", "0123abcd")
    server.files["/models/net-0123abcd.pth"] = (body, {})
    monkeypatch.setenv(pretrained.URL_BASE_ENV, server.base)
    with pytest.raises(CheckpointError, match=r"has SHA-256 .* but 0123abcd is published"):
        fetch(file)
    assert list(hub.iterdir()) == []


def test_cut_download_keeps_nothing(server, hub, monkeypatch):
    body = b"x" * 300_000
    file = published(body)
    server.files[f"/models/{file.file_name}"] = (body, {})
    server.cut.add(f"/models/{file.file_name}")
    monkeypatch.setenv(pretrained.URL_BASE_ENV, server.base)
    with pytest.raises(CheckpointError, match="was cut off after 150000 of 300000 bytes; nothing was kept"):
        fetch(file)
    assert list(hub.iterdir()) == []


def test_no_network_is_one_line(hub, monkeypatch):
    monkeypatch.setenv(pretrained.URL_BASE_ENV, closed_port())
    with pytest.raises(CheckpointError, match=r"cannot download .*check the network") as err:
        fetch(published(b"abc"))
    assert "\n" not in str(err.value)


def test_a_corrupted_cache_file_is_refused(server, hub, monkeypatch):
    body = b"y" * 1000
    file = published(body)
    server.files[f"/models/{file.file_name}"] = (body, {})
    monkeypatch.setenv(pretrained.URL_BASE_ENV, server.base)
    fetch(file).write_bytes(b"z" * 1000)
    with pytest.raises(CheckpointError, match="delete the file to download it again"):
        fetch(file)


def test_torchvision_default_weights_load_into_the_model(server, hub, monkeypatch):
    """model=torchvision model.weights=DEFAULT: the enum's file, fetched and loaded (the enum's URL points
    at a file whose hash this test knows: torchvision's real file cannot be served here)."""
    source = torchvision.models.resnet18(num_classes=1000)
    body = state_bytes(source)
    file = published(body, "/models/resnet18")
    weights = enum.Enum("ResNet18_Weights", {"DEFAULT": file.url})
    weights.url = property(lambda member: member.value)  # as torchvision's WeightsEnum has it
    monkeypatch.setattr(torchvision.models, "get_model_weights", lambda arch: weights)
    server.files[f"/models/{file.file_name}"] = (body, {})
    monkeypatch.setenv(pretrained.URL_BASE_ENV, server.base)
    model = TorchvisionNet(in_channels=3, num_classes=10, image_size=96, arch="resnet18", weights="DEFAULT")
    assert torch.equal(model.net.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert set(model.fresh_parameters) == {"net.fc.weight", "net.fc.bias"}
    assert (hub / file.file_name).is_file()


def cli(tmp_path, tiny_idx, *extra, env):
    return run_cli("train", f"dataset.root={tiny_idx}", "trainer.device=cpu", "trainer.max_epochs=1",
                   "trainer.tensorboard=false", "trainer.progress=plain", "trainer.limit_train_batches=1",
                   "trainer.limit_eval_batches=1", "trainer.evaluate=false", *extra, cwd=tmp_path,
                   env=env)  # fmt: skip


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="model=timm needs the timm extra")
@pytest.mark.slow
def test_cli_timm_tag_downloads_once_then_is_used_offline(server, tmp_path, tiny_idx, monkeypatch):
    """timm's test_resnet is on the Hub only: timm publishes no hash, the Hub's X-Linked-Etag (the
    file's SHA-256) is checked, and the SHA-256 is kept beside the file for later uses."""
    import timm
    from safetensors.torch import save

    body = save(timm.create_model("test_resnet", pretrained=False).state_dict())
    digest = hashlib.sha256(body).hexdigest()
    path = "/timm/test_resnet.r160_in1k/resolve/main/model.safetensors"
    server.files[path] = (body, {"X-Linked-Etag": f'"{digest}"'})
    env = {"TORCH_HOME": str(tmp_path / "torch"), pretrained.URL_BASE_ENV: server.base}
    args = ("model=timm", "model.arch=test_resnet", "model.weights=DEFAULT")
    first = cli(tmp_path, tiny_idx, *args, env=env)
    assert first.returncode == 0, first.stderr
    cached = (
        tmp_path / "torch" / "hub" / "checkpoints" / "timm--timm--test_resnet.r160_in1k--model.safetensors"
    )
    assert cached.read_bytes() == body and Path(f"{cached}.sha256").read_text().split()[0] == digest
    assert "no checksum published" in first.stderr
    assert server.requests == [path]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # offline: the cached file is used, checked
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # against the SHA-256 kept beside it
    monkeypatch.setenv(pretrained.URL_BASE_ENV, closed_port())
    assert fetch(Published(f"https://huggingface.co{path}", cached.name, None)) == cached
    cached.write_bytes(body[:-1] + b"!")
    with pytest.raises(CheckpointError, match="delete the file to download it again"):
        fetch(Published(f"https://huggingface.co{path}", cached.name, None))


def test_hub_file_with_a_wrong_stated_sha256_keeps_nothing(server, hub, monkeypatch):
    """A file without a published hash is still checked against the SHA-256 the Hub states for it."""
    path = "/timm/net.tag/resolve/main/model.safetensors"
    server.files[path] = (b"weights", {"X-Linked-Etag": '"' + "0" * 64 + '"'})
    monkeypatch.setenv(pretrained.URL_BASE_ENV, server.base)
    with pytest.raises(CheckpointError, match=r"but 0{64} is published"):
        fetch(Published(f"https://huggingface.co{path}", "timm--net--model.safetensors", None))
    assert list(hub.iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="model=timm needs the timm extra")
def test_timm_tags_map_to_their_files():
    import timm

    from cnnlab.models.pretrained import timm_file

    name, file = timm_file(timm, "resnet18", "a1_in1k")  # a release file whose name carries its hash
    assert name == "resnet18.a1_in1k" and file.hash_prefix == "d63eafa0"
    assert file.file_name == "resnet18_a1_0-d63eafa0.pth"
    name, file = timm_file(timm, "test_resnet", "DEFAULT")  # on the Hub only: no published hash
    assert name == "test_resnet.r160_in1k" and file.hash_prefix is None
    assert file.url == "https://huggingface.co/timm/test_resnet.r160_in1k/resolve/main/model.safetensors"
    with pytest.raises(ConfigError, match=r"neither a file nor a pretrained tag .* DEFAULT, a1_in1k"):
        timm_file(timm, "resnet18", "imagenet")
