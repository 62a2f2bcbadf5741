"""A sweep's Optuna storage: opening it, and riding through outages of the storage.

Every process of a sweep (driver, workers, tuning trials) opens its storage with
:func:`make_storage`. The storage it returns is a :class:`ResilientStorage`: every storage call
goes through one :class:`OutageGuard`, which retries a call that failed because the storage
was unreachable (the PostgreSQL server restarting or failing over, the journal file briefly
unwritable) with exponential backoff, logs one line when an outage starts and one when it ends,
and gives up with :class:`StorageUnavailable` only when the storage has been unreachable for
longer than the outage limit (the guard's ``limit_s``: ``--outage-limit``, default 300 s), which
the driver passes on to its workers and they to their trials. SQLAlchemy's ``pool_pre_ping``
replaces connections that died with the server.

Errors that are not about reachability (a finished trial updated, a missing study, bad data)
pass through unchanged.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Container, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.exceptions import ExperimentalWarning, StorageInternalError, UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import exc as sa_exc

from ..layout import DEFAULT_ROOT, SweepLayout

log = logging.getLogger("sweeps")

DEFAULT_OUTAGE_LIMIT_S = 300.0   # a managed database's restart or failover fits in this
JOURNAL_LOCK_GRACE_S = 60         # a journal lock file older than this (holder killed) is broken

T = TypeVar("T")


class StorageUnavailable(RuntimeError):
    """The storage stayed unreachable longer than the outage limit (or the process was asked
    to stop while waiting for it)."""


def parse_outage_limit(text: str | None) -> float:
    """An outage limit given as text (e.g. an environment variable's value): seconds, or
    :data:`DEFAULT_OUTAGE_LIMIT_S` when empty. ``ValueError`` for anything but a number."""
    v = (text or "").strip()
    try:
        return float(v) if v else DEFAULT_OUTAGE_LIMIT_S
    except ValueError:
        raise ValueError(f"the outage limit must be a number of seconds, got {v!r}") from None


# errnos of a journal file that cannot be read or written right now (permissions, a full or
# read-only file system, a file server away); ENOENT of a missing directory is not transient
_TRANSIENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EIO, errno.EAGAIN,
                     errno.ESTALE, errno.ETIMEDOUT, errno.EISDIR, errno.EBUSY, errno.EDQUOT}


def is_transient(e: BaseException) -> bool:
    """Whether ``e`` means "the storage is unreachable right now" (worth retrying)."""
    if isinstance(e, StorageInternalError):
        # optuna's RDB storage wraps every SQLAlchemy error in this; only connection trouble is transient
        cause = e.__cause__
        return cause is not None and is_transient(cause)
    if isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError,
                      sa_exc.TimeoutError)):
        return True
    if isinstance(e, sa_exc.PendingRollbackError):
        # a session reused after its connection dropped (optuna's _get_trials retries its query
        # in the same session, checked with optuna 5.0): transient when what it awaits was
        context = e.__cause__ or e.__context__
        return context is not None and is_transient(context)
    if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
        return True
    if isinstance(e, OSError):
        return e.errno in _TRANSIENT_ERRNOS
    return False


def _first_line(e: BaseException) -> str:
    text = str(e.__cause__ or e).strip().splitlines()
    return f"{type(e.__cause__ or e).__name__}: {text[0][:160] if text else ''}"


class OutageGuard:
    """Runs storage calls, retrying through an outage of up to ``limit_s`` seconds.

    One guard per process: an outage is one period during which calls fail, whichever thread
    makes them, so it is logged once and the limit counts from its first failure. Reads and
    writes are told apart (``write``): a journal file that cannot be written can still be read,
    and a successful read does not end an outage of writes (nor the reverse).
    ``should_stop`` (e.g. "Ctrl-C was pressed") ends the wait early. ``clock`` (seconds, only
    differences count) and ``sleep`` are the time the guard measures and waits in: tests pass
    their own to drive an outage without waiting for it."""

    def __init__(self, label: str, limit_s: float = DEFAULT_OUTAGE_LIMIT_S,
                 should_stop: Callable[[], bool] | None = None, max_delay_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.label = label
        self.limit_s = float(limit_s)
        self.should_stop = should_stop
        self.max_delay_s = max_delay_s
        self.clock = clock
        self.sleep = sleep
        self.down_since: float | None = None
        self.down_kinds: set[bool] = set()  # which kinds of call (write: True, read: False) fail now
        self.up_since: float | None = None   # end of the last outage (None: none yet)
        self.outages = 0
        self._lock = threading.Lock()
        self._local = threading.local()

    @contextmanager
    def no_wait(self) -> Iterator[None]:
        """Calls in this block (this thread) do not wait for the storage: an unreachable storage
        raises :class:`StorageUnavailable` at once (progress lines, which the next poll redoes)."""
        self._local.no_wait = True
        try:
            yield
        finally:
            self._local.no_wait = False

    def _failed(self, e: BaseException, write: bool) -> float:
        """Note a transient failure; returns seconds the outage has lasted."""
        now = self.clock()
        with self._lock:
            self.down_kinds.add(write)
            if self.down_since is None:
                self.down_since = now
                self.outages += 1
                log.warning("storage %s unreachable (%s); retrying for up to %.0f s", self.label, _first_line(e),
                            self.limit_s)
            return now - self.down_since

    def _ok(self, write: bool) -> None:
        if self.down_since is None or write not in self.down_kinds:
            return
        with self._lock:
            self.down_kinds.discard(write)
            if self.down_since is not None and not self.down_kinds:
                self.up_since = self.clock()
                log.warning("storage %s reachable again after %.0f s", self.label, self.up_since - self.down_since)
                self.down_since = None

    def seconds_since_outage(self) -> float:
        """Seconds the storage has been reachable since this process's last outage (inf: none
        seen; 0: unreachable now)."""
        if self.down_since is not None:
            return 0.0
        return float("inf") if self.up_since is None else self.clock() - self.up_since

    def call(self, fn: Callable[..., T], *args: Any, write: bool = True, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried while the storage is unreachable; ``write``: whether
        the call changes the storage."""
        delay = 0.25
        waiting_since = None
        while True:
            try:
                out = fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 (classified just below)
                if not is_transient(e):
                    raise
                lasted = self._failed(e, write)
                if getattr(self._local, "no_wait", False):
                    raise StorageUnavailable(f"the storage {self.label} is unreachable") from None
                waiting_since = self.clock() if waiting_since is None else waiting_since
                # an outage first seen long ago (by a heartbeat) may be nearly over: every call
                # still waits a while itself before giving up
                if lasted > self.limit_s and self.clock() - waiting_since >= min(self.limit_s, 60.0):
                    raise StorageUnavailable(f"the storage {self.label} has been unreachable for {lasted:.0f} s "
                                             f"(limit {self.limit_s:.0f} s, SWEEP_OUTAGE_LIMIT_S): "
                                             f"{_first_line(e)}") from None
                if self.should_stop is not None and self.should_stop():
                    raise StorageUnavailable(f"stopped while the storage {self.label} was unreachable") from None
                self.sleep(delay)
                delay = min(delay * 2, self.max_delay_s)
                continue
            self._ok(write)
            return out

    def try_once(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> bool:
        """One attempt of a write, no waiting (heartbeats): False when the storage is unreachable."""
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            if not is_transient(e):
                raise
            self._failed(e, True)
            return False
        self._ok(True)
        return True


class ResilientStorage(BaseStorage):
    """An Optuna storage that sends every call through an :class:`OutageGuard`.

    Optuna's ``Study`` and ``Trial`` call their storage for everything (``tell``,
    ``enqueue_trial``, ``set_user_attr``, ``report``), so wrapping the storage makes all of
    them ride through an outage, one storage call at a time: a ``tell`` interrupted between
    its calls resumes where it stopped instead of being repeated."""

    def __init__(self, inner: BaseStorage, guard: OutageGuard):
        self.inner = inner
        self.guard = guard

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.guard.call(getattr(self.inner, name), *args, write=not name.startswith("get_"), **kwargs)

    # -- studies --
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self._call("create_new_study", directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self._call("delete_study", study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._call("set_study_user_attr", study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._call("set_study_system_attr", study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._call("get_study_id_from_name", study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._call("get_study_name_from_id", study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._call("get_study_directions", study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call("get_study_user_attrs", study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call("get_study_system_attrs", study_id)

    def get_all_studies(self) -> list[Any]:  # optuna FrozenStudy (not exported)
        return self._call("get_all_studies")

    # -- trials --
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._call("create_new_trial", study_id, template_trial)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: optuna.distributions.BaseDistribution) -> None:
        self._call("set_trial_param", trial_id, param_name, param_value_internal, distribution)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._call("get_trial_id_from_study_id_trial_number", study_id, trial_number)

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self._call("get_trial_number_from_id", trial_id)

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self._call("get_trial_param", trial_id, param_name)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        outages = self.guard.outages
        try:
            return self._call("set_trial_state_values", trial_id, state, values)
        except UpdateFinishedTrialError:
            # the call may have been committed just before the connection dropped, and its retry
            # then finds the trial finished: done, if it is finished in the state we asked for
            if self.guard.outages != outages and state.is_finished() and self.get_trial(trial_id).state == state:
                return True
            raise

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._call("set_trial_intermediate_value", trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._call("set_trial_user_attr", trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._call("set_trial_system_attr", trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._call("get_trial", trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._call("get_all_trials", study_id, deepcopy=deepcopy, states=states)

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        return self._call("get_n_trials", study_id, state)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._call("get_best_trial", study_id)

    def remove_session(self) -> None:
        self.inner.remove_session()

    def try_set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> bool:
        """One attempt, no waiting (heartbeats): False when the storage is unreachable."""
        return self.guard.try_once(self.inner.set_trial_user_attr, trial_id, key, value)


# --- opening a storage -----------------------------------------------------------------------

def is_rdb_url(url: str | None) -> bool:
    return bool(url) and "://" in str(url) and not str(url).startswith("journal://")


def journal_path(sweep_name: str, root: str | os.PathLike = DEFAULT_ROOT, url: str | None = None) -> Path:
    """The journal file of a study: ``url`` when it names one (a path or ``journal://path``),
    else the sweep's own (:attr:`sweeps.layout.SweepLayout.journal`)."""
    if url:
        u = str(url)
        return Path(u[len("journal://"):] if u.startswith("journal://") else u)
    return SweepLayout(sweep_name, root).journal


def rdb_url(url: str) -> str:
    """``postgresql://`` picks a driver that is installed: recent SQLAlchemy defaults to
    psycopg 3, while the ``postgres`` extra installs psycopg2-binary."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        rest = url.split("://", 1)[1]
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + rest
        return "postgresql://" + rest
    return url


class StorageDriverMissing(ImportError):
    """A storage URL whose database driver is not installed (the message names the extra)."""


def require_postgres_driver(url: str) -> None:
    """A ``postgresql://`` URL needs a driver, psycopg2 from the optional ``postgres`` extra (or
    psycopg 3): without one, an error that says what to install, rather than SQLAlchemy's
    ``No module named 'psycopg2'``. A URL naming its driver (``postgresql+pg8000://``) is left
    to SQLAlchemy."""
    if url.startswith(("postgresql://", "postgres://")) and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is None:
        raise StorageDriverMissing(f"PostgreSQL storage ({_redacted(url)}) needs a PostgreSQL driver, which is not "
                          "installed: install the `postgres` extra (pip install -e '.[postgres]')")


def storage_label(url: str | None, sweep_name: str, root: str | os.PathLike = DEFAULT_ROOT) -> str:
    """What to pass to optuna-dashboard for this storage."""
    return rdb_url(str(url)) if is_rdb_url(url) else str(journal_path(sweep_name, root, url))


def _redacted(url: str) -> str:
    """The URL without its password (for log lines)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}@{host}"
    return url


def make_storage(url: str | None, sweep_name: str, root: str | os.PathLike = DEFAULT_ROOT,
                 guard: OutageGuard | None = None) -> ResilientStorage:
    """``None``/empty: the journal file ``results/<sweep>/optuna.journal``; a path or
    ``journal://path``: that journal file; ``postgresql://``/``mysql://``/``sqlite://``: an RDB
    storage. Either way wrapped in a :class:`ResilientStorage` (``guard``: the process's
    :class:`OutageGuard`; a new one by default). Opening waits for the storage like any call."""
    if is_rdb_url(url):
        u = str(url)
        require_postgres_driver(u)
        guard = guard or OutageGuard(_redacted(u))
        if u.startswith("sqlite"):
            warnings.warn("SQLite storage is not for parallel workers (database locks); use the default "
                          "journal file on one machine or PostgreSQL across machines", stacklevel=2)
            engine: dict[str, Any] = {}
        else:
            # pre-ping: a pooled connection that died with a server restart is replaced, not used;
            # connect_timeout: a server that is away (not refusing) fails a connect in 10 s, not minutes
            engine = {"pool_pre_ping": True}
            if u.startswith("postgres"):
                engine["connect_args"] = {"connect_timeout": 10}
        inner: BaseStorage = guard.call(optuna.storages.RDBStorage, rdb_url(u), engine_kwargs=engine)
        return ResilientStorage(inner, guard)
    path = journal_path(sweep_name, root, url)
    guard = guard or OutageGuard(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    return ResilientStorage(guard.call(_journal_storage, path), guard)


def _journal_storage(path: Path) -> JournalStorage:
    with warnings.catch_warnings():
        # the journal file's lock classes are "experimental" in some optuna releases (5.0); noise here
        warnings.filterwarnings("ignore", category=ExperimentalWarning)
        lock = JournalFileOpenLock(str(path), grace_period=JOURNAL_LOCK_GRACE_S)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
