"""``trainer.threads``: how many CPU threads a run's math uses.

``auto`` (the default) measures instead of guessing. It starts from the CPUs this process may use (its
affinity mask and the cgroup CPU quota of a container or a CI runner, not the machine's core count),
times the first steps of training at each candidate count, keeps the fastest, and measures again when
the step time drifts (another job started or stopped) or, now and then, to notice a load that went away.
On a 2-core machine with one other busy process, two threads ran 5-14x slower than one: an OpenMP
thread waits at every barrier for its partner, which the scheduler has paused for the other job.

:class:`ThreadChooser` is pure logic fed a clock and a setter, so tests drive it with recorded step
times. A different thread count changes how sums are split, hence the last bits of a step's results:
a run with ``auto`` is therefore not bit-reproducible, and ``trainer.deterministic=true`` (or an explicit
``trainer.threads=N``) fixes the count.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.errors import ConfigError

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def check_threads(value) -> int | None:
    """``trainer.threads``: a positive whole number, or ``auto`` (null means auto too); None for auto."""
    if value is None or str(value).lower() == "auto":
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | str)
        or not str(value).isdigit()
        or int(value) < 1
    ):
        raise ConfigError(f"trainer.threads={value} is not a thread count; use auto or a whole number >= 1.")
    return int(value)


def _read(path: Path, limit: int = 200) -> str | None:
    """A small regular file's text (cgroup and proc files), None when absent or unreadable."""
    try:
        return path.read_text()[:limit] if path.is_file() else None
    except (OSError, UnicodeDecodeError):
        return None


def _quota_in(folder: Path) -> float | None:
    """The CPU quota set in one cgroup folder (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), in CPUs."""
    v2 = _read(folder / "cpu.max")
    if v2 is not None:
        parts = v2.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit() and int(parts[1]) > 0:
            return int(parts[0]) / int(parts[1])
        return None  # "max <period>": no quota
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if quota and period and quota.strip().isdigit() and period.strip().isdigit() and int(period) > 0:
        return int(quota) / int(period)  # -1 (no quota) is not all digits
    return None


