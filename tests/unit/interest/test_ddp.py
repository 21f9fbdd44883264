from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from adserve.interest.checkpoint import load_checkpoint
from adserve.interest.synthetic import generate_behaviour


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_cpu_processes_write_a_loadable_checkpoint(tmp_path: Path) -> None:
    sequences, _ = generate_behaviour(n_users=120, n_items=60, mean_length=12, seed=3, with_features=False)
    events = tmp_path / "events.csv"
    with events.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "timestamp"])
        for user, user_events in sequences.items():
            writer.writerows([user, e.item_id, int(e.ts)] for e in user_events)
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun), "--nproc_per_node=2", f"--master_port={_free_port()}",
        "-m", "adserve.interest.train_ddp", "--events", str(events), "--out", str(tmp_path / "models"),
        "--version", "ddp", "--epochs", "3", "--hidden", "16", "--max-len", "20", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # gloo on CPU even on a GPU machine
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    directory = tmp_path / "models" / "interest" / "ddp"
    assert done.stdout.strip().endswith(str(directory))
    loaded = load_checkpoint(directory)
    assert loaded.config.hidden == 16 and len(loaded.vocab) == 61
    assert loaded.metrics["training"]["epochs"] >= 1
    assert (directory / "metrics.json").is_file()
