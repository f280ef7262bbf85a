"""A throwaway PostgreSQL cluster on loopback, for tests and benchmarks: initdb into a
temp dir (as the `postgres` user when run as root: initdb refuses root), trust auth,
fsync off, a free port."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Cluster", "NotInstalled"]


class NotInstalled(Exception):
    pass


def _bin_dir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise NotInstalled(
            "PostgreSQL is not installed: `make test` installs it (apt-get install postgresql)"
        )
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    data: Path
    port: int
    bin_dir: Path
    as_postgres: list[str]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @classmethod
    def start(cls) -> Cluster:
        bin_dir = _bin_dir()
        data = Path(tempfile.mkdtemp(prefix="mlsm-pg-"))
        as_postgres: list[str] = []
        import os

        if os.geteuid() == 0:
            shutil.chown(data, "postgres")
            as_postgres = ["runuser", "-u", "postgres", "--"]
        cluster = cls(data, _free_port(), bin_dir, as_postgres)
        cluster._run("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync")
        options = f"-p {cluster.port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
        cluster._run("pg_ctl", "-D", str(data), "-w", "-o", options, "-l", str(data / "log"),
                     "start")  # fmt: skip
        return cluster

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_postgres, str(self.bin_dir / tool), *args], check=True,
                       capture_output=True)  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.data, ignore_errors=True)


@contextlib.contextmanager
def fresh_database(server: str) -> Iterator[str]:
    """A new, empty database on `server`, dropped afterwards."""
    import sqlalchemy

    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()
