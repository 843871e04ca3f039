"""trainer.threads=auto: the CPUs a process may use, and the chooser driven by a fake clock (no timing)."""

from __future__ import annotations

import json

import pytest
import torch

from cnnlab.engine import threads as threads_mod
from cnnlab.engine.threads import CpuShare, ThreadChooser, candidates, cgroup_cpus, check_threads, cpu_share
from cnnlab.errors import ConfigError


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_cgroup_v2_quota_of_own_group_and_parents(tmp_path):
    own = write(tmp_path / "proc", "0::/user.slice/job\n")
    write(tmp_path / "cg/user.slice/job/cpu.max", "max 100000\n")  # no limit here...
    write(tmp_path / "cg/user.slice/cpu.max", "150000 100000\n")  # ...but 1.5 CPUs for the parent
    write(tmp_path / "cg/cpu.max", "max 100000\n")
    assert cgroup_cpus(tmp_path / "cg", own) == 1.5


def test_cgroup_v1_quota_and_no_quota(tmp_path):
    own = write(tmp_path / "proc", "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n")
    write(tmp_path / "cg/cpu/docker/abc/cpu.cfs_quota_us", "200000\n")
    write(tmp_path / "cg/cpu/docker/abc/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpus(tmp_path / "cg", own) == 2.0
    write(tmp_path / "cg/cpu/docker/abc/cpu.cfs_quota_us", "-1\n")  # unlimited
    assert cgroup_cpus(tmp_path / "cg", own) is None


def test_cgroup_missing_or_odd_files_mean_no_quota(tmp_path):
    assert cgroup_cpus(tmp_path / "nothing", tmp_path / "no-proc") is None
    own = write(tmp_path / "proc", "0::/../../etc\n")  # never leaves the cgroup tree
    write(tmp_path / "cg/cpu.max", "garbage\n")
    assert cgroup_cpus(tmp_path / "cg", own) is None


def test_usable_cpus_are_affinity_capped_by_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(threads_mod.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    own = write(tmp_path / "proc", "0::/\n")
    write(tmp_path / "cg/cpu.max", "250000 100000\n")
    share = cpu_share(tmp_path / "cg", own)
    assert (share.affinity, share.quota, share.usable) == (4, 2.5, 3)
    write(tmp_path / "cg/cpu.max", "50000 100000\n")  # half a CPU: still one thread
    assert cpu_share(tmp_path / "cg", own).usable == 1
    write(tmp_path / "cg/cpu.max", "max 100000\n")
    assert cpu_share(tmp_path / "cg", own).usable == 4
    assert "4 usable CPUs (affinity 4, no cgroup quota)" in cpu_share(tmp_path / "cg", own).describe()


def test_candidates_halve_down_to_one():
    assert candidates(1) == [1]
    assert candidates(2) == [1, 2]
    assert candidates(6) == [1, 2, 4, 6]
    assert candidates(64) == [1, 2, 4, 8, 16, 32, 64]


@pytest.mark.parametrize("value", ["auto", "AUTO", None])
def test_check_threads_auto(value):
    assert check_threads(value) is None


def test_check_threads_numbers_and_errors():
    assert check_threads(3) == 3 and check_threads("2") == 2
    for bad in (0, -1, "many", 1.5, True):
        with pytest.raises(ConfigError, match=r"trainer\.threads"):
            check_threads(bad)


class FakeMachine:
    """A clock that advances by the step time of the thread count in use (``speed[n]``, seconds)."""

    def __init__(self, speed: dict[int, float]):
        self.speed, self.now, self.threads, self.set_calls = dict(speed), 0.0, None, []

    def set_threads(self, n: int) -> None:
        self.threads = n
        self.set_calls.append(n)

    def clock(self) -> float:
        return self.now

    def run(self, chooser: ThreadChooser, steps: int) -> None:
        for _ in range(steps):
            self.now += self.speed[self.threads]
            chooser.on_step()


def chooser_on(machine: FakeMachine, cands=(1, 2), **kw) -> ThreadChooser:
    lines: list[str] = []
    chooser = ThreadChooser(list(cands), machine.set_threads, clock=machine.clock, report=lines.append, **kw)
    chooser.lines = lines
    return chooser


def test_the_choice_follows_the_fake_clock():
    idle = FakeMachine({2: 0.010, 1: 0.018})
    chooser = chooser_on(idle)
    idle.run(chooser, 30)
    assert chooser.current == idle.threads == 2
    busy = FakeMachine({2: 0.200, 1: 0.020})  # another job on the other core
    chooser = chooser_on(busy)
    busy.run(chooser, 30)
    assert chooser.current == busy.threads == 1
    assert chooser.record["threads"] == 1
    assert chooser.history[0]["ms_per_step"] == {2: 200.0, 1: 20.0}
    assert len(chooser.lines) == 1 and chooser.lines[0].startswith("threads: using 1 (")
    assert "1: 20.0 ms, 2: 200.0 ms" in chooser.lines[0]


def test_close_times_prefer_fewer_threads():
    machine = FakeMachine({4: 0.0100, 2: 0.0102, 1: 0.030})
    chooser = chooser_on(machine, (1, 2, 4))
    machine.run(chooser, 40)
    assert chooser.current == 2


def test_a_hopeless_candidate_is_dropped_after_one_step():
    machine = FakeMachine({1: 0.010, 2: 1.0})
    chooser = chooser_on(machine, probe_steps=5, warmup=1)
    machine.run(chooser, 1 + 6 + 2)  # clock start, 1 thread (warm-up + 5), 2 threads: warm-up + 1 slow
    assert chooser.current == 1 and chooser.history[0]["ms_per_step"][2] == 1000.0


def test_a_slightly_slower_candidate_is_dropped_once_it_cannot_win():
    machine = FakeMachine({1: 0.010, 2: 0.012})
    chooser = chooser_on(machine, probe_steps=5, warmup=1)
    machine.run(chooser, 1 + 6 + 4)  # 2 threads: warm-up + 3 steps slower than the best median
    assert chooser.current == 1 and len(chooser.history) == 1


def test_drift_probes_again_with_hysteresis():
    machine = FakeMachine({2: 0.010, 1: 0.018})
    chooser = chooser_on(machine, window=5, min_gap=1.0, recheck=1e9)
    machine.run(chooser, 20)
    assert chooser.current == 2 and len(chooser.history) == 1
    machine.speed = {2: 0.150, 1: 0.020}  # a job starts on the other core
    machine.run(chooser, 5)  # the window fills, but the last probe was less than min_gap ago
    assert len(chooser.history) == 1
    machine.run(chooser, 40)
    assert chooser.current == 1 and len(chooser.history) == 2
    assert chooser.history[1]["reason"].startswith("step time drifted")
    machine.speed = {2: 0.150, 1: 0.021}  # small noise: no new probe
    machine.run(chooser, 200)
    assert len(chooser.history) == 2


def test_periodic_check_notices_a_load_that_went_away():
    machine = FakeMachine({2: 0.300, 1: 0.020})
    chooser = chooser_on(machine, window=5, min_gap=1.0, recheck=5.0, budget=1.0)
    machine.run(chooser, 20)
    assert chooser.current == 1
    machine.speed = {2: 0.010, 1: 0.018}  # the other job ended: 1 thread is only a little faster
    machine.run(chooser, 400)
    assert chooser.current == 2
    assert chooser.history[-1]["reason"].startswith("periodic check")


def test_costly_probes_are_spaced_out():
    """Under a load where the big count is 100x slower, probing it costs; the next periodic check waits
    until that cost is a small part (budget) of the time."""
    machine = FakeMachine({2: 1.0, 1: 0.010})
    chooser = chooser_on(machine, recheck=1.0, budget=0.02)
    machine.run(chooser, 2000)
    assert chooser.current == 1
    assert len(chooser.history) <= 2


def test_one_candidate_is_fixed_and_never_timed():
    machine = FakeMachine({3: 0.01})
    chooser = chooser_on(machine, (3,), why="trainer.threads")
    assert not chooser.measuring and machine.set_calls == [3]
    machine.run(chooser, 50)
    assert machine.set_calls == [3] and chooser.lines == ["threads: using 3 (trainer.threads)"]


def test_configure_explicit_and_deterministic_win(monkeypatch):
    monkeypatch.setattr(threads_mod, "cpu_share", lambda: CpuShare(affinity=4, quota=None))
    before = torch.get_num_threads()
    try:
        fixed = threads_mod.configure_threads(3, report=lambda s: None)
        assert not fixed.measuring and torch.get_num_threads() == 3
        assert fixed.setup == {"threads_setting": "3", "usable_cpus": 4, "affinity": 4, "cgroup_quota": None}
        det = threads_mod.configure_threads("auto", deterministic=True, report=lambda s: None)
        assert not det.measuring and torch.get_num_threads() == 4
        shared = threads_mod.configure_threads("auto", processes=2, report=lambda s: None)
        assert shared.current == 2
        untimed = threads_mod.configure_threads("auto", timed=False, report=lambda s: None)
        assert not untimed.measuring and untimed.current == 4
        auto = threads_mod.configure_threads("auto", report=lambda s: None)
        assert auto.measuring and auto.candidates == [1, 2, 4]
    finally:
        torch.set_num_threads(before)


def test_set_num_threads_takes_effect_mid_run():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.ones(64, 64) @ torch.ones(64, 64)  # the intra-op pool exists
        torch.set_num_threads(2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_run_records_the_threads_it_used(make_cfg, tmp_path):
    from cnnlab.train import train

    cfg = make_cfg("trainer.threads=auto", "trainer.max_epochs=1", "trainer.batch_size=8",
                   "trainer.report=false")  # 45 steps  # fmt: skip
    summary = train(cfg, tmp_path / "run")
    used = summary["threads"]
    assert used["threads"] >= 1 and used["usable_cpus"] >= used["threads"]
    assert used["choices"] and used["choices"][-1]["threads"] == used["threads"]
    stored = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert stored["cpu"]["threads_setting"] == "auto"
    assert stored["cpu"]["usable_cpus"] == used["usable_cpus"]
    assert f"threads: using {used['threads']} (" in (tmp_path / "run" / "train.log").read_text()


def test_counts_the_busy_machine_cannot_hold_are_not_timed():
    busy = FakeMachine({1: 0.020, 2: 0.500})
    chooser = chooser_on(busy, running=lambda: 2)  # this process's thread and one other task
    busy.run(chooser, 20)
    assert busy.set_calls == [1] and chooser.current == 1
    assert "1 other tasks running: counts above 1 not timed" in chooser.history[0]["reason"]
    idle = FakeMachine({1: 0.020, 2: 0.011})
    chooser = chooser_on(idle, running=lambda: 1)  # only this process
    idle.run(chooser, 20)
    assert chooser.current == 2


def test_runnable_tasks_reads_proc_stat(tmp_path):
    stat = write(tmp_path / "stat", "cpu  1 2 3\nprocs_running 3\nprocs_blocked 0\n")
    assert threads_mod.runnable_tasks(stat) == 3
    assert threads_mod.runnable_tasks(tmp_path / "missing") is None
