from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pytest

from adserve.bandit.obd import find_campaign_csv, format_table, load_obd, main, run_obd

if TYPE_CHECKING:
    from pathlib import Path

N_ITEMS = 4
ITEM_CTR = [0.02, 0.02, 0.30, 0.02]  # item 2 is the one worth learning


def write_obd(directory: Path, campaign: str = "men", rows: int = 1200, seed: int = 0) -> Path:
    """A small dataset in the OBD layout, logged by a uniform-random policy."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "item_context.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["", "item_id", "item_feature_0", "item_feature_1", "item_feature_2", "item_feature_3"]
        )
        for i in range(N_ITEMS):
            writer.writerow([i, i, -0.5 + i * 0.3, f"cat{i % 2}", f"brand{i}", "x"])
    rng = np.random.default_rng(seed)
    start = datetime(2019, 11, 24, tzinfo=UTC)
    with (directory / f"{campaign}.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "",
                "timestamp",
                "item_id",
                "position",
                "click",
                "propensity_score",
                "user_feature_0",
                "user_feature_1",
            ]
            + [f"user-item_affinity_{i}" for i in range(N_ITEMS)]
        )
        # written newest first: the loader must order by time itself
        for row in reversed(range(rows)):
            item = int(rng.integers(N_ITEMS))
            click = int(rng.random() < ITEM_CTR[item])
            when = start + timedelta(seconds=37 * row)
            writer.writerow(
                [row, when.isoformat(sep=" "), item, 1 + row % 3, click, 1 / N_ITEMS, f"u{row % 5}", "a b"]
                + [0.0] * N_ITEMS
            )
    return directory


def test_finds_the_campaign_csv_whatever_its_name(tmp_path: Path) -> None:
    directory = write_obd(tmp_path / "women", campaign="women", rows=10)
    assert find_campaign_csv(directory).name == "women.csv"
    (directory / "men.csv").write_text("")
    with pytest.raises(ValueError, match=r"exactly one campaign CSV.*men\.csv.*women\.csv"):
        find_campaign_csv(directory)
    with pytest.raises(ValueError, match="none"):
        find_campaign_csv(tmp_path / "missing")


def test_rows_become_logged_decisions_in_time_order(tmp_path: Path) -> None:
    data = load_obd(write_obd(tmp_path / "d", rows=30))
    records = data.records
    assert len(records) == 30 and len(data.items) == N_ITEMS
    assert [r.context.now for r in records] == sorted(r.context.now for r in records)
    first = records[0]
    assert first.context.position == 1  # row 0 → position 1
    assert first.context.keywords == ("feature_0=u0", "feature_1=a b")
    assert first.pmf == (0.25,) * N_ITEMS and first.propensity == 0.25
    assert first.candidates[2].category == "cat0" and first.candidates[2].brand == "brand2"
    assert first.chosen_candidate.creative_id == first.chosen
    assert {r.revenue for r in records} <= {0.0, 1.0}


def test_run_obd_learns_the_better_item_and_reports_every_estimator(tmp_path: Path) -> None:
    result = run_obd(write_obd(tmp_path / "d"), seed=0, n_bootstrap=200)
    assert result["campaign_csv"] == "men.csv" and result["items"] == N_ITEMS
    assert result["positions"] == [1, 2, 3]
    assert result["train"]["rows"] == 840 and result["test"]["rows"] == 360
    assert result["train"]["to"] <= result["test"]["from"]
    for name in ("vw_policy", "vw_greedy", "logging"):
        for estimator in ("ips", "snips", "dr"):
            ctr = result["policies"][name]["estimates"][estimator]["ctr"]
            assert ctr["low"] <= ctr["value"] <= ctr["high"]
    logging = result["policies"]["logging"]["estimates"]["ips"]["ctr"]
    greedy = result["policies"]["vw_greedy"]["estimates"]["snips"]["ctr"]
    # true CTRs: logging (uniform) 0.09, greedy on item 2 0.30
    assert greedy["value"] > logging["high"]
    assert result["logging_ctr"] == logging["value"]
    json.dumps(result)  # JSON-ready
    table = format_table(result)
    assert "| vw_greedy | SNIPS |" in table and "| logging | DR |" in table


def test_main_prints_the_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = write_obd(tmp_path / "d", rows=300)
    out = tmp_path / "obd.json"
    assert main([str(directory), "--json", str(out), "--bootstrap", "50"]) == 0
    assert "| vw_policy | IPS |" in capsys.readouterr().out
    assert set(json.loads(out.read_text())["policies"]) == {"vw_policy", "vw_greedy", "logging"}
    assert main([str(tmp_path / "empty")]) == 2
