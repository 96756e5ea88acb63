"""Ray Data for batch inference: numbered work items through a pool of model actors, results in order.

The data layer plans the work (which volumes make batch ``i``) and provides a picklable encoder factory; here the
batch numbers become a Ray Dataset, ``map_batches`` runs them through ``concurrency`` actors (each builds its
encoder once, with ``num_gpus`` when configured), and the results stream back to the driver in input order with
Ray Data's back-pressure: at most a few batches per actor are in flight, whatever the number of batches, so the
driver's memory stays flat while it writes them out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

Encoder = Callable[[int], np.ndarray]


class _EncoderActor:
    """One Ray Data actor: builds its encoder once, then maps batch numbers to their outputs."""

    def __init__(self, make_encoder: Callable[[], Encoder]):
        self.encode = make_encoder()  # torch's threads: Ray sets OMP_NUM_THREADS to the actor's num_cpus

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        numbers = batch["batch"]
        # One output row per batch number; outputs of different batches may differ in shape (volume sizes).
        return {"batch": numbers, "output": [self.encode(int(number)) for number in numbers]}


def map_in_order(make_encoder: Callable[[], Encoder], count: int, *, concurrency: int, num_cpus: float = 1.0,
                 num_gpus: float = 0.0) -> Iterator[np.ndarray]:
    """``make_encoder()(i)`` for ``i`` in ``0 … count-1`` on Ray Data actors, yielded in that order.

    Needs an initialised Ray (:func:`radclip.io.ray_cluster.ray_session`)."""
    import ray.data

    if count == 0:
        return
    context = ray.data.DataContext.get_current()
    saved = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # output order = input order, not completion order
    try:
        # In-memory input, not ray.data.range: a read task would need a CPU of its own, which the actors may
        # hold all of (a deadlock on a 2-CPU machine with 2 actors).
        numbers = ray.data.from_items([{"batch": number} for number in range(count)],
                                      override_num_blocks=min(count, 4 * concurrency))
        mapped = numbers.map_batches(
            _EncoderActor, fn_constructor_args=(make_encoder,), batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=num_cpus, num_gpus=num_gpus)
        expected = 0
        for row in mapped.iter_rows():
            if int(row["batch"]) != expected:  # preserve_order guarantees it; a silent reorder would corrupt the cache
                raise RuntimeError(f"Ray Data returned batch {row['batch']} where batch {expected} was due")
            expected += 1
            yield np.asarray(row["output"])
        if expected != count:
            raise RuntimeError(f"Ray Data returned {expected} of {count} batches")
    finally:
        context.execution_options.preserve_order = saved
