"""Generation as jobs: one worker thread per model runs one job at a time from a bounded queue,
off the event loop, so a long generation never blocks a request, and two requests never share a
sampler's state.

A job's ``work(step)`` calls ``step(i, total, x0)`` between sampler steps (the samplers' callback).
Cancelling a queued job ends it at once; cancelling a running one marks it ``cancelling`` and the
next ``step`` raises :class:`Cancelled`, so it stops when the step it is in ends.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from difflab.serve import limits

log = logging.getLogger("difflab.serve")

QUEUED, RUNNING, CANCELLING, CANCELLED, DONE, FAILED = (
    "queued", "running", "cancelling", "cancelled", "done", "failed")
FINAL = (CANCELLED, DONE, FAILED)
PREVIEW_EVERY_S = 0.15  # at most this often a predicted-x0 preview is made


class Cancelled(Exception):
    """Raised inside a job's work between two steps once the job is cancelled."""


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the queue of this model is full; try again in {retry_after} s")
        self.retry_after = retry_after


Step = Callable[[int, int, Tensor], None]
Work = Callable[[Step], Any]


@dataclass
class Job:
    """One generation or edit: its parameters, state, progress and results."""

    model: str
    kind: str
    params: dict[str, Any]
    work: Work
    previewer: Callable[[Tensor], bytes] | None = None
    commands: list[str] = field(default_factory=list)  # the command line reproducing each image
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = QUEUED
    step: int = 0
    total: int = 0
    error: str | None = None
    result: Any = None
    preview: bytes | None = None
    version: int = 0  # bumped on every change, for the event streams
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    _last_preview: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def _set(self, **changes: Any) -> None:
        with self._lock:
            for k, v in changes.items():
                setattr(self, k, v)
            self.version += 1

    def cancel(self) -> str:
        """Ask the job to stop: at once if queued, after the current step if running."""
        with self._lock:
            if self.state == QUEUED:
                self.state, self.finished = CANCELLED, time.monotonic()
            elif self.state == RUNNING:
                self.state = CANCELLING
            self.version += 1
            return self.state

    def on_step(self, i: int, total: int, x0: Tensor) -> None:
        """The sampler's callback: progress, a preview now and then, and the cancel point."""
        if self.state == CANCELLING:
            raise Cancelled
        now = time.monotonic()
        preview = self.preview
        if self.previewer is not None and (now - self._last_preview >= PREVIEW_EVERY_S or i + 1 >= total):
            preview, self._last_preview = self.previewer(x0), now
        self._set(step=min(i + 1, total), total=total, preview=preview)
        if self.state == CANCELLING:
            raise Cancelled

    def status(self) -> dict[str, Any]:
        done = self.state == DONE
        images = len(self.result) if done and self.result is not None else 0
        return {"id": self.id, "model": self.model, "kind": self.kind, "state": self.state,
                "step": self.step, "total": self.total,
                "progress": round(self.step / self.total, 4) if self.total else (1.0 if done else 0.0),
                "error": self.error, "params": self.params, "commands": self.commands[:images],
                "images": [f"/api/jobs/{self.id}/images/{k}.png" for k in range(images)],
                "seconds": None if self.started is None else round((self.finished or time.monotonic())
                                                                  - self.started, 3)}


class ModelWorker:
    """One thread running one model's jobs in order, with at most ``size`` waiting."""

    def __init__(self, name: str, size: int = limits.QUEUE_SIZE) -> None:
        self.name = name
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=size)
        self.running: Job | None = None
        self.durations: list[float] = []
        self.thread = threading.Thread(target=self._loop, name=f"difflab-serve-{name}", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(self.retry_after()) from None

    def retry_after(self) -> int:
        """Seconds until a place frees: the mean of the last jobs' durations (1 s at least)."""
        recent = self.durations[-10:]
        return max(1, round(sum(recent) / len(recent))) if recent else 2

    def stop(self) -> None:
        self.queue.put(None)

    def _loop(self) -> None:
        while (job := self.queue.get()) is not None:
            if job.state != QUEUED:  # cancelled while waiting
                continue
            self.running = job
            job._set(state=RUNNING, started=time.monotonic())
            try:
                result = job.work(job.on_step)
                job._set(state=DONE, result=result, step=job.total)
            except Cancelled:
                job._set(state=CANCELLED)
            except (ValueError, LookupError) as err:
                job._set(state=FAILED, error=str(err))
            except Exception as err:  # the server stays up; the log has the traceback
                log.exception("job %s failed", job.id)
                job._set(state=FAILED, error=f"internal error ({type(err).__name__}); see the server log")
            finally:
                job._set(finished=time.monotonic())
                self.durations = [*self.durations[-9:], job.finished - (job.started or job.finished)]
                self.running = None


class JobBoard:
    """All jobs by id (finished ones kept up to ``keep``, the oldest dropped first) and one
    worker per model."""

    def __init__(self, models: list[str], queue_size: int = limits.QUEUE_SIZE, keep: int = limits.KEEP_JOBS
                 ) -> None:
        self.workers = {m: ModelWorker(m, queue_size) for m in models}
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.keep = keep
        self._lock = threading.Lock()

    def submit(self, job: Job) -> Job:
        with self._lock:
            self.jobs[job.id] = job
        try:
            self.workers[job.model].submit(job)
        except QueueFull:
            with self._lock:
                del self.jobs[job.id]
            raise
        with self._lock:
            finished = [k for k, j in self.jobs.items() if j.final]
            for k in finished[: max(0, len(finished) - self.keep)]:
                del self.jobs[k]
        return job

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise LookupError(f"no job {job_id[:40]!r} (finished jobs are kept for the last {self.keep})")
        return job

    def busy(self) -> dict[str, dict[str, Any]]:
        return {m: {"running": None if w.running is None else w.running.id, "waiting": w.queue.qsize(),
                    "queue_size": w.queue.maxsize} for m, w in self.workers.items()}

    def close(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel()
        for w in self.workers.values():
            w.stop()
