"""Fault drill cases beyond one machine: pretrained weights by name and a shared study's storage."""

from __future__ import annotations

import http.server
import threading

from drill_kit import FAST, Case, Drill

from tests.servers import free_port


def weights(*served: bytes, expect: str, name: str = "DEFAULT", cut: bool = False):
    """``model=torchvision model.weights=<name>`` against a loopback server serving ``served`` as
    torchvision's resnet18 file (none: nothing listens); the hub cache must stay empty."""

    def case(d: Drill, case_name: str) -> Case:
        folder = d.folder(case_name)
        server = _serve(served[0], cut=cut) if served else None
        base = f"http://127.0.0.1:{server.server_address[1] if server else free_port()}"
        env = {"TORCH_HOME": str(folder / "torch"), "CNNLAB_WEIGHTS_URL_BASE": base}
        try:
            proc = d.cli("train", f"dataset.root={d.idx()}", *FAST, "model=torchvision",
                         f"model.weights={name}", f"hydra.run.dir={folder / 'run'}", cwd=folder,
                         env=env)  # fmt: skip
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
        cache = folder / "torch" / "hub" / "checkpoints"
        left = [p.name for p in cache.iterdir()] if cache.is_dir() else []
        return Case(proc, 2, expect, gone=[folder / "run" / "checkpoints"], ok=not left,
                    note=f"cache holds {left}" if left else "")  # fmt: skip

    return case


def _serve(body: bytes, *, cut: bool) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if cut else body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def storage(url: str, expect: str):
    """``cnnlab tune`` with ``tune.storage=<url>`` that cannot be used: one line, nothing written."""

    def case(d: Drill, name: str) -> Case:
        folder = d.folder(name)
        url_here = url.replace("@FOLDER@", str(folder))
        proc = d.cli("tune", f"dataset.root={d.idx()}", *FAST, f"tune.storage={url_here}",
                     f"tune.dir={folder / 'study'}", cwd=folder)  # fmt: skip
        return Case(proc, 2, expect, gone=[folder / "study"], ok="secret" not in proc.stderr)

    return case


ONE_MB = b"w" * 2**20
CASES = [
    ("weights by name: no network", weights(expect="check the network")),
    ("weights by name: wrong checksum", weights(ONE_MB, expect="but f37072fd is published")),
    ("weights by name: download cut off", weights(ONE_MB, cut=True, expect="was cut off after 524288 of")),
    ("weights by name: unknown name", weights(expect="neither a file nor a weights name", name="IMAGENET")),
    (
        "tune.storage: no database server",
        storage(f"postgresql://u:secret@127.0.0.1:{free_port()}/x", "cannot open the study storage"),
    ),
    ("tune.storage: journal in a missing folder", storage("journal:@FOLDER@/no/s.log", "does not exist")),
    ("tune.storage: not a URL", storage("nonsense", "neither an SQLAlchemy URL")),
]