def cgroup_cpus(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """The smallest CPU quota over this process's cgroup and its parents (v2 and v1), None when unlimited.

    ``/proc/self/cgroup`` names the process's cgroup under each hierarchy; inside a container that path
    is often not mounted as such and the container's own cgroup is the root, so the root counts too.
    """
    folders: list[Path] = []
    for line in (_read(self_cgroup, 20000) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        parts = [p for p in rel.strip().split("/") if p]
        if ".." in parts:
            continue
        if hierarchy == "0" and not controllers:
            base = root
        elif "cpu" in controllers.split(","):
            base = root / "cpu"
        else:
            continue
        folders += [base.joinpath(*parts[:k]) for k in range(len(parts), -1, -1)]
    folders += [root, root / "cpu"]
    quotas = [q for q in map(_quota_in, dict.fromkeys(folders)) if q is not None and q > 0]
    return min(quotas) if quotas else None


@dataclass(frozen=True)
class CpuShare:
    """The CPUs this process may use and why: the affinity mask, capped by a cgroup quota."""

    affinity: int
    quota: float | None

    @property
    def usable(self) -> int:
        cap = self.affinity if self.quota is None else min(self.affinity, math.ceil(self.quota - 1e-9))
        return max(cap, 1)

    def describe(self) -> str:
        quota = "no cgroup quota" if self.quota is None else f"cgroup quota {self.quota:g} CPUs"
        return f"{self.usable} usable CPUs (affinity {self.affinity}, {quota})"

    def as_dict(self) -> dict:
        return {"usable_cpus": self.usable, "affinity": self.affinity, "cgroup_quota": self.quota}


def cpu_share(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> CpuShare:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return CpuShare(affinity=affinity, quota=cgroup_cpus(root, self_cgroup))


def runnable_tasks(stat: Path = Path("/proc/stat")) -> int | None:
    """The tasks running or ready to run on the machine now (Linux's ``procs_running``), None elsewhere."""
    try:
        with stat.open() as f:
            for line in f:
                if line.startswith("procs_running "):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def candidates(usable: int) -> list[int]:
    """The counts worth timing, fewest first: 1, then doubling up to ``usable`` (few probes on big hosts).

    One thread goes first because it is never much slower than the best and is the safe choice on a
    loaded machine: it sets the bar at which a count that the machine cannot serve is dropped at once.
    """
    out, n = [], 1
    while n < usable:
        out.append(n)
        n *= 2
    return [*out, max(usable, 1)]


@dataclass
class ThreadChooser:
    """Keep the thread count whose steps are fastest now; call :meth:`on_step` after every optimizer step.

    A probe sets each candidate in turn, lets ``warmup`` steps pass (the pool starts its threads),
    times ``probe_steps`` steps and takes their median. A candidate is dropped as soon as more than half
    of its steps are slower than the best median so far (its median cannot win), or at once when one
    step takes ``give_up`` times the best: a probe of a count the machine cannot serve (two threads
    beside another busy process on two cores ran 5-14x slower) costs a step or two, not a whole probe.
    Counts within ``tie`` of the best: the fewest wins. Counts above the CPUs that other processes leave
    free at the probe's start (``running``: the machine's runnable tasks) are not timed at all.

    Between probes the median of the last ``window`` steps is watched; a ratio to the chosen count's
    median beyond ``drift`` (either way) probes again, but not within ``min_gap`` seconds of the last
    probe (hysteresis). A load that went away may speed the chosen count up only a little, so a probe
    also runs every ``recheck`` seconds. Probes are spaced out further when they cost more than
    ``budget`` of the time: a probe's cost is the time its steps took beyond the chosen count's, and
    the next one waits at least cost / budget seconds.
    """

    candidates: list[int]
    set_threads: Callable[[int], None]
    clock: Callable[[], float] = time.perf_counter
    report: Callable[[str], None] = print
    warmup: int = 1
    probe_steps: int = 5
    tie: float = 0.05
    give_up: float = 3.0
    window: int = 9
    drift: float = 1.5
    min_gap: float = 10.0
    recheck: float = 120.0
    budget: float = 0.02
    running: Callable[[], int | None] = lambda: None  # runnable tasks on the machine (None: unknown)
    why: str = "first steps"  # what the first choice says; with one candidate, why it is the only one
    share: CpuShare | None = None
    setting: str = "auto"  # trainer.threads as given
    current: int = 0
    history: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self._last: float | None = None
        self._recent: deque[float] = deque(maxlen=self.window)
        self._baseline = 0.0
        self._probe_end = 0.0
        self._next_recheck, self._quiet = self.recheck, self.min_gap
        self._queue: list[int] | None = None
        # summary.json's "threads": the count in use (during a probe, the one being timed) and the choices
        self.record: dict = {"threads": 0, "choices": self.history}
        if self.share is not None:
            self.record.update(self.share.as_dict())
        if len(self.candidates) > 1:
            self._begin_probe(self.why)
        else:
            self._switch(self.candidates[0])
            self.history.append({"threads": self.current, "reason": self.why})
            self.report(f"threads: using {self.current} ({self.why})")

    @property
    def setup(self) -> dict:
        """For provenance.json: the setting and the CPUs this process may use."""
        return {"threads_setting": self.setting, **(self.share.as_dict() if self.share else {})}

    @property
    def measuring(self) -> bool:
        """Whether steps are timed at all (more than one candidate)."""
        return len(self.candidates) > 1

    def on_step(self, _run=None) -> None:
        """After every optimizer step (the training callbacks' hook)."""
        if not self.measuring:
            return
        now = self.clock()
        last, self._last = self._last, now
        if last is None:  # the first call only starts the clock
            return
        dt = now - last
        if self._queue is not None:
            self._probe_step(dt, now)
        else:
            self._watch(dt, now)

    # probing
    def _begin_probe(self, reason: str) -> None:
        others = self._other_tasks()
        room = max(max(self.candidates) - others, 1)
        self._queue = [n for n in self.candidates if n <= room] or [min(self.candidates)]
        if len(self._queue) < len(self.candidates):
            reason += f"; {others} other tasks running: counts above {room} not timed"
        self._reason, self._results, self._cost, self._count = reason, {}, 0.0, 0
        self._switch(self._queue[0])

    def _other_tasks(self) -> int:
        """Runnable tasks of other processes now: the machine's (median of a few readings) less this
        process's threads in use. A count that the free CPUs cannot hold is not worth a probe step."""
        readings = [self.running() for _ in range(5)]
        if any(r is None for r in readings):
            return 0
        return max(int(statistics.median(readings)) - max(self.current, 1), 0)

    def _switch(self, n: int) -> None:
        self._times: list[float] = []
        self._skipped = 0
        if n != self.current:
            self.set_threads(n)
            self.current = self.record["threads"] = n

    def _probe_step(self, dt: float, now: float) -> None:
        self._cost, self._count = self._cost + dt, self._count + 1
        best = min(self._results.values(), default=None)
        hopeless = best is not None and dt > self.give_up * best  # a warm-up step too
        if self._skipped < self.warmup and not hopeless:
            self._skipped += 1
            return
        self._times.append(dt)
        hopeless = hopeless or (
            best is not None and sum(t > best for t in self._times) > self.probe_steps // 2
        )
        if len(self._times) < self.probe_steps and not hopeless:
            return
        self._results[self.current] = statistics.median(self._times)
        self._queue.pop(0)
        if self._queue:
            self._switch(self._queue[0])
        else:
            self._choose(now)

    def _choose(self, now: float) -> None:
        best = min(self._results.values())
        chosen = min(n for n, t in self._results.items() if t <= best * (1 + self.tie))
        overhead = max(self._cost - self._count * self._results[chosen], 0.0)
        self._quiet = max(self.min_gap, overhead / self.budget)
        self._next_recheck = max(self.recheck, self._quiet)
        self._switch(chosen)
        self._queue, self._baseline, self._probe_end = None, self._results[chosen], now
        self._recent.clear()
        timings = {n: round(t * 1e3, 2) for n, t in self._results.items()}
        self.history.append({"threads": chosen, "reason": self._reason, "ms_per_step": timings})
        del self.history[:-20]  # the latest choices are enough
        timed = ", ".join(f"{n}: {t * 1e3:.1f} ms" for n, t in sorted(self._results.items()))
        self.report(f"threads: using {chosen} ({self._reason}; median step time by thread count {timed}; "
                    f"measuring again when it drifts {self.drift:g}x)")  # fmt: skip

    # watching
    def _watch(self, dt: float, now: float) -> None:
        self._recent.append(dt)
        since = now - self._probe_end
        if len(self._recent) == self._recent.maxlen and since >= self._quiet:
            ratio = statistics.median(self._recent) / max(self._baseline, 1e-12)
            if ratio > self.drift or ratio < 1 / self.drift:
                self._begin_probe(f"step time drifted {ratio:.2f}x")
                return
        if since >= self._next_recheck:
            self._begin_probe(f"periodic check after {since:.0f} s")


def configure_threads(
    setting, *, deterministic: bool = False, processes: int = 1, timed: bool = True, report=print
) -> ThreadChooser:
    """Set torch's CPU thread count for a run; return the chooser (its ``on_step`` after every step).

    An explicit ``trainer.threads=N`` is obeyed. ``auto`` measures, except where the count must not
    change during the run: with ``trainer.deterministic=true`` (a different count changes the last bits
    of the results) and for several processes on one machine (torchrun), which take an equal share each;
    and without ``timed`` (a command with no training steps to time: predict, evaluate).
    """
    import torch

    fixed, share = check_threads(setting), cpu_share()
    if fixed is not None:
        return ThreadChooser([fixed], torch.set_num_threads, report=report, why="trainer.threads",
                             share=share, setting=str(fixed))  # fmt: skip
    if processes > 1 or deterministic or not timed:
        n = max(share.usable // max(processes, 1), 1)
        why = (
            "trainer.deterministic=true"
            if deterministic
            else f"{processes} processes"
            if timed
            else "untimed"
        )
        return ThreadChooser([n], torch.set_num_threads, report=report, why=f"{why}; {share.describe()}",
                             share=share)  # fmt: skip
    why = f"timed on the first steps; {share.describe()}"
    return ThreadChooser(candidates(share.usable), torch.set_num_threads, report=report, share=share,
                         running=runnable_tasks, why=why)  # fmt: skip
