"""Two nodes: two torchrun agents on this machine (c10d rendezvous on 127.0.0.1, gloo on CPU) train one
run; one node is killed mid-epoch, both are started again with ``resume=``, and the run ends as a
single process with the same global batch would have trained it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import free_port
from tests.test_distributed import TINY, rows

# A node's program: cnnlab's CLI; with CNNLAB_TEST_KILL_AT=n the node dies at its n-th micro-step (its
# torchrun agent and its worker SIGKILLed together, as when a machine is lost).
NODE = """
import os, signal, sys
from cnnlab.engine import loop
kill_at, real, calls = int(os.environ.get("CNNLAB_TEST_KILL_AT", "0")), loop.micro_step, [0]
def micro_step(*args, **kwargs):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
loop.micro_step = micro_step
from cnnlab.cli import main
main(sys.argv[1:])
"""


def start_node(script: Path, args: list[str], *, port: int, cwd: Path, kill_at: int = 0) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CNNLAB_TEST_KILL_AT": str(kill_at)}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
           "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=cnnlab-test",
           "--max_restarts=0", str(script), *args]  # fmt: skip
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip


def both(script: Path, args: list[str], *, cwd: Path, kill_at: int = 0) -> list[tuple[int, str]]:
    port = free_port()
    nodes = [start_node(script, args, port=port, cwd=cwd),
             start_node(script, args, port=port, cwd=cwd, kill_at=kill_at)]  # fmt: skip
    results = []
    for node in nodes:
        try:
            out, _ = node.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, 9)
            out, _ = node.communicate()
        results.append((node.returncode, out))
    return results


@pytest.mark.slow
def test_two_nodes_lose_one_mid_epoch_resume_and_match_one_process(tiny_idx, make_cfg, tmp_path):
    from cnnlab.train import train

    train(make_cfg(*TINY), tmp_path / "single")  # global batch 32, 2 epochs of 11 steps

    work, script = tmp_path / "nodes", tmp_path / "node.py"
    work.mkdir()
    script.write_text(NODE)
    args = ["train", f"dataset.root={tiny_idx}", *TINY, "hydra.run.dir=run"]
    (_, out0), (code1, out1) = both(script, args, cwd=work, kill_at=15)  # in epoch 2
    assert code1 != 0, out1[-2000:]
    run_dir = work / "run"
    log = (run_dir / "train.log").read_text()
    assert "data parallel: 2 processes (gloo), global batch 32, 16 per process" in log, out0[-3000:]
    assert "epoch 2/2" not in log and not (run_dir / "summary.json").exists()  # stopped in epoch 2
    assert (run_dir / "checkpoints" / "last.pt").is_file()

    resumed = both(script, ["train", f"resume={run_dir}"], cwd=work)
    assert [code for code, _ in resumed] == [0, 0], "\n".join(out[-2500:] for _, out in resumed)
    assert "resuming" in (run_dir / "train.log").read_text()
    a, b = rows(tmp_path / "single"), rows(run_dir)
    assert [r["epoch"] for r in b] == ["1", "2"]
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert float(rb[key]) == pytest.approx(float(ra[key]), rel=1e-3, abs=1e-4), key
    sa = json.loads((tmp_path / "single" / "summary.json").read_text())
    sb = json.loads((run_dir / "summary.json").read_text())
    assert sb["test_acc"] == pytest.approx(sa["test_acc"])
    assert sb["test_loss"] == pytest.approx(sa["test_loss"])
    assert sorted(p.name for p in work.iterdir()) == ["run"]  # nothing written beside the run folder
