"""What every host probe's command line shares: no CSV overwritten without --force, and the columns that say
where, when and under which CPU setup a probe measured (runtime/probe_*.py)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd


def probe_parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The options every probe takes: --out DIR, --quick (a test run: ``quick_help``) and --force; the probe adds
    its own. The description is the module docstring's first paragraph."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--force", action="store_true", help="Replace an existing CSV.")
    return ap


def output_refused(path: Path, force: bool, hint: str = "") -> bool:
    """True (after one ``error:`` line on stderr) when ``path`` exists and --force was not given."""
    if path.exists() and not force:
        print(f"error: --out: '{path}' exists -- pass --force to replace it{hint}", file=sys.stderr)
        return True
    return False


def stamped(df: pd.DataFrame, setup: str, with_time: bool = True) -> pd.DataFrame:
    """``df`` with the probe's provenance first: when it ran (UTC; ``with_time``), the host and torch, the CPU
    setup (runtime.cpu_setup.describe)."""
    import torch

    out = df.copy()
    out.insert(0, "setup", setup)
    out.insert(0, "host", f"{os.uname().nodename} torch {torch.__version__}")
    if with_time:
        out.insert(0, "run_at_utc", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return out


def save(df: pd.DataFrame, setup: str, path: Path, with_time: bool = True) -> pd.DataFrame:
    """Write ``stamped(df)`` to ``path`` (its folder made) and say the CPU setup; the stamped frame back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = stamped(df, setup, with_time)
    out.to_csv(path, index=False)
    print(f"cpu setup: {setup}")
    return out
