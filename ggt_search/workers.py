"""Local worker processes for `search`, `ablate` and `evaluate`:
- `run_workers` starts them, each with its share of the CPU cores (training processes that
  each take every core run up to 8x slower side by side) and its GPU (round-robin);
- Ctrl-C or SIGTERM stops every worker: the trial each was training is recorded as FAIL
  ("stopped"), and every finished trial stays in the study;
- a parent that dies without a word (`kill -9`, which runs no handler) takes its workers with it:
  each watches its parent, and stops at once, leaving its trial RUNNING for the heartbeat to fail
  and retry (`exit_with_parent`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
from contextlib import contextmanager
from multiprocessing.connection import wait

import torch

from ggt_search import progress
from ggt_search.errors import UserError
from ggt_search.files import file_error


def cpu_share(workers: int) -> int:
    """Threads per worker: this machine's cores split evenly, at least one each."""
    return max(1, len(os.sched_getaffinity(0)) // workers)


def worker_devices(workers: int, device: str) -> list[str]:
    """Spread workers over the GPUs round-robin (several small trials share one GPU well)."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(workers)]
    return [device] * workers


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (once), so `kill PID` stops as cleanly as Ctrl-C."""

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop is enough; let the clean-up finish
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_workers(target, job, workers: int, device: str) -> None:
    """target(job, worker, device) in this process, or in `workers` spawned processes.

    Each spawned worker gets `cpu_share(workers)` threads. Stopping this process (Ctrl-C,
    SIGTERM) stops the workers, and waits for them to record their trials.
    """
    if workers == 1:
        with sigterm_as_interrupt():
            target(job, 0, device)
        return
    devices = worker_devices(workers, device)
    context = mp.get_context("spawn")
    processes = [
        context.Process(target=_worker_main, args=(target, job, i, devices[i], cpu_share(workers)), name=f"worker-{i}")
        for i in range(workers)
    ]
    with sigterm_as_interrupt():
        try:
            for process in processes:
                process.start()
            for process in processes:
                process.join()
        except KeyboardInterrupt:
            for process in processes:
                if process.is_alive():
                    process.terminate()  # SIGTERM: the worker records its trial as stopped, then exits
            for process in processes:
                process.join(timeout=120)
                if process.is_alive():
                    process.kill()
            raise
    failed = [f"worker {i} (exit code {p.exitcode})" for i, p in enumerate(processes) if p.exitcode != 0]
    if failed:
        raise UserError(
            f"{', '.join(failed)} stopped early; what it finished is recorded, and rerunning the command resumes"
        )


def exit_with_parent() -> None:
    """In a spawned worker: exit the moment the parent process dies. Its end of a pipe to this
    worker (multiprocessing's parent sentinel) closes then, however it died."""

    def watch(sentinel) -> None:
        wait([sentinel])
        os._exit(1)  # no clean-up: the parent is gone, and the trial's heartbeat stops with this process

    threading.Thread(target=watch, args=(mp.parent_process().sentinel,), daemon=True, name="parent-watch").start()


def _worker_main(target, job, worker: int, device: str, threads: int) -> None:
    exit_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the workers with SIGTERM
    torch.set_num_threads(threads)
    progress.LINE = worker
    try:
        with sigterm_as_interrupt():
            target(job, worker, device)
    except KeyboardInterrupt:
        sys.exit(130)
    except (UserError, OSError) as error:
        user_error = error if isinstance(error, UserError) else file_error(error)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr, flush=True)
        sys.exit(2)
