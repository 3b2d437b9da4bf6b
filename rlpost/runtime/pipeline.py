"""Experience made ahead of the learner: the one-step-off (k-steps-off) rollout pipeline.

With ``ahead = k > 0`` one background thread owns the rollout engines' timeline. It produces the
batches of steps t+1 … t+k while the learner trains on step t, and every other engine call the
loop makes (weight sync, in-loop evaluation) is queued on the same thread, so a sync lands
between two generation calls, never inside one, and nothing in flight is dropped. A batch is
therefore made by weights at most k syncs old. With ``ahead = 0`` everything runs in the
caller's thread: the synchronous loop, call for call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("rlpost")


class Pipeline(Generic[T]):
    def __init__(self, produce: Callable[[int], T], ahead: int, end: int) -> None:
        """``produce(step)`` makes step's batch (0-based); no step at or past ``end`` is made."""
        self.produce, self.ahead, self.end = produce, ahead, end
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="rlpost-rollout") if ahead else None
        self._pending: dict[int, Future] = {}
        self._next = -1  # the next step to submit (set by the first get)

    def get(self, step: int) -> T:
        """Step's batch; first queues the production of the steps up to ``step + ahead``."""
        if self._pool is None:
            return self.produce(step)
        if self._next < 0:
            self._next = step
        while self._next <= min(step + self.ahead, self.end - 1):
            self._pending[self._next] = self._pool.submit(self.produce, self._next)
            self._next += 1
        if step not in self._pending:
            raise RuntimeError(f"pipeline: step {step} was never queued (next is {self._next})")
        return self._pending.pop(step).result()

    def between_calls(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the engines' timeline: after the productions already queued."""
        if self._pool is None:
            return fn(*args)
        return self._pool.submit(fn, *args).result()

    @property
    def in_flight(self) -> list[int]:
        """Steps queued or being produced, not yet handed to the learner."""
        return sorted(self._pending)

    def close(self) -> None:
        """Cancel what has not started; wait for the call in progress (its result is dropped)."""
        if self._pool is None:
            return
        for fut in self._pending.values():
            fut.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for step, fut in self._pending.items():
            if fut.done() and not fut.cancelled() and fut.exception() is not None:
                log.info("dropped step %d's batch made ahead: %s", step, fut.exception())
        self._pending.clear()
