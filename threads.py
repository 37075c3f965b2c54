"""A thread map that yields in order and keeps only a few results waiting (prep's decoding, train.py's loader).

    for result in ordered_map(decode, paths, n_threads=4): ...
"""
from collections import deque
from concurrent.futures import ThreadPoolExecutor


def ordered_map(function, items, n_threads, ahead=None):
    """function(item) for each item on a thread pool, yielded in order, with at most `ahead` results waiting
    (ThreadPoolExecutor.map would run every item ahead and hold all results behind one slow item)."""
    items, pending = iter(items), deque()
    with ThreadPoolExecutor(n_threads) as pool:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= (ahead or 4 * n_threads):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
