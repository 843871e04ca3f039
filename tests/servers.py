"""Servers that tests start and stop themselves: a throwaway PostgreSQL cluster and a one-node Slurm
cluster, each in a temp folder."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL server programs (package ``postgresql``), newest version first."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(found[0]).parent if found else (Path(p).parent if (p := shutil.which("pg_ctl")) else None)


@contextlib.contextmanager
def postgres():
    """A PostgreSQL cluster in a new temp folder on a free loopback port (trust authentication: loopback
    only); yields its URL, stopped and deleted after. PostgreSQL refuses to run as root: as root the
    cluster runs as the ``postgres`` user (which Debian's package creates), in a folder of /tmp it can
    reach (pytest's own temp folders are private to root)."""
    bin_dir = postgres_bin()
    assert bin_dir is not None, "PostgreSQL is not installed"
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-pg-"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)  # noqa: E731
    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-k {folder} -c listen_addresses=127.0.0.1 -p {port} -c fsync=off"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


SLURM_CONF = """ClusterName=cnnlab
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={dir}/munge/munge.sock
CredType=cred/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


def slurm_installed() -> bool:
    return all(shutil.which(p) for p in ("slurmctld", "slurmd", "munged", "sbatch"))


@contextlib.contextmanager
def slurm():
    """A one-node Slurm cluster on this machine (munged, slurmctld, slurmd; Debian's slurm-wlm and munge)
    with its state in a new temp folder; yields the environment that points Slurm's commands at it
    (SLURM_CONF). Everything is stopped and deleted after. No cgroups: proctrack/linuxproc, task/none;
    no accounting (sacct answers that it is disabled; submitit then relies on its result files)."""
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-slurm-"))
    folder.chmod(0o755)
    for name in ("state", "spool", "munge"):
        (folder / name).mkdir()
    shutil.chown(folder / "munge", "munge", "munge")
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
    conf = folder / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=socket.gethostname(), ctld_port=free_port(), d_port=free_port(),
                                      dir=folder, cpus=os.cpu_count(), memory_mb=memory_mb))  # fmt: skip
    munge = folder / "munge"
    daemons = [
        ["runuser", "-u", "munge", "--", "munged", f"--socket={munge}/munge.sock", f"--pid-file={munge}/pid",
         f"--log-file={munge}/log", f"--seed-file={munge}/seed"],
        ["slurmctld", "-f", str(conf)],
        ["slurmd", "-f", str(conf)],
    ]  # fmt: skip
    pid_files = [munge / "pid", folder / "slurmctld.pid", folder / "slurmd.pid"]
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        for cmd in daemons:
            subprocess.run(cmd, check=True, capture_output=True, timeout=60, env=env)
        for _ in range(300):  # the node registers with the controller
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env)
            if state.stdout.strip() == "idle":
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the Slurm node did not come up: {state.stdout} {state.stderr}")
        yield env
    finally:
        subprocess.run(["scancel", "--full", "--user=root"], capture_output=True, env=env, timeout=30)
        for _ in range(300):  # job steps end while slurmd still runs (stopped under them, they would hang)
            left = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=env, timeout=30)
            if left.returncode or not left.stdout.strip():
                break
            time.sleep(0.1)
        for pid_file in reversed(pid_files):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
        time.sleep(0.5)
        shutil.rmtree(folder, ignore_errors=True)
