"""Worker processes on one machine sharing a study, and the count they stop at: a claim (a file
lock) held from deciding to start a trial until it is RUNNING, so that N workers never run past
the study's count."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
from pathlib import Path

import optuna
from tqdm.auto import tqdm

from workbench import tracking
from workbench.spec import ExperimentSpec, load_spec
from workbench.study.config import make_pruner, make_sampler, open_storage, storage_url
from workbench.study.objective import FINISHED_STATES, RUN_NAME, Objective


def cap_workers(spec: ExperimentSpec, remaining: int) -> ExperimentSpec:
    """No more worker processes than trials left to run or cores to run them on."""
    cap = max(1, min(remaining, os.cpu_count() or 1))
    if spec.study.workers <= cap:
        return spec
    print(
        f"study.workers: {spec.study.workers} capped to {cap} "
        f"({remaining} trials to run, {os.cpu_count()} cores)"
    )
    return dataclasses.replace(spec, study=dataclasses.replace(spec.study, workers=cap))


def optimize(
    spec: ExperimentSpec,
    study: optuna.Study,
    data,
    store,
    parent: str,
    n: int,
    count_running: bool = True,
    queued_only: bool = False,
) -> None:
    """Run up to ``n`` trials of ``study`` in this process; with ``queued_only`` (confirmations,
    reproductions) only enqueued ones: never a newly sampled configuration."""
    claim = NextTrialClaim(Path(spec.tracking.root) / f".{study.study_name}.claim.lock")
    stop_at_count = StopAtCount(spec.study.trials, count_running, claim, queued_only)
    collect = CollectBetweenTrials()
    review = []
    if spec.tracking.review:  # each trial's dashboard note as it ends
        from workbench.study.review import AnnotateEachTrial

        review = [AnnotateEachTrial(store)]
    try:
        # The first trial is counted like every later one: a worker that starts late (a slow
        # spawn on a loaded machine) must see the trials already running elsewhere.
        if stop_at_count.reached(study):
            return
        study.optimize(
            Objective(spec, data, store, parent, claim),
            n_trials=n,
            catch=(FloatingPointError,),  # a diverged trial is recorded FAILED; the study goes on
            # ``collect`` in place of Optuna's gc_after_trial (CollectBetweenTrials says why)
            callbacks=[*review, collect, stop_at_count, report_trial],
            show_progress_bar=spec.study.progress_bar and spec.study.workers == 1,
        )
    finally:
        collect.release()
        claim.release()


class CollectBetweenTrials:
    """Frees each finished trial's model, as Optuna's ``gc_after_trial`` does, without walking
    everything the process has imported after every trial.

    A trial's Lightning module and trainer refer to each other, so only the cycle collector frees
    them (and a GPU's memory with them). A full collection walks every tracked object: about
    640,000 once torch, Lightning and MLflow are imported, 0.35 s on the reference machine, a
    tenth of a small trial. After the first trial's collection the objects that survived it
    (modules, caches, the study) are frozen (``gc.freeze``): later collections walk only what
    later trials made. ``release()`` (the study's trials are over) returns them to the collector.

    Freezing is process-wide, so it happens only for a study in the main thread with nothing
    frozen already: a study a notebook runs in a thread (``background.StudyHandle``) would freeze
    the kernel's own objects with it, and another frozen heap is someone else's to release.
    Such a study collects in full after each trial, as Optuna does.
    """

    def __init__(self) -> None:
        import threading

        self.froze = False
        self.may_freeze = (
            threading.current_thread() is threading.main_thread() and gc.get_freeze_count() == 0
        )

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        gc.collect()
        if self.may_freeze and not self.froze:
            gc.freeze()
            self.froze = True

    def release(self) -> None:
        if self.froze:
            gc.unfreeze()
            self.froze = False


class NextTrialClaim:
    """A lock that the processes of one machine hold from deciding to start another trial until
    that trial is RUNNING in the storage, so that two workers ending trials at the same moment
    cannot both start one past the count. (Between machines that race remains.)"""

    def __init__(self, path: Path) -> None:
        self.path, self.fd = path, None

    def acquire(self) -> None:
        import fcntl

        if self.fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        import fcntl

        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class StopAtCount:
    """Stops this process once the study's finished trials, plus the trials other processes are
    running when ``count_running``, reach ``target``. Counting only finished trials (Optuna's
    ``MaxTrialsCallback``), each of N workers would start one more trial while the last ones
    run: up to N - 1 trials past the count."""

    def __init__(
        self, target: int, count_running: bool, claim: NextTrialClaim, queued_only: bool = False
    ) -> None:
        self.target, self.count_running, self.claim = target, count_running, claim
        self.queued_only = queued_only

    def reached(self, study: optuna.Study) -> bool:
        """Whether the count is reached; if not, this process holds the claim until its next
        trial is RUNNING (the objective releases it)."""
        counted = FINISHED_STATES
        if self.count_running:
            counted = (*FINISHED_STATES, optuna.trial.TrialState.RUNNING)
        self.claim.acquire()
        trials = study.get_trials(deepcopy=False)
        # A waiting trial (a dead worker's retry) is always run: it replaces a failed one.
        waiting = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
        reached = sum(t.state in counted for t in trials) >= self.target or self.queued_only
        if not waiting and reached:
            self.claim.release()
            return True
        return False

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.reached(study):
            study.stop()


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def count(study: optuna.Study, state: optuna.trial.TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=(state,)))


class Helpers:
    """Worker processes on this machine that run a study's trials beside this process, sharing
    the storage and the parent MLflow run, and then stay for the next study of the same command
    (its confirmation) instead of being spawned again: a spawned worker spends several seconds
    importing torch, Lightning and MLflow before its first trial (about 13 s of a 2-worker
    study's confirmation on the reference machine).

    ``run`` hands each helper a study; ``wait`` returns when every helper given one has run out
    of its trials, and raises if one died; ``close`` lets them exit; ``stop`` ends them now
    (SIGTERM: a running trial is recorded and its run closed). A helper whose parent process
    dies exits at its next hand-over (its end of the pipe closes).
    """

    def __init__(self, parent: str) -> None:
        self.parent = parent
        self._workers: list[tuple] = []  # (process, connection)
        self._busy: list[tuple] = []

    def __len__(self) -> int:
        return len(self._workers)

    def run(self, spec: ExperimentSpec, study_name: str | None = None) -> None:
        """``spec.study.workers - 1`` helpers run trials of ``study_name`` (default: the spec's
        study; another study's helpers run only its queued trials), started where missing."""
        import multiprocessing

        wanted = spec.study.workers - 1
        context = multiprocessing.get_context("spawn")
        for process, connection in [w for w in self._workers if not w[0].is_alive()]:
            process.join()  # died while idle (killed from outside): replaced below
            connection.close()
            self._workers.remove((process, connection))
        while len(self._workers) < wanted:
            here, there = context.Pipe()
            name = f"workbench-worker-{len(self._workers) + 1}"
            process = context.Process(target=_worker_main, args=(there,), name=name, daemon=False)
            process.start()
            there.close()
            self._workers.append((process, here))
        self._busy = self._workers[:wanted]
        for _, connection in self._busy:
            connection.send((spec.to_dict(), self.parent, study_name))

    def wait(self) -> None:
        """Until every helper given a study has finished it (or died); one that died raises
        once the others have finished theirs."""
        from multiprocessing.connection import wait

        failed = None
        for process, connection in self._busy:
            wait([connection, process.sentinel])
            try:
                connection.recv()  # "done"; at a dead helper's closed pipe, EOFError
            except EOFError:
                process.join()
                failed = failed or process
        self._busy = []
        if failed is not None:
            raise RuntimeError(
                f"a worker process failed (exit code {failed.exitcode}); "
                "re-run the same command to resume"
            )

    def stop(self) -> None:
        for process, _ in self._workers:
            if process.is_alive():
                process.terminate()  # SIGTERM: the running trial is recorded and its run closed
        self._join()

    def close(self) -> None:
        """Idle helpers exit; one still running a study (this process failed) is stopped."""
        busy = [process for process, _ in self._busy]
        for process, connection in self._workers:
            if process in busy and process.is_alive():
                process.terminate()
            elif process.is_alive():
                with contextlib.suppress(OSError):
                    connection.send(None)
        self._join()

    def _join(self) -> None:
        for process, connection in self._workers:
            process.join(timeout=60)
            connection.close()
        self._workers, self._busy = [], []


@contextlib.contextmanager
def share_cores(workers: int):
    """Each of ``workers`` processes gets its share of the cores for torch's thread pool: the
    main process too, or N workers of all-core thread pools fight over the same cores."""
    import torch

    before = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _worker_main(connection) -> None:
    """A helper: runs the studies it is handed, one after the other, until told to stop."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops workers on Ctrl-C
    data, data_of = None, None
    while True:
        try:
            job = connection.recv()
        except EOFError:  # the main process is gone
            return
        if job is None:
            leave_now(0)
        raw_spec, parent, study_name = job
        spec = load_spec(raw_spec)
        if data_of != (spec.data, spec.seed):  # a confirmation trains on the search's data
            data, data_of = _load_data(spec), (spec.data, spec.seed)
        _run_helper(spec, data, parent, study_name)
        connection.send("done")


def _load_data(spec: ExperimentSpec):
    from workbench.train import data_from_spec

    data = data_from_spec(spec)
    data.setup()
    return data


def _run_helper(spec: ExperimentSpec, data, parent: str, study_name: str | None) -> None:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.study.workers))
    study = open_study(spec, name=study_name)
    store = tracking.open_store(
        spec.tracking.root, spec.tracking.experiment, spec.tracking.mlflow_uri
    )
    missing = max(
        spec.study.trials - finished(study), count(study, optuna.trial.TrialState.WAITING)
    )
    if missing > 0:  # another study's (a confirmation's) workers run only its queued trials
        optimize(spec, study, data, store, parent, missing, queued_only=study_name is not None)


def report_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    value = ", ".join(f"{v:.4f}" for v in trial.values) if trial.values else "-"
    label = trial.user_attrs.get(RUN_NAME, f"trial {trial.number:3d}")  # or a confirmation's
    tqdm.write(
        f"{label} {trial.state.name:8s} value={value}  "
        + " ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
        )
    )


def open_study_storage(spec: ExperimentSpec) -> optuna.storages.RDBStorage:
    """The spec's Optuna storage, with heartbeats and retries for dead workers' trials."""
    return open_storage(storage_url(spec), spec.study.heartbeat_s, spec.study.retries)


def open_study(spec: ExperimentSpec, storage=None, name: str | None = None) -> optuna.Study:
    """The spec's study (or study ``name`` run by the spec, e.g. its confirmation)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [spec.study.direction, *spec.study.extra_objectives.values()]
    return optuna.create_study(
        study_name=name or spec.name,
        storage=storage or open_study_storage(spec),
        sampler=make_sampler(spec),  # seeded per trial: processes and resumes never repeat
        pruner=make_pruner(spec),
        directions=directions,
        load_if_exists=True,
    )


def leave_now(code: int) -> None:
    """End this process once its work is done, without Python's interpreter teardown.

    Everything the workbench writes is closed or committed by then. What Python does after
    that, releasing every object torch, Lightning and MLflow made, took 3.0-3.4 s at the end of
    a study on the reference machine (a 2-worker study waits for its helper's too). The
    interpreter's own first steps still run: thread pools are told to end and running threads
    joined, exit handlers run (logging, multiprocessing, MLflow), output is flushed; then the
    process exits with ``code``.
    """
    import atexit
    import sys
    import threading

    threading._shutdown()  # what the interpreter does first at exit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
