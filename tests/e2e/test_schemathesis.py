"""Fuzz the whole OpenAPI with schemathesis, as an admin and as a manager: no 5xx, no response that
breaks its schema."""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from adserve.admin import schemas
from adserve.admin.services import ApiKeyService
from tests.integration.conftest import Tenants, make_tenant

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("role", ["admin", "manager"])
async def test_schemathesis_finds_no_server_errors(
    server, tenants: Tenants, sessionmaker, role: str, tmp_path: Path
) -> None:
    # Rows of its own: the admin run may delete advertisers and revoke keys it finds (allowed).
    async with sessionmaker() as session:
        advertiser_id = None
        if role == "manager":
            advertiser_id = (await make_tenant(session, f"fuzz {secrets.token_hex(3)}")).advertiser_id
        key, _ = await ApiKeyService(session, None).create(
            schemas.ApiKeyCreate(role=role, advertiser_id=advertiser_id, name="fuzz")
        )
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{server.url}/schema/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        "not_a_server_error,response_schema_conformance",
        "--max-examples",
        "25",
        "--seed",
        "1",
        "--workers",
        "1",
        "--no-color",
        "--generation-database",
        "none",
        "--report-dir",
        str(tmp_path),
    ]
    result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=900)
    summary = result.stdout[-4000:]
    print(summary)
    assert result.returncode == 0, summary + result.stderr[-2000:]
    assert re.search(r"\d+ passed", summary), summary
    assert "server error" not in summary.lower().replace("not_a_server_error", "")
    assert "/5xx" not in summary
