import threading

import pytest

from facepipe.pipelining import map_ordered, prefetch


def test_prefetch_keeps_order_and_runs_the_producer_in_another_thread():
    threads = set()

    def produce():
        for i in range(50):
            threads.add(threading.current_thread().name)
            yield i

    assert list(prefetch(produce(), depth=3)) == list(range(50))
    assert threads == {"facepipe-prefetch"}


def test_prefetch_raises_the_producers_error_where_it_happened():
    def produce():
        yield 1
        raise ValueError("clip.mp4: broken")

    seen = []
    with pytest.raises(ValueError, match="clip.mp4: broken"):
        for item in prefetch(produce()):
            seen.append(item)
    assert seen == [1]


def test_prefetch_stopped_early_closes_the_producer():
    closed = threading.Event()

    def produce():
        try:
            for i in range(10_000):
                yield i
        finally:
            closed.set()

    items = prefetch(produce(), depth=2)
    assert next(items) == 0
    items.close()
    assert closed.wait(5)


def test_map_ordered_keeps_input_order_with_bounded_lookahead():
    started = []
    lock = threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        return i * i

    results = map_ordered(work, range(100), workers=2, depth=4)
    assert next(results) == 0
    assert len(started) <= 5  # never more than `depth` submitted ahead of the consumer
    assert [0, *results] == [i * i for i in range(100)]


def test_map_ordered_raises_a_workers_error():
    def work(i):
        if i == 3:
            raise OSError("disk full")
        return i

    with pytest.raises(OSError, match="disk full"):
        list(map_ordered(work, range(10)))


def test_depth_keeps_large_frames_few():
    from facepipe.pipelining import IN_FLIGHT_BYTES, depth_for

    assert depth_for(1920 * 1080 * 3, 8) == 8  # 1080p: the full depth
    assert depth_for(9248 * 6936 * 3, 8) == 1  # a 64-megapixel photo: one at a time
    assert depth_for(IN_FLIGHT_BYTES // 3, 8) == 3 and depth_for(0, 4) == 4
