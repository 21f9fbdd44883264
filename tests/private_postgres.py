"""A private embedded Postgres that a test may stop and start (fault tests).

It always runs its own server, even when ADSERVE_TEST_DATABASE_URL names a shared one, because
stopping a shared server would break every other test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from adserve.db.engine import EmbeddedPostgres
from adserve.db.migrate import upgrade


@dataclass
class PrivatePostgres:
    """pg_ctl runs as pgserver does (as the `pgserver` system user when we are root)."""

    data_dir: Path
    url: str

    def _pg_ctl(self, args: list[str]) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(args, pgdata=self.data_dir, user="pgserver" if os.geteuid() == 0 else None, timeout=30)

    def stop(self) -> None:
        self._pg_ctl(["-w", "-m", "fast", "stop"])

    def start(self) -> None:
        socket_dir = parse_qs(urlsplit(self.url).query)["host"][0]
        self._pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(self.data_dir / "log"), "start"]
        )


def private_postgres_server(prefix: str) -> Iterator[PrivatePostgres]:
    """A migrated private server for a fixture to yield from; stopped and removed afterwards.

    Stopped with our own pg_ctl, not pgserver's cleanup: once a test has stopped and restarted the
    server, pgserver's record names the first postmaster, so its cleanup judged the wrong process
    and left the restarted server running after the session.
    """
    # Not under pytest's basetemp: any pytest run on this machine resets /tmp/pytest-of-<user>
    # to mode 0700, which locks the `pgserver` user out of its data folder mid-test.
    embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix=prefix)))
    url = embedded.start()
    try:
        upgrade(url)
        yield PrivatePostgres(embedded.data_dir, url)
    finally:
        if (embedded.data_dir / "postmaster.pid").exists():
            PrivatePostgres(embedded.data_dir, url).stop()
        shutil.rmtree(embedded.data_dir, ignore_errors=True)
