"""A real PostgreSQL server for the tests, initialised in a temporary folder.

``PgServer(base)`` runs ``initdb`` (trust authentication, a superuser ``olol``) into a
folder of its own, then ``postgres`` on 127.0.0.1 with a free port and its socket in
that folder; ``stop()`` stops it (``pg_ctl stop -m fast``) and ``start()`` starts it
again on the same port and data. PostgreSQL refuses to run as root: when the tests
run as root, the server runs as the ``postgres`` system user (``runuser``). Its folder
is a new one under ``base``, or under the system's temporary directory when running as
root (pytest's ``tmp_path`` is root-only) or when ``base`` is too long for a socket
path; :meth:`cleanup` removes it.

The server binaries are found with ``pg_config --bindir``, then in
``/usr/lib/postgresql/<version>/bin`` (Debian's ``postgresql`` package).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGE_HINT = "the Debian package `postgresql` (apt-get install postgresql)"
_TOOLS = ("initdb", "pg_ctl", "postgres")

# Settings for a throwaway test server: no fsync (the tests do not crash the host),
# enough connections for several pools and the listeners.
FAST_SETTINGS = {
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
}


def find_bindir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or None."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            candidates.append(out)
        except (OSError, subprocess.SubprocessError):
            pass

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for folder in candidates:
        if folder and all(os.access(os.path.join(folder, t), os.X_OK) for t in _TOOLS):
            return Path(folder)
    return None


def missing_reason() -> str | None:
    """Why a server cannot be started here (None when it can)."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        return "psycopg 3 and psycopg_pool are not installed (pip install 'olol[postgresql]')"
    if find_bindir() is None:
        return f"PostgreSQL server binaries not found; install {PACKAGE_HINT}"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return f"running as root and there is no `postgres` user; install {PACKAGE_HINT}"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One independent PostgreSQL instance (see the module's docstring)."""

    def __init__(self, base: str | os.PathLike, *, port: int | None = None,
                 settings: dict[str, str] | None = None, user: str = "olol") -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError(f"PostgreSQL server binaries not found; install {PACKAGE_HINT}")
        self.bindir = bindir
        self.user = user
        self.port = port or free_port()
        self.settings = dict(FAST_SETTINGS if settings is None else settings)
        self._as_root = os.geteuid() == 0
        # The socket's path must stay short (about 100 bytes) and, as root, the
        # postgres user must reach the folder (pytest's tmp_path is root-only).
        where = None if self._as_root or len(str(base)) > 60 else str(base)
        self.root = Path(tempfile.mkdtemp(prefix="olol-pg-", dir=where))
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.running = False

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def dsn(self) -> str:
        """DSN of the ``postgres`` maintenance database."""
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             cwd=self.root)
        if res.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed ({res.returncode}): {res.stderr.strip()}\n"
                               f"{tail}")
        return res

    def init(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.user,
                  "-E", "UTF8", "--locale=C", "--no-sync")

    def start(self, timeout: float = 60.0) -> PgServer:
        """Start the server (initialising its folder the first time); returns once it
        accepts connections, or raises after ``timeout`` seconds."""
        self.init()
        opts = [f"-p {self.port}", f"-k {self.root}", "-c listen_addresses=127.0.0.1"]
        opts += [f"-c {k}={v}" for k, v in self.settings.items()]
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", str(int(timeout)), "-o", " ".join(opts), timeout=timeout + 10)
        self.running = True
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"PostgreSQL on port {self.port} not ready: {exc}") \
                        from exc
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended). Safe twice."""
        if not self.running:
            return
        self.running = False
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60")

    def cleanup(self) -> None:
        """Stop the server and remove its folder."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ databases
    def create_database(self, name: str) -> str:
        """A fresh empty database (from template0); returns its DSN."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0")
                         .format(sql.Identifier(name)))
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
