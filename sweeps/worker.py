"""A sweep worker: ``python -m sweeps _worker <args>``, started by the driver with its devices
already pinned (``CUDA_VISIBLE_DEVICES`` in its environment before Python starts).

Loop: reap dead trials -> claim a WAITING grid trial -> run it in a child process
(``python -m sweeps _trial``) while beating a heartbeat -> tell Optuna. Stops when no trial is
WAITING (running nothing), or on SIGINT/SIGTERM (the running trial is failed as "interrupted"
and re-queued without using up a retry; its checkpoint is kept, so it resumes).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from . import study as S
from .definition import SweepDef
from .record import TrialRecord, read_record, write_record
from .trial import build_cli_args, git_commit

log = logging.getLogger("sweeps")


def _set_pdeathsig() -> None:
    """Child dies with its parent (Linux): a SIGKILLed worker does not leave an orphan fit."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


def popen_child(cmd: list[str], env: dict[str, str], log_path: Path | None = None, new_group: bool = False) -> subprocess.Popen:
    out = open(log_path, "ab") if log_path else None  # noqa: SIM115
    try:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None,
                                start_new_session=new_group)
    finally:
        if out:
            out.close()


class Worker:
    def __init__(self, sweep: SweepDef, storage_url: str | None, study_name: str, results_root: str,
                 devices_per_trial: int = 1, worker_index: int = 0):
        self.sweep = sweep
        self.storage_url = storage_url
        self.rdb = S.is_rdb_url(storage_url)
        self.results_root = results_root
        self.storage = S.make_storage(storage_url, sweep.name, results_root, sweep.max_retries)
        self.study = S.load_study(self.storage, study_name)
        self.study_name = study_name
        self.devices_per_trial = devices_per_trial
        self.worker_index = worker_index
        self.res_dir = S.results_dir(sweep.name, results_root)
        self.pid = os.getpid()
        self.start = S.process_start_time(self.pid)
        self.stop = False
        self._first_signal = 0.0
        self.child: subprocess.Popen | None = None

    @property
    def git(self) -> str | None:
        """The commit (``-dirty`` with uncommitted changes) when a trial is handed out, not when
        the worker started: code changed during a long sweep is recorded as what the trial ran."""
        return git_commit()

    # -- signals ---------------------------------------------------------------------------

    def _on_signal(self, signum, frame):
        """First signal: stop after the running trial, passing SIGINT on to it (Lightning shuts
        down gracefully). Second signal: kill the trial. Never raises inside storage writes."""
        now = time.time()
        first = not self.stop
        if not first and now - self._first_signal < 3.0:
            return  # the same Ctrl-C reaching us twice (process group + driver)
        self._first_signal = now if first else self._first_signal
        self.stop = True
        child = self.child
        if child is not None and child.poll() is None:
            try:
                child.send_signal(signal.SIGINT if first else signal.SIGKILL)
            except OSError:
                pass

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        while not self.stop:
            S.reap(self.study, self.sweep, self.rdb)
            if self.stop:
                break
            trial = S.pop_waiting(self.study)
            if trial is None:
                break
            try:
                self.run_trial(trial)
            except Exception as e:  # noqa: BLE001  (the worker's own failure: fail + retry the trial, go on)
                log.exception("worker error on trial %d", trial.number)
                try:
                    frozen = self.study._storage.get_trial(trial._trial_id)
                    final = S.total_retries(frozen) + 1 > self.sweep.max_retries
                    if S.fail_trial(self.study, trial._trial_id, f"worker error: {e!r}", final=final):
                        S.enqueue_retry(self.study, frozen, f"worker error: {e!r}", self.sweep.max_retries)
                except Exception:  # noqa: BLE001
                    log.exception("could not fail trial %d", trial.number)
        return 130 if self.stop else 0

    # -- one trial ------------------------------------------------------------------------
    def _claim(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        st = self.study._storage
        tid = trial._trial_id
        # claimed_at last: until it is set, the reaper ignores worker attrs (they may be an old owner's)
        for k, v in {"worker_host": S.HOST, "worker_pid": self.pid, "worker_start": self.start,
                     "heartbeat": time.time(), "devices": os.environ.get("CUDA_VISIBLE_DEVICES") or "cpu",
                     "worker_index": self.worker_index, "claimed_at": time.time()}.items():
            st.set_trial_user_attr(tid, k, v)
        frozen = st.get_trial(tid)
        attrs = frozen.user_attrs
        params = json.loads(attrs["grid_params"])
        # record the grid point as Optuna params (visible in the dashboard, copied on retry)
        # (the whole axis as choices: Optuna needs one value space per param name in a study)
        for k, v in S.encode_params(params).items():
            choices = [S.encode_value(x) for x in self.sweep.grid.get(k, [v])]
            trial.suggest_categorical(k, choices if v in choices else [v])
        return attrs

    def _heartbeat_loop(self, study: optuna.Study, trial_id: int, done: threading.Event) -> None:
        if self.rdb:
            study._storage.record_heartbeat(trial_id)
        while not done.wait(S.HEARTBEAT_INTERVAL_S if not os.environ.get("SWEEP_FAST_HEARTBEAT") else 2):
            try:
                if self.rdb:
                    study._storage.record_heartbeat(trial_id)
                else:
                    study._storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
            except Exception as e:  # noqa: BLE001
                log.warning("heartbeat failed: %s", e)

    def trial_spec(self, trial: optuna.trial.Trial, attrs: dict[str, Any]) -> dict[str, Any]:
        from .definition import GridPoint
        point = GridPoint(json.loads(attrs["grid_params"]))
        run_dir = self.res_dir / "runs" / point.slug
        overrides = dict(self.sweep.overrides)
        overrides.update(json.loads(attrs.get("extra_overrides") or "{}"))
        overrides.update(point.params)
        overrides.setdefault("trainer.enable_progress_bar", False)
        if self.devices_per_trial > 1:
            overrides.setdefault("trainer.devices", self.devices_per_trial)
            overrides.setdefault("trainer.strategy", "ddp")
        return {"sweep": self.sweep.name, "grid_key": point.key, "variant": point.variant, "params": point.params,
                "seed": point.seed, "attempt": int(attrs.get("retries", 0)), "trial_number": trial.number,
                "run_dir": str(run_dir), "record_path": str(self.res_dir / "trials" / f"{point.slug}.json"),
                "cli_args": build_cli_args(self.sweep.base_config, overrides, run_dir), "measure": self.sweep.measure,
                "metric": self.sweep.metric, "git_commit": self.git, "results_root": self.results_root}

    def run_child(self, study: optuna.Study, tid: int, spec: dict[str, Any]) -> tuple[int, TrialRecord | None]:
        """Run ``python -m sweeps _trial`` for ``spec`` while beating the trial's heartbeat;
        returns (exit code, the record it wrote or None)."""
        run_dir = Path(spec["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        spec_path = run_dir / "trial_spec.json"
        spec_path.write_text(json.dumps(spec, indent=1))
        record_path = Path(spec["record_path"])
        if record_path.exists():  # a stale record of an earlier, failed attempt
            record_path.unlink()
        study._storage.set_trial_user_attr(tid, "run_dir", str(run_dir))
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        done = threading.Event()
        hb = threading.Thread(target=self._heartbeat_loop, args=(study, tid, done), daemon=True)
        hb.start()
        try:
            self.child = popen_child([sys.executable, "-m", "sweeps", "_trial", str(spec_path)], env,
                                     run_dir / "train.log")
            study._storage.set_trial_user_attr(tid, "trial_pid", self.child.pid)
            rc = self.child.wait()
        finally:
            done.set()
            self.child = None
        rec = None
        if record_path.exists():
            try:
                rec = read_record(record_path)
            except Exception as e:  # noqa: BLE001
                log.warning("unreadable record %s: %s", record_path, e)
        return rc, rec

    def run_trial(self, trial: optuna.trial.Trial) -> str:
        tid = trial._trial_id
        attrs = self._claim(trial)
        spec = self.trial_spec(trial, attrs)
        record_path = Path(spec["record_path"])
        log.info("trial %d: %s (attempt %d) -> %s", trial.number, spec["grid_key"], spec["attempt"], spec["run_dir"])
        rc, _ = self.run_child(self.study, tid, spec)
        if self.stop and not self._record_final(record_path, rc):
            # interrupted: failed as "interrupted", re-queued without using up a retry
            frozen = self.study._storage.get_trial(tid)
            if S.fail_trial(self.study, tid, "interrupted", final=False):
                S.enqueue_retry(self.study, frozen, "interrupted", self.sweep.max_retries, count=False)
            log.warning("trial %d interrupted; it resumes from its last checkpoint when the sweep is run again",
                        trial.number)
            return "interrupted"
        return self._finish(trial, rc, record_path, attrs, spec)

    @staticmethod
    def _record_final(record_path: Path, rc: int) -> bool:
        if rc != 0 or not record_path.exists():
            return False
        try:
            return read_record(record_path).status in ("complete", "pruned")
        except Exception:  # noqa: BLE001
            return False

    def _finish(self, trial, rc: int, record_path: Path, attrs: dict[str, Any], spec: dict[str, Any]) -> str:
        st = self.study._storage
        tid = trial._trial_id
        rec: TrialRecord | None = None
        if record_path.exists():
            try:
                rec = read_record(record_path)
            except Exception as e:  # noqa: BLE001
                log.warning("unreadable record %s: %s", record_path, e)
        if rec is not None and rc == 0:
            for k, v in {"status": rec.status, "reason": rec.reason, "value": rec.value,
                         "record_path": str(record_path)}.items():
                st.set_trial_user_attr(tid, k, v)
            st.set_trial_user_attr(tid, "record", {k[2:]: v for k, v in rec.user_attrs().items()})
            if rec.status == "complete":
                self.study.tell(trial, rec.value)
                log.info("trial %d complete: %s = %.4f", trial.number, rec.metric, rec.value)
                return "complete"
            if rec.status == "pruned":
                self.study.tell(trial, state=TrialState.PRUNED)
                return "pruned"
            # failed with a recorded reason: a divergence is deterministic and not retried
            st.set_trial_user_attr(tid, "fail_reason", rec.reason)
            st.set_trial_user_attr(tid, "final_failure", True)
            self.study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, rec.reason)
            return "failed"
        reason = f"trial process exited with {rc}" + (f" (signal {-rc})" if rc < 0 else "") + \
            f"; see {Path(spec['run_dir']) / 'train.log'}"
        if rec is not None and rec.reason:
            reason += f": {rec.reason}"
        frozen = st.get_trial(tid)
        final = S.total_retries(frozen) + 1 > self.sweep.max_retries
        if S.fail_trial(self.study, tid, reason, final=final):
            S.enqueue_retry(self.study, frozen, reason, self.sweep.max_retries)
            if final and rec is None:
                write_record(record_path, TrialRecord(
                    sweep=self.sweep.name, grid_key=spec["grid_key"], variant=spec["variant"],
                    params=json.loads(attrs["grid_params"]), seed=spec["seed"], status="failed", reason=reason,
                    attempt=spec["attempt"], trial_number=trial.number, host=S.HOST, cli_args=spec["cli_args"],
                    git_commit=spec.get("git_commit")))
        log.warning("trial %d failed: %s", trial.number, reason)
        return "failed"


def main(argv: list[str]) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m sweeps _worker")
    ap.add_argument("sweep_json")
    ap.add_argument("--storage", default=None)
    ap.add_argument("--study", required=True)
    ap.add_argument("--results-root", default="results")
    ap.add_argument("--devices-per-trial", type=int, default=1)
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--stage", choices=("grid", "tune"), default="grid")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"[worker {a.index}] %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep = SweepDef.from_dict(json.loads(Path(a.sweep_json).read_text()))
    w = Worker(sweep, a.storage or None, a.study, a.results_root, a.devices_per_trial, a.index)
    if a.stage == "tune":
        from .tune import tune_worker
        signal.signal(signal.SIGTERM, w._on_signal)
        signal.signal(signal.SIGINT, w._on_signal)
        return tune_worker(sweep, w)
    return w.run()
