"""Dynamic batching for one model instance, and the decode loop that interleaves generation streams.

:class:`Batcher`: each request puts its inputs on one queue; a single worker takes a batch (up to ``max_batch``
inputs) and runs it on the inference thread while the event loop goes on reading, parsing and tokenising the next
requests, so those overlap the model. The batch is what queued while the previous one ran: when the queue is empty
the first input goes at once (a lone request pays no wait); when others are queued, the worker waits at most
``max_wait_ms`` for the batch to fill. A request with more inputs than ``max_batch`` spans several batches.

:class:`Decoder`: generation streams share one thread that runs one decode step per active stream per round, so a
new request starts within one round of the others' steps instead of waiting for whole generations.
"""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


class Batcher:
    """Groups queued inputs into batches for ``run_batch`` (a list of encoded items -> one result per item)."""

    def __init__(self, run_batch: Callable[[list[Any]], list[Any]], max_batch: int, max_wait_ms: float,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, items: list[Any]) -> list[Any]:
        """Results for ``items``, in order (each may come from a different batch)."""
        assert self._queue is not None, "Batcher.start() first"
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, fut in zip(items, futures):
            self._queue.put_nowait((item, fut))
        return list(await asyncio.gather(*futures))

    async def _take(self) -> list[tuple[Any, asyncio.Future]]:
        queue = self._queue
        batch = [await queue.get()]
        if queue.empty():
            return batch  # nobody else is waiting: no reason to delay this one
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._take()
            live = [(item, fut) for item, fut in batch if not fut.done()]  # a timed-out request's inputs are skipped
            if not live:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [item for item, _ in live])
            except Exception as e:  # noqa: BLE001 - a failing batch fails its requests, never the server
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            if self.on_batch is not None:
                self.on_batch(len(live), time.perf_counter() - started)
            for (_, fut), result in zip(live, results):
                if not fut.done():
                    fut.set_result(result)


# ---- generation ------------------------------------------------------------------------------------------------

@dataclass
class Stream:
    """One generation request: the token ids so far, sampling settings, and where its tokens go."""

    prompt: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_ids: set[int] = field(default_factory=set)
    forced_first: int | None = None
    """a token the model's generation config forces first (BART's ``forced_bos_token_id``), as ``generate`` does"""
    forced_last: int | None = None
    """``forced_eos_token_id``: the last allowed step ends the sequence instead of adding a token, as ``generate``
    does (so a cut translation matches eval's)"""
    emit: Callable[[int | None, str | None], None] = lambda token, finish: None
    """called from the decode thread with each new token id (finish None), then once with (None, reason)"""
    cancelled: bool = False
    state: Any = None
    produced: int = 0
    rng: np.random.Generator | None = None


def pick(logits: np.ndarray, s: Stream) -> int:
    """The next token: greedy at temperature 0, else sampled with top-k / top-p (nucleus) filtering."""
    if s.temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / s.temperature
    if s.top_k:
        k = min(int(s.top_k), z.size)
        cut = np.partition(z, -k)[-k]
        z = np.where(z < cut, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if s.top_p is not None and s.top_p < 1.0:
        order = np.argsort(-p)
        keep = np.cumsum(p[order]) - p[order] < s.top_p  # the smallest set whose mass reaches top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    if s.rng is None:
        s.rng = np.random.default_rng(s.seed)
    return int(s.rng.choice(p.size, p=p))


class Decoder:
    """A thread that advances every active stream by one token per round through ``step``."""

    def __init__(self, step: Callable[[np.ndarray, Any], tuple[np.ndarray, Any]],
                 on_step: Callable[[float], None] | None = None) -> None:
        self.step = step
        self.on_step = on_step
        self._streams: list[Stream] = []
        self._lock = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="decoder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._thread.join(timeout=30)

    def add(self, stream: Stream) -> None:
        with self._lock:
            self._streams.append(stream)
            self._lock.notify_all()

    @property
    def active(self) -> int:
        return len(self._streams)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._streams and not self._stopping:
                    self._lock.wait()
                if self._stopping and not self._streams:
                    return
                current = list(self._streams)
            for s in current:
                finish = self._advance(s)
                if finish is not None:
                    with self._lock:
                        self._streams.remove(s)
                    s.emit(None, finish)

    def _advance(self, s: Stream) -> str | None:
        started = time.perf_counter()
        finish = advance(self.step, s)
        if self.on_step is not None and finish is None:
            self.on_step(time.perf_counter() - started)
        return finish


def advance(step: Callable[[np.ndarray, Any], tuple[np.ndarray, Any]], s: Stream) -> str | None:
    """One decode step of ``s``: the prompt on its first call, then the last token with the cache. Emits the new
    token; returns why the stream finished ("stop", "length", "cancelled", "error: ..."), or None."""
    if s.cancelled:
        return "cancelled"
    ids = np.asarray(s.prompt if s.state is None else [s.prompt[-1]], dtype=np.int64)
    try:
        logits, s.state = step(ids, s.state)
    except Exception as e:  # noqa: BLE001 - a failing stream ends with the error, the others go on
        return f"error: {type(e).__name__}: {e}"
    token = s.forced_first if s.produced == 0 and s.forced_first is not None else pick(np.asarray(logits), s)
    s.produced += 1
    if s.forced_last is not None and s.produced >= s.max_new_tokens:
        return "length"
    if token in s.stop_ids:
        return "stop"
    s.prompt.append(token)
    s.emit(token, None)
    if s.produced >= s.max_new_tokens:
        return "length"
    return None
