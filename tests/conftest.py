"""Shared fixtures of the sweep tests: a PostgreSQL server of the test's own (so a test can stop
and restart it), and a journal file that can be made unwritable for a while."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("SWEEP_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL server on a free port, run as the ``postgres`` user when this is
    root (``initdb`` refuses root)."""

    data: Path
    port: int
    as_user: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.as_user, str(PG_BIN / "pg_ctl"), "-D", str(self.data / "db"), *args], check=True,
                       capture_output=True, timeout=60)

    def start(self) -> None:
        self._ctl("-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1", "-l",
                  str(self.data / "server.log"), "-w", "start")

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as in a server restart or failover."""
        self._ctl("-m", "fast", "-w", "stop")


@pytest.fixture
def pg_server() -> Iterator[PostgresServer]:
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} (set SWEEP_TEST_PG_BIN)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install -e .[test])")
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="sweeps-pg-"))
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start a PostgreSQL server as 'postgres'")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(data, "postgres")
    subprocess.run([*as_user, str(PG_BIN / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True, timeout=120)
    server = PostgresServer(data, free_port(), as_user)
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop()
        except subprocess.SubprocessError:
            pass
        shutil.rmtree(data, ignore_errors=True)


class FrozenFile:
    """Makes a file unwritable and writable again: ``chmod a-w`` for a normal user, the
    immutable attribute (``chattr +i``) for root, whom permissions do not stop."""

    def __init__(self, path: Path):
        self.path = path
        self.mode = path.stat().st_mode

    def freeze(self) -> None:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i", str(self.path)], check=True, capture_output=True)
        else:
            self.path.chmod(0o444)

    def thaw(self) -> None:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(self.path)], check=True, capture_output=True)
        else:
            self.path.chmod(self.mode)


@pytest.fixture
def freezable():
    """``freezable(path)`` -> a :class:`FrozenFile`; skips where a file cannot be made
    unwritable (root without the immutable attribute); thaws every file at the end."""
    made: list[FrozenFile] = []

    def make(path: Path) -> FrozenFile:
        f = FrozenFile(Path(path))
        try:
            f.freeze()
            try:
                with open(path, "ab"):
                    pass
                writable = True
            except OSError:
                writable = False
            f.thaw()
        except (OSError, subprocess.SubprocessError) as e:
            pytest.skip(f"cannot make {path} unwritable here: {e}")
        if writable:
            pytest.skip(f"cannot make {path} unwritable here (the file system ignores it)")
        made.append(f)
        return f

    yield make
    for f in made:
        try:
            f.thaw()
        except (OSError, subprocess.SubprocessError):
            pass


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll ``predicate`` (a check of storage or disk state) until it returns a true value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def lstsq_vs_reference(d, reference: str, treatment: str = "variant", block: str = "seed", response: str = "y"
                       ) -> dict[str, tuple[float, float, float, float]]:
    """Independent check of a blocked model (response ~ treatment + block): treatment -> (difference
    to ``reference``, its SE, residual df, residual SD), by numpy least squares on a hand-built
    dummy-coded design matrix. ``d``: a DataFrame with one row per result."""
    import numpy as np

    others = [t for t in dict.fromkeys(d[treatment]) if t != reference]
    blocks = sorted(set(d[block]))[1:]
    x = np.column_stack([np.ones(len(d))] + [(d[treatment] == t).to_numpy(float) for t in others]
                        + [(d[block] == b).to_numpy(float) for b in blocks])
    y = d[response].to_numpy(float)
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    dof = len(d) - x.shape[1]
    sigma2 = float(((y - x @ beta) ** 2).sum() / dof)
    cov = sigma2 * np.linalg.inv(x.T @ x)
    return {t: (float(beta[i]), float(np.sqrt(cov[i, i])), dof, float(np.sqrt(sigma2)))
            for i, t in enumerate(others, start=1)}


def sweep_file_error(raw) -> str:
    """The one-line error of a sweep document that :func:`sweeps.definition.parse_sweep` refuses
    (read from ``x.yaml``): the CLI prints it as ``error: ...``."""
    import pytest

    from sweeps.definition import SweepConfigError, parse_sweep

    with pytest.raises(SweepConfigError) as e:
        parse_sweep(raw, src="x.yaml")
    msg = str(e.value)
    assert msg.startswith("x.yaml: ") and "\n" not in msg
    return msg
