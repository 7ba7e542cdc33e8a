"""Overlapping work on the CPU's cores with threads, in order and with bounded memory.

OpenCV's decoders and encoders and MediaPipe's graphs release the GIL while they work, so a
thread that decodes the next frames while the caller detects or encodes the current one keeps a
second core busy. Results always come back in input order (outputs are deterministic), and at
most `depth` items are ever in flight (memory stays flat for any input length).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Decoded frames waiting between threads take at most about this much memory per queue: a few
# 1080p frames, one frame of a 64-megapixel photo (peak memory must not grow with frame size).
IN_FLIGHT_BYTES = 128 * 1024 * 1024

_DONE = object()


def depth_for(item_bytes: int, most: int) -> int:
    """How many items of `item_bytes` may wait in one queue: up to `most`, within IN_FLIGHT_BYTES."""
    return max(1, min(most, IN_FLIGHT_BYTES // max(int(item_bytes), 1)))


def prefetch(items: Iterable[T], depth: int = 4) -> Iterator[T]:
    """The items of `items`, produced in a background thread up to `depth` ahead of the consumer.

    For a stateful producer (a video decoder): it runs in one thread, in order. An exception in
    the producer is raised in the consumer at the point it happened; a consumer that stops early
    stops the producer.
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be at least 1, got {depth}")
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put((item, None)):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            put((_DONE, error))
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # a generator left early releases what it holds (a decoder) here
                close()
        put((_DONE, None))

    worker = threading.Thread(target=produce, name="facepipe-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = buffer.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        worker.join()


def map_ordered(function: Callable[[T], R], items: Iterable[T], workers: int = 2, depth: int = 8) -> Iterator[R]:
    """`function` applied to every item by `workers` threads, yielded in input order, with at
    most `depth` calls submitted ahead of the consumer. For independent items (stored frames)."""
    if workers < 1 or depth < 1:
        raise ValueError(f"map_ordered needs workers >= 1 and depth >= 1, got {workers} and {depth}")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="facepipe-map") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) >= depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
