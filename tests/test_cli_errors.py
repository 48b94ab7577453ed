"""Bad input: one clear `error:` line naming the field and a valid example, exit code 2, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

LIA = [sys.executable, "-m", "lia_model"]
PROFILES = Path(__file__).resolve().parents[1] / "hwprofiles"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LIA, *args], capture_output=True, text=True, timeout=120)


def assert_clear_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def system_file(tmp_path: Path, gpu_text: str) -> str:
    """A system file whose GPU is given inline as text (everything else from the catalog)."""
    (tmp_path / "sys.yaml").write_text(
        "name: broken\ncpu: spr-8460h\nlink: pcie5-x16\nddr: ddr5-4800-8ch-512gib\ncxl: null\n"
        "host_reserved_gib: 16\nmemory_headroom_fraction: 0.05\n"
        "source: {host_reserved_gib: test, memory_headroom_fraction: test}\n"
        "gpu:\n" + "\n".join("  " + line for line in gpu_text.splitlines()) + "\n")
    return str(tmp_path / "sys.yaml")


GPU = (PROFILES / "gpu" / "h100-pcie-80gb.yaml").read_text()


def test_malformed_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ncpu: [spr-8460h\ngpu: h100-pcie-80gb\n")
    assert_clear_error(run("plan", "--system", str(path)), "malformed YAML at line", "e.g.")


def test_missing_field(tmp_path):
    text = "\n".join(line for line in GPU.splitlines() if not line.startswith("hbm_gbps:"))
    assert_clear_error(run("plan", "--system", system_file(tmp_path, text)), "gpu.hbm_gbps", "missing",
                       "hbm_gbps: 3350")


def test_unit_typo(tmp_path):
    text = GPU.replace("hbm_gbps: 2000", "hbm_gb_per_s: 2000")
    assert_clear_error(run("plan", "--system", system_file(tmp_path, text)), "gpu.hbm_gb_per_s", "unknown field",
                       "did you mean 'hbm_gbps'")


def test_negative_bandwidth():
    assert_clear_error(run("plan", "--set", "link.h2d_gbps=-5"), "link.h2d_gbps", "greater than 0", "h2d_gbps: 55")


def test_number_without_a_source(tmp_path):
    text = GPU.replace('  hbm_gbps: "datasheet: H100 PCIe, 2.0 TB/s"\n', "")
    assert_clear_error(run("plan", "--system", system_file(tmp_path, text)), "without a source", "hbm_gbps")


def test_unknown_model():
    assert_clear_error(run("plan", "--model", "opt-17b"), "model", "unknown model 'opt-17b'", "opt-175b")


def test_unknown_system():
    assert_clear_error(run("plan", "--system", "spr-h1000"), "system", "unknown system", "did you mean 'spr-h100'")


def test_batch_of_zero():
    assert_clear_error(run("plan", "--batch", "0"), "workload.batch", ">= 1", "--batch 1")


def test_negative_batch():
    assert_clear_error(run("predict", "--batch", "-3"), "workload.batch")


def test_output_past_the_context_limit():
    assert_clear_error(run("plan", "--input", "2000", "--output", "100"), "workload.output_len", "2048",
                       "at most 48 tokens")


def test_unknown_objective():
    assert_clear_error(run("plan", "--objective", "cost"), "--objective", "unknown objective 'cost'", "latency")


def test_set_on_a_field_that_does_not_exist():
    assert_clear_error(run("plan", "--set", "gpu.memroy_gib=141"), "--set gpu.memroy_gib", "did you mean 'memory_gib'")


def test_infeasible_query_names_the_binding_tier_and_the_fix():
    """OPT-175B on a 40 GB GPU with 64 GB of DDR and no CXL."""
    proc = run("plan", "--system", "spr-a100", "--set", "ddr.capacity_gib=64")
    assert_clear_error(proc, "fits spr-a100's memory", "binds", "GB more")


def test_unknown_plan_file():
    assert_clear_error(run("predict", "--plan", "/nonexistent/plan.json"), "--plan", "no such file")


def test_unknown_solver():
    assert_clear_error(run("plan", "--solver", "gurobi"), "--solver", "cbc")


@pytest.mark.parametrize("args", [["plan", "--json"], ["compare", "--systems", "spr-a100,gnr-h100"],
                                  ["profiles", "show", "spr-h100-cxl"], ["models", "list"]])
def test_commands_succeed(args):
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
