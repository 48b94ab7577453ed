"""The runtime's timeline (Chrome trace, overlap efficiency), the weight feeder and the shared CPU setup."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Optional

import pytest

torch = pytest.importorskip("torch")

from lia_model.plan import Device  # noqa: E402
from lia_model.sublayers import Stage  # noqa: E402
from runtime.backend import Backend, Event  # noqa: E402
from runtime.records import OpRecord, RunResult  # noqa: E402
from runtime.streamer import Part, WeightFeeder, split  # noqa: E402
from runtime.trace import busy_s, chrome_trace, overlap_efficiency  # noqa: E402


def _host_event(t: float) -> Event:
    e = Event(False)
    e._stamp = t
    return e


def _rec(name: str, kind: str, dev: Device, t0: float, t1: float, layer: int = 0) -> OpRecord:
    r = OpRecord(Stage.DECODE, 1, layer, 0, name, kind, dev, 0, 1, "streamed", "", _host_event(t0), _host_event(t1))
    r.seconds = t1 - t0
    return r


def _run(records: list[OpRecord], wall: float) -> RunResult:
    return RunResult(
        ttft_s=0.0,
        tpot_s=[wall],
        latency_s=wall,
        batch=1,
        tokens=torch.zeros(1, 2),
        logits=None,
        records=records,
        base=(_host_event(100.0), 100.0),
    )


def test_overlap_efficiency_by_hand() -> None:
    # CPU busy 3 s, weights 2 s, GPU 1 s: sum 6, max 3. Serial (wall 6) -> 0; perfect (wall 3) -> 1; wall 4.5 -> 0.5
    recs = [
        _rec("fc2", "compute", Device.CPU, 100, 103),
        _rec("weights", "copy", Device.GPU, 100, 102),
        _rec("fc1", "compute", Device.GPU, 103, 104),
    ]
    assert busy_s(_run(recs, 4.0)) == {"CPU sublayers": 3.0, "H2D weights": 2.0, "GPU sublayers": 1.0}
    assert overlap_efficiency(_run(recs, 6.0), 6.0) == pytest.approx(0.0)
    assert overlap_efficiency(_run(recs, 3.0), 3.0) == pytest.approx(1.0)
    assert overlap_efficiency(_run(recs, 4.5), 4.5) == pytest.approx(0.5)
    assert overlap_efficiency(_run(recs[:1], 3.0), 3.0) is None  # one lane: nothing to overlap


def test_chrome_trace_places_events_on_lanes_in_microseconds() -> None:
    recs = [_rec("fc2", "compute", Device.CPU, 100.5, 100.75, layer=3), _rec("act", "copy", Device.CPU, 101, 101.5)]
    trace = json.loads(json.dumps(chrome_trace(_run(recs, 2.0), "t")))
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert (
        spans[0]["name"] == "fc2 L3"
        and spans[0]["ts"] == pytest.approx(0.5e6)
        and spans[0]["dur"] == pytest.approx(0.25e6)
    )
    lanes = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert lanes[spans[0]["tid"]] == "CPU sublayers" and lanes[spans[1]["tid"]] == "D2H act/KV"


@pytest.mark.parametrize("threaded", [False, True])
def test_weight_feeder_copies_every_piece_and_reports_parts(threaded: bool) -> None:
    be = Backend("fake")
    feeder = WeightFeeder(be, depth=2, threaded=threaded)
    src = torch.arange(1000, dtype=torch.float32)
    dst = torch.zeros(1000)
    done = []
    parts = [
        Part(split(dst[:600], src[:600], piece_elems=128), lambda s, e: done.append(("a", s, e))),
        Part(split(dst[600:], src[600:], piece_elems=128), lambda s, e: done.append(("b", s, e))),
    ]
    assert len(parts[0].pieces) == 5  # 600 = 4 x 128 + 88
    job = feeder.submit([None], parts)
    end = job.ready()
    assert isinstance(end, Event) and torch.equal(dst, src)
    assert [d[0] for d in done] == ["a", "b"]
    feeder.close()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell one core from all")
def test_the_feeder_thread_does_not_share_the_launching_threads_core() -> None:
    """On the host the feeder inherited the OpenMP master's one-core affinity and time-shared its core: CPU
    sublayers ran 5-60x slower while weights streamed (runtime/validation/wave2-a/traces.tgz). A launching
    thread pinned to one CPU must start a feeder that may run on every CPU of the process."""
    from runtime.cpu_setup import PROCESS_CPUS

    seen: dict[str, object] = {}

    def launcher() -> None:
        os.sched_setaffinity(0, {min(PROCESS_CPUS)})  # as OMP_PROC_BIND=close binds the master thread
        feeder = WeightFeeder(Backend("fake"), threaded=True)
        feeder.submit([], []).ready()
        seen["feeder"] = feeder.affinity
        feeder.close()
        seen["launcher"] = os.sched_getaffinity(0)

    t = threading.Thread(target=launcher)
    t.start()
    t.join()
    assert seen["launcher"] == {min(PROCESS_CPUS)}  # the launching thread keeps its own binding
    assert seen["feeder"] == f"any of {len(PROCESS_CPUS)} CPUs"


def test_weight_feeder_hands_an_error_to_the_launching_thread() -> None:
    be = Backend("fake")
    feeder = WeightFeeder(be, threaded=True)
    bad = Part(split(torch.zeros(10), torch.zeros(20)), lambda s, e: None)  # pieces of mismatched size
    job = feeder.submit([], [bad])
    with pytest.raises(RuntimeError, match="weight prefetch failed"):
        job.ready()
    feeder.close()
    assert not any(t.name == "lia-weight-feeder" and t.is_alive() for t in threading.enumerate())


def test_cpu_setup_records_threads_binding_and_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime import cpu_setup

    monkeypatch.setattr(cpu_setup, "_APPLIED", None)
    monkeypatch.setenv("LIA_THREADS", "1")
    before = torch.get_num_threads()
    try:
        setup = cpu_setup.apply()
        assert setup.threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert setup.describe().startswith("threads=1 bind=") and "alloc=" in setup.describe()
    assert setup.physical_cores >= 1


def test_core_groups_put_smt_siblings_together(tmp_path) -> None:
    """Four logical CPUs on two physical cores (0/2 and 1/3 siblings, as Linux numbers them) and one CPU
    without topology files: three groups, ordered by their lowest CPU."""
    from calibrate.host import core_groups, physical_cores

    for cpu, core in ((0, 0), (1, 1), (2, 0), (3, 1)):
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "core_id").write_text(f"{core}\n")
        (topo / "physical_package_id").write_text("0\n")
    assert core_groups((0, 1, 2, 3, 7), tmp_path) == [(0, 2), (1, 3), (7,)]
    assert physical_cores((3, 2, 1, 0), tmp_path) == 2


@pytest.mark.parametrize(
    ("cores", "cuda", "setting", "keep"),
    [
        (16, True, "auto", True),  # the GPU host: one of 16 cores for the feeder
        (16, False, "auto", False),  # no CUDA: no feeder thread, no core kept
        (3, True, "auto", False),  # too few cores to give one away by default
        (2, False, "1", True),  # forced
        (1, True, "1", False),  # nothing to give
        (16, True, "0", False),  # refused
    ],
)
def test_keep_feeder_core(cores: int, cuda: bool, setting: str, keep: bool) -> None:
    from runtime.cpu_setup import keep_feeder_core

    assert keep_feeder_core(cores, cuda, setting) is keep


def test_a_bad_feeder_core_setting_is_named() -> None:
    from lia_model.errors import LiaInputError
    from runtime.cpu_setup import keep_feeder_core

    with pytest.raises(LiaInputError, match="LIA_FEEDER_CORE: 'yes' is not auto, 1 or 0"):
        keep_feeder_core(16, True, "yes")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to keep one for the feeder")
def test_the_feeder_runs_on_the_core_kept_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a core kept (LIA_FEEDER_CORE=1), OpenMP gets one thread fewer than the cores and the feeder is
    pinned to the last core, the one OpenMP's places leave out (wave2-b2: a floating feeder was woken late
    while OpenMP kept every core busy, and weight streaming fell to 90% of the calibrated bandwidth)."""
    from runtime import cpu_setup

    groups = cpu_setup._core_groups()
    monkeypatch.setattr(cpu_setup, "_APPLIED", None)
    monkeypatch.setenv("LIA_FEEDER_CORE", "1")
    monkeypatch.delenv("LIA_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        setup = cpu_setup.apply()
        feeder = WeightFeeder(Backend("fake"), threaded=True)
        feeder.submit([], []).ready()
        where = feeder.affinity
        feeder.close()
    finally:
        torch.set_num_threads(before)
        monkeypatch.setattr(cpu_setup, "_APPLIED", None)
    assert setup.threads == len(groups) - 1
    assert setup.feeder_cpus == groups[-1]
    assert f"feeder=cpu{','.join(map(str, groups[-1]))}" in setup.describe()
    assert where == f"own core (cpu {','.join(map(str, groups[-1]))})"


def _thp_eligible(address: int) -> Optional[bool]:
    """The kernel's THPeligible flag of the mapping holding ``address`` (/proc/self/smaps), or None."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    inside = False
    for line in lines:
        head = line.split()[0] if line else ""
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("THPeligible:"):
            return line.split()[1] == "1"
    return None


def test_host_weight_memory_is_advised_huge_pages_and_the_setup_says_so(tmp_path, monkeypatch):
    """Runtime arenas and the calibrator's weight copies come from one helper (runtime.hostmem), which advises
    2 MiB pages: the kernel then marks the mapping THPeligible (checked in /proc/self/smaps where the THP mode
    is 'madvise'); LIA_HUGEPAGES=0 turns the advice off, and the CPU setup string says which."""
    from runtime import cpu_setup, hostmem

    sysfs = tmp_path / "enabled"
    sysfs.write_text("always [madvise] never\n")
    assert hostmem.thp_mode(sysfs) == "madvise"
    assert hostmem.thp_mode(tmp_path / "missing") == "unknown"
    advised = hostmem.host_tensor((4 << 20,), torch.bfloat16)  # 8 MiB
    assert advised.shape == (4 << 20,) and advised.dtype == torch.bfloat16 and not advised.any()
    monkeypatch.setenv("LIA_HUGEPAGES", "0")
    plain = hostmem.host_tensor((4 << 20,), torch.bfloat16)
    setup = cpu_setup.CpuSetup(threads=2, physical_cores=2, bind="close/cores", allocator="glibc")
    assert " weights=4k/thp-" in setup.describe()
    monkeypatch.delenv("LIA_HUGEPAGES")
    assert " weights=hugepage-advised/thp-" in setup.describe()
    if hostmem.thp_mode() != "madvise" or _thp_eligible(advised.data_ptr()) is None:
        pytest.skip(f"THP mode {hostmem.thp_mode()}: the advice is not observable here")
    assert _thp_eligible(advised.data_ptr()) is True
    assert _thp_eligible(plain.data_ptr()) is False


class _CopyEnd:
    """An end event that reports done after ``polls`` queries (None: never)."""

    def __init__(self, polls: Optional[int]) -> None:
        self.polls, self.asked = polls, 0

    def query(self) -> bool:
        self.asked += 1
        return self.polls is not None and self.asked > self.polls


def test_the_feeder_holds_its_next_piece_until_a_critical_copy_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """yield_to(end): the feeder queues no piece until the copy is done; a copy that never ends (it might wait on
    the very weights being streamed) is given up at its deadline, so the two cannot deadlock."""
    from runtime import streamer

    feeder = WeightFeeder(Backend("fake"), threaded=False)
    assert not feeder.yields  # without a feeder thread, pieces are queued at once: nothing to hold
    feeder.yield_to(_CopyEnd(0))
    assert not feeder._critical
    feeder.yields = True
    first, second = _CopyEnd(3), _CopyEnd(1)
    feeder.yield_to(first)
    feeder.yield_to(second)
    feeder._hold_for_critical()
    assert (first.asked, second.asked) == (4, 2) and not feeder._critical
    monkeypatch.setattr(streamer, "YIELD_S", 0.02)
    stuck = _CopyEnd(None)
    feeder.yield_to(stuck)
    feeder._hold_for_critical()  # returns: the deadline passed
    assert stuck.asked >= 2 and not feeder._critical
    monkeypatch.setenv("LIA_FEEDER_YIELD", "0")
    off = WeightFeeder(Backend("fake"), threaded=True)
    assert not off.yields and "yields" not in off.description
    off.close()


def test_critical_copies_past_their_deadline_are_not_kept_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run with no weight job never calls the hold, so yield_to itself drops entries past their deadline: the
    queue holds only copies younger than YIELD_S, not every copy of a long generation."""
    from runtime import streamer

    feeder = WeightFeeder(Backend("fake"), threaded=False)
    feeder.yields = True
    clock = [100.0]
    monkeypatch.setattr(streamer, "_clock", lambda: clock[0])
    for _ in range(1000):
        feeder.yield_to(_CopyEnd(None))
        clock[0] += streamer.YIELD_S / 4 * 1.001
    assert len(feeder._critical) == 4  # the copies of the last YIELD_S
