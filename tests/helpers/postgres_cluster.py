"""A throwaway PostgreSQL cluster for tests: ``initdb`` in a temporary folder, ``pg_ctl start`` on a free port.

The cluster listens on 127.0.0.1 (password logins, scram-sha-256) and on a unix socket in its own folder (the
owner logs in there without a password, which is how :meth:`PostgresCluster.psql` queries it). Run as root,
every PostgreSQL command runs as the unprivileged ``postgres`` user (``initdb`` refuses root), which then owns
the folder. The binaries are Debian's (``/usr/lib/postgresql/<major>/bin``, the newest) or the ones on PATH.
Without them :func:`postgres_bin_dir_or_skip` skips the test, unless ``CASTLAB_REQUIRE_POSTGRES=1`` (CI).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest

REQUIRE_ENV = "CASTLAB_REQUIRE_POSTGRES"
_DEBIAN_BINS = Path("/usr/lib/postgresql")


def postgres_bin_dir() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``psql`` (the newest Debian major first), or None."""
    def major(path: Path) -> float:
        try:
            return float(path.parent.parent.name)
        except ValueError:
            return 0.0

    found = sorted(_DEBIAN_BINS.glob("*/bin/initdb"), key=major, reverse=True)
    candidates = [p.parent for p in found]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "psql")):
            return folder
    return None


def postgres_bin_dir_or_skip() -> Path:
    """:func:`postgres_bin_dir`, else skip the test (fail it when ``CASTLAB_REQUIRE_POSTGRES=1``)."""
    folder = postgres_bin_dir()
    if folder is not None:
        return folder
    reason = (f"no PostgreSQL binaries (initdb, pg_ctl, psql) under {_DEBIAN_BINS}/*/bin or on PATH "
              "(Debian: apt-get install postgresql; .ci/run installs it)")
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}; {REQUIRE_ENV}=1 requires them")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as_user() -> str | None:
    """The user PostgreSQL runs as when we are root (initdb refuses root); None: run as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


class PostgresCluster:
    """A private cluster with one login role (random password) and its databases; a context manager."""

    def __init__(self, databases: tuple[str, ...] = ("labelstudio", "prefect"), role: str = "castlab",
                 extensions: dict[str, tuple[str, ...]] | None = None, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or postgres_bin_dir_or_skip()
        self.databases = databases
        self.role = role
        self.extensions = extensions if extensions is not None else {"prefect": ("pg_trgm",)}
        # characters a URL must quote: proves the password reaches both servers intact
        self.password = secrets.token_urlsafe(12) + "@:/%?#"
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user = _run_as_user()
        self.root = Path(tempfile.mkdtemp(prefix="castlab-pg-"))  # short: the socket path has a length limit
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.started = False
        self.start_seconds = 0.0  # initdb + start + role and databases

    def _command(self, tool: str, *args: str) -> list[str]:
        command = [str(self.bin_dir / tool), *args]
        return ["runuser", "-u", self.user, "--", *command] if self.user else command

    def _run(self, tool: str, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(self._command(tool, *args), input=stdin, capture_output=True, text=True,
                              timeout=120, cwd=self.root, check=False)
        if done.returncode:
            raise RuntimeError(f"{tool} exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def start(self) -> PostgresCluster:
        began = time.monotonic()
        if self.user:
            shutil.chown(self.root, user=self.user)
        self.root.chmod(0o700)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--locale=C",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
        options = (f"-h {self.host} -p {self.port} -k {self.root} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        self.started = True
        self.psql("postgres", f"CREATE ROLE {self.role} LOGIN PASSWORD '{self.password}'")
        for name in self.databases:
            self.psql("postgres", f"CREATE DATABASE {name} OWNER {self.role}")
            for extension in self.extensions.get(name, ()):
                self.psql(name, f"CREATE EXTENSION IF NOT EXISTS {extension}")
        self.start_seconds = time.monotonic() - began
        return self

    def psql(self, database: str, sql: str) -> str:
        """Run `sql` as the cluster's superuser over the unix socket; psql's unaligned, tuples-only output."""
        return self._run("psql", "-X", "-v", "ON_ERROR_STOP=1", "-q", "-tA", "-h", str(self.root), "-p",
                         str(self.port), "-U", "postgres", "-d", database, "-f", "-", stdin=sql).strip()

    @property
    def url(self) -> str:
        """``postgresql://role:password@127.0.0.1:port`` (the password URL-quoted); no database."""
        return f"postgresql://{self.role}:{quote(self.password, safe='')}@{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its folder."""
        try:
            if self.started:
                try:
                    self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
                except (RuntimeError, subprocess.TimeoutExpired):
                    self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
                self.started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
