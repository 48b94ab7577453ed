"""Bad input gets one clear message before anything is allocated (issue 5, 'Must show: bad input')."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lia_model.baselines import gpu_only_plan
from lia_model.cli import app
from lia_model.errors import LiaInputError
from lia_model.memory import MemoryTier, memory_use
from lia_model.models import get_model
from lia_model.plan import ALL_CPU, ATTENTION_ON_CPU, CpuIsa, HostTier, Plan
from lia_model.profiles import load_system
from lia_model.workload import Workload
from runtime import hostmem
from runtime.backend import Backend
from runtime.hostmem import require_tier
from runtime.points import GroupSpec, IsaChoice, load_points_file, runnable_system, runtime_isa
from runtime.preflight import capped_system, preflight
from runtime.validate import Options, resolve_points, run_points

OPT30_4L = get_model("opt-30b").model_copy(update={"num_layers": 4})
WL = Workload(batch=1, input_len=32, output_len=8)


def test_a_plan_that_does_not_fit_the_capped_gpu_is_refused_with_the_shortfall():
    system = load_system("spr-h100")
    plan = gpu_only_plan(system, OPT30_4L, WL)  # 4 resident layers: 4.9 GB + embeddings
    cap = 4.0
    hbm = memory_use(capped_system(system, cap), OPT30_4L, WL, plan)[MemoryTier.HBM]
    # by hand: 4 GiB * 0.95 - 1 GiB reserved = 2.8 GiB = 3.006 GB available
    assert hbm.available_gb == pytest.approx((4 * 0.95 - 1) * 2**30 / 1e9)
    assert hbm.required_gb > 4 * 1.233  # four 1.233 GB layers alone
    with pytest.raises(LiaInputError) as err:
        preflight(system, OPT30_4L, WL, plan, has_gpu=True, gpu_memory_gib=cap)
    msg = str(err.value)
    assert err.value.field == "memory.hbm"
    assert f"short by {hbm.shortfall_gb:.1f} GB" in msg
    assert "capped at 4 GiB" in msg and "--gpu-memory-gib" in msg


def test_refusal_happens_before_any_allocation(monkeypatch):
    def no_allocation(*args, **kwargs):
        raise AssertionError("allocated host memory for a plan that does not fit")

    monkeypatch.setattr(hostmem.HostArena, "__init__", no_allocation)
    group = GroupSpec(
        id="too-big",
        model="opt-30b",
        num_layers=4,
        batch=1,
        input_len=32,
        output_len=8,
        gpu_memory_gib=4,
        plans=["gpu_only"],
    )
    system = load_system("spr-h100")
    points = resolve_points([group], system, Options(), runtime_isa(), has_gpu=True)
    assert points[0].skip_reason is not None and "short by" in points[0].skip_reason
    rows = run_points(points, system, Options(), echo=lambda _: None, fake_gpu=True)
    assert rows[0]["status"] == "skipped" and "memory.hbm" in rows[0]["skip_reason"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_a_gpu_plan_without_cuda_gives_one_clear_message():
    system = load_system("spr-h100")
    plan = Plan(prefill_policy=ALL_CPU, decode_policy=ATTENTION_ON_CPU, gpu_resident_layers=0)
    with pytest.raises(LiaInputError) as err:
        preflight(system, OPT30_4L, WL, plan, has_gpu=Backend.detect().has_gpu)
    assert err.value.field == "GPU" and "no CUDA device" in str(err.value) and "(1,1,1,1,1,1)" in str(err.value)
    with pytest.raises(LiaInputError, match="no CUDA device"):
        Backend("cpu").empty((2,), plan.decode_policy[0])
    # an all-CPU plan passes the same check
    preflight(system, OPT30_4L, WL, Plan(prefill_policy=ALL_CPU, decode_policy=ALL_CPU), has_gpu=False)


def test_lia_validate_on_a_cpu_machine_reports_gpu_points_as_skipped(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    points = tmp_path / "p.yaml"
    points.write_text(
        "groups:\n  - {id: g, model: opt-30b, num_layers: 1, batch: 1, input_len: 4, output_len: 2, plans: [flexgen]}\n"
    )
    result = CliRunner().invoke(app, ["validate", "--points", str(points), "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, LiaInputError)
    assert "no point ran" in str(result.exception) and "no CUDA device" in str(result.exception)


def _fake_sysfs(root: Path, nodes: dict[int, tuple[str, int]]) -> Path:
    for n, (cpus, kib) in nodes.items():
        d = root / f"node{n}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus + "\n")
        (d / "meminfo").write_text(f"Node {n} MemTotal:       {kib} kB\n")
    return root


def test_a_ddr_cxl_weight_split_is_refused_by_the_runtime_not_run_as_all_ddr():
    """The model and the optimiser price a split of the streamed weights between DDR and CXL (cxl_weight_layers);
    the runtime has one weight arena, so a split plan is one clear error naming the field, not a run whose weights
    all sit in DDR while its row reports the split."""
    system = load_system("spr-h100")
    split = Plan(prefill_policy=ALL_CPU, decode_policy=ALL_CPU, cxl_weight_layers=2)
    with pytest.raises(LiaInputError) as err:
        preflight(system, OPT30_4L, WL, split, has_gpu=False)
    assert err.value.field == "plan.cxl_weight_layers" and "2 streamed layers" in str(err.value)
    assert "cxl_weight_layers 0" in err.value.fix


def test_cxl_tier_needs_a_memory_only_numa_node(tmp_path):
    one_node = _fake_sysfs(tmp_path / "a", {0: ("0-15", 131072000)})
    with pytest.raises(LiaInputError) as err:
        require_tier(HostTier.CXL, "KV cache", sysfs=one_node)
    assert err.value.field == "CXL memory" and "node0 (cpus 0-15" in str(err.value)
    assert require_tier(HostTier.DDR, "KV cache", sysfs=one_node) is None
    with_cxl = _fake_sysfs(tmp_path / "b", {0: ("0-15", 131072000), 1: ("", 268435456)})
    assert require_tier(HostTier.CXL, "KV cache", sysfs=with_cxl) == 1


def test_points_file_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n  - {id: g, model: opt-30b, batch: 1, input_len: 4, output_len: 2, bach: 3}\n")
    with pytest.raises(LiaInputError, match="unknown field") as err:
        load_points_file(bad)
    assert "bach" in str(err.value)
    dup = tmp_path / "dup.yaml"
    dup.write_text("defaults: {model: opt-30b, batch: 1, input_len: 4, output_len: 2}\ngroups: [{id: g}, {id: g}]\n")
    with pytest.raises(LiaInputError, match="repeated: g"):
        load_points_file(dup)
    with pytest.raises(LiaInputError, match="no such file"):
        load_points_file(tmp_path / "missing.yaml")


def test_unknown_plans_and_models_are_skipped_with_the_reason():
    system = load_system("spr-h100")
    groups = [
        GroupSpec(id="a", model="opt-30b", num_layers=2, batch=1, input_len=8, output_len=2, plans=["nonsense"]),
        GroupSpec(id="b", model="opt-31b", batch=1, input_len=8, output_len=2),
    ]
    points = resolve_points(groups, system, Options(), runtime_isa(), has_gpu=True)
    assert "unknown plan 'nonsense'" in points[0].skip_reason
    assert "did you mean 'opt-30b'" in points[1].skip_reason


def test_runtime_isa_follows_cpu_flags_and_the_onednn_cap():
    amx = "flags\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n"
    assert runtime_isa(amx, "").run == CpuIsa.AMX_BF16
    assert runtime_isa(amx, "AVX512_CORE_BF16").run == CpuIsa.AVX512_BF16
    assert runtime_isa(amx, "AVX512_CORE").run == CpuIsa.AVX512_FP32
    assert runtime_isa("flags\t: fpu sse2\n", "").run is None


def test_validation_plans_use_only_the_isa_the_runtime_runs():
    """oneDNN fixes its ISA per process: with AMX in the runtime, the optimiser must not pick an AVX-512 decode
    (the emr kernel-table profile predicts AVX-512 decode from the roofline, AMX from the measured tables)."""
    system = load_system("hwprofiles/systems/emr-h200-kernels.yaml")
    group = GroupSpec(id="g", model="opt-30b", num_layers=4, gpu_memory_gib=6, batch=2, input_len=32, output_len=4)
    free = resolve_points([group], system, Options(), IsaChoice(None, "unknown"), has_gpu=True)
    amx = resolve_points([group], system, Options(), IsaChoice(CpuIsa.AMX_BF16, "amx"), has_gpu=True)
    free_opt = next(p for p in free if p.id.endswith("/optimal"))
    amx_opt = next(p for p in amx if p.id.endswith("/optimal"))
    assert free_opt.plan.decode_cpu_isa != CpuIsa.AMX_BF16  # the unrestricted optimum mixes ISAs here
    assert amx_opt.plan.prefill_cpu_isa == amx_opt.plan.decode_cpu_isa == CpuIsa.AMX_BF16
    assert amx_opt.plan_isa == "amx_bf16"
    restricted = runnable_system(system, IsaChoice(CpuIsa.AMX_BF16, "amx"))
    assert [k for k, v in restricted.cpu.isa.items() if v.present] == [CpuIsa.AMX_BF16]
    assert runnable_system(system, IsaChoice(None, "unknown")) is system


def test_cli_needs_points_and_out():
    result = CliRunner().invoke(app, ["validate"])
    assert isinstance(result.exception, LiaInputError) and "--points" in str(result.exception)


def test_a_point_that_breaks_is_reported_and_the_others_still_run(monkeypatch):
    from runtime.executor import Executor

    tiny = {
        "name": "tiny",
        "num_layers": 2,
        "hidden_size": 32,
        "ffn_size": 64,
        "num_heads": 2,
        "num_kv_heads": 2,
        "head_dim": 16,
        "vocab_size": 64,
        "max_context": 32,
        "learned_positions": 34,
    }
    group = GroupSpec(id="g", model=tiny, batch=2, input_len=4, output_len=2, plans=["ipex", "flexgen"])
    system = load_system("spr-h100")
    original = Executor.generate

    def broken_for_flexgen(self, *args, **kwargs):
        if self.plan.label == "flexgen":
            raise RuntimeError("planted failure")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Executor, "generate", broken_for_flexgen)
    points = resolve_points([group], system, Options(), runtime_isa(), has_gpu=True)
    rows = {r["point_id"]: r for r in run_points(points, system, Options(), echo=lambda _: None, fake_gpu=True)}
    assert rows["g/ipex"]["status"] == "ran" and rows["g/ipex"]["dataflow_problems"] == 0
    assert rows["g/flexgen"]["status"] == "skipped"
    assert rows["g/flexgen"]["skip_reason"] == "FAILED: RuntimeError: planted failure"


def test_the_copy_engine_probe_refuses_a_machine_without_cuda(tmp_path, capsys, monkeypatch):
    import torch

    from runtime import probe_h2d

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert probe_h2d.main(["--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: CUDA: this probe needs an NVIDIA GPU -- run it on the GPU host"]
    assert not (tmp_path / "p").exists()


def test_pitched_copy_geometry_of_a_kv_cache_slice():
    """runtime.cudart.pitched: a [3, 2, 7, 4] bf16 slice of positions 1..7 of a [3, 2, 9, 4] cache is 3 x 2 = 6 rows
    of 7 x 4 x 2 = 56 bytes, 9 x 4 x 2 = 72 bytes apart in the cache and 56 apart in a dense source."""
    import torch

    from runtime import cudart

    cache = torch.zeros(3, 2, 9, 4, dtype=torch.bfloat16)
    dense = torch.zeros(3, 2, 7, 4, dtype=torch.bfloat16)
    assert cudart.pitched(cache[:, :, 1:8], dense) == cudart.Pitch(6, 56, 72, 56)
    assert cudart.pitched(dense, cache[:, :, 1:8]) == cudart.Pitch(6, 56, 56, 72)
    assert cudart.pitched(cache[:, :, 1:8], dense.float()) is None  # dtypes differ
    assert cudart.pitched(cache[:, :, :, :2], torch.zeros(3, 2, 9, 2, dtype=torch.bfloat16)) is None  # rows not whole


def test_huge_page_fraction_reads_the_mappings_that_hold_the_tensors():
    """A synthetic /proc/self/smaps: the tensor's mapping has Rss 4096 kB of which 2048 kB on huge pages, another
    mapping (not the tensor's) 100 kB: 0.5. No readable mapping: None. On this machine a host weight tensor
    reads a share between 0 and 1 (what the kernel grants varies; the calibrator records it, not a test)."""
    import torch

    from runtime.hostmem import host_tensor, huge_page_fraction

    t = torch.empty(1024)
    a = t.data_ptr()
    smaps = (
        f"{a - 4096:x}-{a + 8192:x} rw-p 00000000 00:00 0\nSize: 12 kB\nRss:  4096 kB\nAnonHugePages:  2048 kB\n"
        f"{a + 8192:x}-{a + 16384:x} rw-p 00000000 00:00 0\nRss:  100 kB\nAnonHugePages:  100 kB\n"
    )
    assert huge_page_fraction([t], smaps) == 0.5
    assert huge_page_fraction([t], "") is None
    real = huge_page_fraction([host_tensor((4096, 4096), torch.bfloat16)])
    assert real is None or 0.0 <= real <= 1.0


def test_vmstat_counters_and_their_delta_by_hand():
    """The calibrator's record of the kernel's compaction and collapse work per round (runtime/hostmem.py)."""
    from runtime.hostmem import vmstat_counters, vmstat_delta

    before = vmstat_counters("nr_free_pages 100\ncompact_stall 7\npgmigrate_success 1000\nthp_collapse_alloc 2\n")
    after = vmstat_counters("compact_stall 9\npgmigrate_success 1512\nthp_collapse_alloc 2\nbogus x\n")
    assert before == {"compact_stall": 7, "pgmigrate_success": 1000, "thp_collapse_alloc": 2}
    assert vmstat_delta(before, after) == "compact_stall=2;pgmigrate_success=512;thp_collapse_alloc=0"
    assert vmstat_delta({}, after) == "" and vmstat_counters("") == {}
