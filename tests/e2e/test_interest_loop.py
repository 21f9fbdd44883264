"""The interest model end to end: import → train → evaluate from the CLI, and a champion
hot-swapped in a serving process under load with zero failed requests."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from adserve.db.engine import asyncpg_dsn
from adserve.db.migrate import upgrade
from adserve.interest.synthetic import generate_behaviour, generate_click_log, make_creatives
from adserve.interest.training import train_interest
from adserve.learning.registry import Registry
from tests.e2e.conftest import ROOT, run_server
from tests.integration.serving.catalog_builder import CatalogBuilder
from tests.unit.interest.conftest import FAST, TINY

pytestmark = pytest.mark.slow


def adserve(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adserve", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


async def test_import_train_evaluate_from_the_command_line(fresh_database, tmp_path: Path) -> None:
    url = await fresh_database()
    await asyncio.to_thread(upgrade, url)
    sequences, _ = generate_behaviour(
        n_users=120, n_items=60, n_categories=6, mean_length=14, seed=3, with_features=False
    )
    events = tmp_path / "events.csv"
    with events.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "timestamp"])
        for user, history in sequences.items():
            for index, event in enumerate(history):
                writer.writerow([user, event.item_id, int(event.ts) + index])  # unique per user
    total = sum(map(len, sequences.values()))
    env = {
        "ADSERVE_DATABASE_URL": url,
        "ADSERVE_MODELS_DIR": str(tmp_path / "models"),
        "ADSERVE_VAR_DIR": str(tmp_path / "var"),
    }

    imported = adserve(["import", "events", str(events)], env)
    assert imported.returncode == 0, imported.stderr
    assert f"imported {total} new" in imported.stdout
    again = adserve(["import", "events", str(events)], env)
    assert "imported 0 new" in again.stdout  # idempotent

    trained = adserve(["train", "--epochs", "3", "--seed", "1"], env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "(champion)" in trained.stdout
    versions = list((tmp_path / "models" / "interest").iterdir())
    assert len(versions) == 1 and (versions[0] / "model.pt").is_file()

    report_path = tmp_path / "eval.json"
    evaluated = adserve(["evaluate", "--json", str(report_path)], env)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert {"interest", "most_popular", "markov"} <= set(report["next_item"])
    for metrics in report["next_item"].values():
        assert set(metrics) == {"hr@10", "ndcg@10", "mrr@10"}
        assert 0.0 <= metrics["mrr@10"] <= metrics["ndcg@10"] <= metrics["hr@10"] <= 1.0
    assert "interest" in evaluated.stdout and "most_popular" in evaluated.stdout


def _load(url: str, stop: threading.Event, key: str, statuses: list[int]) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        index = 0
        while not stop.is_set():
            response = client.post(
                "/v1/decisions", json={"user_id": f"load-{index % 7}", "consent": True, "placements": [key]}
            )
            statuses.append(response.status_code)
            index += 1


async def test_champion_hot_swap_under_load_fails_no_request(database_url, sessionmaker, tmp_path) -> None:
    sequences, catalogue = generate_behaviour(n_users=80, n_items=40, n_categories=5, mean_length=12, seed=7)
    creatives = make_creatives(catalogue, n_creatives=12, seed=7)
    clicks = generate_click_log(sequences, creatives, impressions_per_user=4, seed=7)
    models = tmp_path / "models"
    paths = [
        train_interest(sequences, clicks, model_config=TINY, train_config=FAST).save(models, version=v)
        for v in ("hot-a", "hot-b")
    ]
    async with sessionmaker() as session:
        registry = Registry(session)
        for path in paths:
            await registry.register("interest", path.name, str(path), {})
        await registry.promote("interest", "hot-a", "test champion")
        builder = CatalogBuilder(session)
        await builder.campaign("swap", creatives=3, category="c1")
        key = await builder.placement("swap")

    env = {"ADSERVE_SERVING_SCORER": "interest", "ADSERVE_SERVING_MODEL_POLL_S": "0.2"}
    with run_server(database_url, tmp_path, env) as server:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the snapshot and the champion are loaded
            response = httpx.post(
                f"{server.url}/v1/decisions", json={"user_id": "probe", "consent": True, "placements": [key]}
            )
            if response.status_code == 200 and response.json()["decisions"][0]["creative"]:
                break
        statuses: list[int] = []
        stop = threading.Event()
        workers = [threading.Thread(target=_load, args=(server.url, stop, key, statuses)) for _ in range(4)]
        for worker in workers:
            worker.start()
        try:
            async with sessionmaker() as session:
                await Registry(session).promote("interest", "hot-b", "swap under load")
            connection = await asyncpg.connect(**asyncpg_dsn(database_url))
            try:
                swapped = False
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not swapped:
                    swapped = (
                        await connection.fetchval(
                            "SELECT count(*) FROM decisions WHERE scorer_version LIKE '%hot-b%'"
                        )
                        > 0
                    )
                    await asyncio.sleep(0.1)  # polling interval of a condition wait
                before = await connection.fetchval(
                    "SELECT count(*) FROM decisions WHERE scorer_version LIKE '%hot-a%'"
                )
            finally:
                await connection.close()
            served_after_swap = len(statuses)
            while len(statuses) < served_after_swap + 50:  # keep serving on the new model a while
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            for worker in workers:
                worker.join()
    assert swapped, server.log()[-3000:]
    assert before > 0  # the old champion served before the swap
    assert statuses and all(status == 200 for status in statuses), sorted(set(statuses))
