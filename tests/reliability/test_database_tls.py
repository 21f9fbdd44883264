"""Second paragraph: `sslmode` was dropped from the database URL. The URL's libpq TLS options
(sslmode, sslrootcert, …) now reach asyncpg, for the hot path's pools and the ORM engine alike."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text

from adserve.db.engine import asyncpg_dsn, create_engine

SSL_IN_USE = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def _with(url: str, options: str) -> str:
    return url + ("&" if "?" in url else "?") + options


@pytest.fixture(scope="module")
async def server_ssl(database_url: str) -> bool:
    """Whether the test server offers TLS at all (the expectations differ, the point does not)."""
    if str(asyncpg_dsn(database_url)["host"]).startswith("/"):
        pytest.skip("a unix-socket server: TLS does not apply")
    connection = await asyncpg.connect(**asyncpg_dsn(database_url))
    try:
        return await connection.fetchval("SHOW ssl") == "on"
    finally:
        await connection.close()


async def _ssl_of(url: str) -> bool:
    connection = await asyncpg.connect(**asyncpg_dsn(url))
    try:
        return await connection.fetchval(SSL_IN_USE)
    finally:
        await connection.close()


async def test_sslmode_require_is_honoured(database_url, server_ssl) -> None:
    url = _with(database_url, "sslmode=require")
    if server_ssl:
        assert await _ssl_of(url) is True
    else:
        with pytest.raises(ConnectionError, match="SSL"):
            await _ssl_of(url)


async def test_sslmode_disable_is_honoured(database_url, server_ssl) -> None:
    assert await _ssl_of(_with(database_url, "sslmode=disable")) is False


async def test_verify_full_with_a_missing_root_certificate_refuses(
    database_url, server_ssl, tmp_path
) -> None:
    missing = tmp_path / "no-such-root.crt"
    with pytest.raises((ConnectionError, OSError)):
        await _ssl_of(_with(database_url, f"sslmode=verify-full&sslrootcert={missing}"))


async def test_the_orm_engine_honours_sslmode(database_url, server_ssl, settings) -> None:
    engine = create_engine(_with(database_url, "sslmode=disable"), settings)
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text(SSL_IN_USE))).scalar() is False
    finally:
        await engine.dispose()
    engine = create_engine(_with(database_url, "sslmode=require"), settings)
    try:
        if server_ssl:
            async with engine.connect() as connection:
                assert (await connection.execute(text(SSL_IN_USE))).scalar() is True
        else:
            with pytest.raises(Exception, match="SSL"):
                async with engine.connect():
                    pass
    finally:
        await engine.dispose()
