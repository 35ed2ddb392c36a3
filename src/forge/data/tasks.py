"""Running the data stage's tasks: in this process, over a process pool, or on a Ray cluster.

A task is a module-level function and its arguments (both picklable); it reads its own input shard and
writes its own output files atomically, then a JSON file of statistics that is also its completion
marker. A task whose marker exists is not run again, so a crashed or interrupted run resumes where it
stopped, and running a task twice gives the same files. Only small things travel back to the driver:
the statistics, never documents.

Executors:
- `local` with `workers` 1: in this process, one task after the other (simplest to debug);
- `local` with more workers: a `spawn` process pool (spawn, not fork: the parent may hold torch or
  tokenizers thread pools that a fork would break; nothing runs at import time in a worker, since every
  entry point is guarded by `if __name__ == "__main__"` or is the installed `forge` command);
- `ray`: each task is a Ray remote function. Without `--ray-address`, `ray.init()` starts a local Ray
  instance on this machine (what the tests use); with `--ray-address auto` or `ray://HOST:10001` the
  same tasks run on an existing cluster. Every node must see the input and work directories at the same
  paths (a shared filesystem), since tasks read and write files, not objects.
"""

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from forge.errors import ConfigError
from forge.io import write_json

EXECUTORS = ("local", "ray")


def marker_path(work_dir: Path, stage: str, index: int) -> Path:
    """The statistics file whose presence says task `index` of `stage` is complete."""
    return work_dir / f"{stage}-{index:05d}.json"


def run_tasks(
    fn: Callable[..., dict[str, Any]],
    arguments: Sequence[tuple[Any, ...]],
    *,
    executor: str = "local",
    workers: int = 1,
    ray_address: str = "",
    desc: str = "tasks",
    progress: bool = True,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Run `fn(*args)` for every tuple of `arguments`; yield (index, result) as each one finishes."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    bar = tqdm(total=len(arguments), unit="task", desc=desc, disable=not progress)
    try:
        if executor == "ray":
            results = _run_ray(fn, arguments, workers, ray_address)
        elif workers <= 1 or len(arguments) <= 1:
            results = ((i, fn(*args)) for i, args in enumerate(arguments))
        else:
            results = _run_pool(fn, arguments, workers)
        for index, result in results:
            bar.update(1)
            yield index, result
    finally:
        bar.close()


def _run_pool(
    fn: Callable[..., dict[str, Any]], arguments: Sequence[tuple[Any, ...]], workers: int
) -> Iterator[tuple[int, dict[str, Any]]]:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(arguments)), mp_context=context) as pool:
        futures = {pool.submit(fn, *args): i for i, args in enumerate(arguments)}
        for future in concurrent.futures.as_completed(futures):
            yield futures[future], future.result()


def _run_ray(
    fn: Callable[..., dict[str, Any]], arguments: Sequence[tuple[Any, ...]], workers: int, address: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--executor ray needs Ray: pip install 'ray>=2.9' (or use --executor local)"
        ) from None
    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {"address": address or None, "log_to_driver": False}
        if not address:
            options["num_cpus"] = max(workers, 1)
            options["include_dashboard"] = False
        ray.init(**options)
    try:
        remote = ray.remote(fn)
        pending = {remote.remote(*args): i for i, args in enumerate(arguments)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                yield pending.pop(ref), ray.get(ref)
    finally:
        if started_here:
            ray.shutdown()


def complete(work_dir: Path, stage: str, index: int, stats: dict[str, Any]) -> dict[str, Any]:
    """Write task `index`'s statistics, which marks it complete; return them."""
    write_json(marker_path(work_dir, stage, index), stats)
    return stats
