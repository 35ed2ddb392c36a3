"""A labeller in its own process, for the concurrency test (imports nothing heavy: spawn starts fast)."""

from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

from forge.align.preferences import CHOICES, PreferenceStore


def label(db: str, labeller: str, votes: int, start: Event, results: Queue) -> None:
    """Wait for the start signal, then take and judge `votes` pairs; put (labeller, pair ids) on `results`."""
    store = PreferenceStore(db)
    start.wait()
    judged = []
    for i in range(votes):
        pair = store.next_pair(labeller)
        if pair is None:
            break
        store.record(pair.id, labeller, CHOICES[i % len(CHOICES)])
        judged.append(pair.id)
    results.put((labeller, judged))
