"""The committed campaign files: each loads, and part C's "pre-chain-optimum" plans are the optima measured."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from runtime.points import load_points_file

ROOT = Path(__file__).parent.parent
CAMPAIGNS = sorted((ROOT / "runtime" / "campaign").glob("*.yaml"))


@pytest.mark.parametrize("path", CAMPAIGNS, ids=[p.name for p in CAMPAIGNS])
def test_campaign_file_loads(path):
    groups = load_points_file(path)
    assert groups, path
    ids = [g.id for g in groups]
    assert len(ids) == len(set(ids)), f"{path.name}: group ids repeat"


def test_part_c_pre_chain_optimum_is_the_measured_optimum():
    """wave2-c.yaml copies, per workload, the plan that runtime/validation/wave2-a4/ and wave2-b4/ ran as
    "optimal" (before the chain terms): its policies, resident layers and prefill minibatches."""
    measured = pd.concat(
        pd.read_csv(ROOT / "runtime" / "validation" / part / "results.csv") for part in ("wave2-a4", "wave2-b4")
    ).set_index("point_id")
    groups = yaml.safe_load((ROOT / "runtime" / "campaign" / "wave2-c.yaml").read_text())["groups"]
    assert len(groups) == 7
    for g in groups:
        (pre,) = [p for p in g["plans"] if isinstance(p, dict) and p["label"] == "pre-chain-optimum"]
        row = measured.loc[f"{g['id']}/optimal"]
        assert row["status"] == "ran"
        assert (pre["prefill_policy"], pre["decode_policy"]) == (row["plan_prefill"], row["plan_decode"]), g["id"]
        assert pre["gpu_resident_layers"] == row["gpu_resident_layers"], g["id"]
        assert pre["prefill_minibatches"] == row["prefill_minibatches"], g["id"]
        assert g["model"] == row["model"], g["id"]
        assert g.get("num_layers", row["model_layers_full"]) == row["num_layers"], g["id"]
        for key in ("batch", "input_len", "output_len", "gpu_memory_gib"):
            assert g.get(key, 8 if key == "output_len" else None) == row[key], (g["id"], key)
