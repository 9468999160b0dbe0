"""The audio helper processes (cvload.measure.audio_checks.Decoders): jobs and their megabytes both ways, errors, loops."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import numpy as np
import pytest

from cvload.measure.audio_checks import Decoders, DecoderUnavailable, RequestAudio, _check
from cvload.targets.base import Chunk

# Jobs are functions a helper can import (it imports cvload only): numpy's, os's and cvload's.


@pytest.fixture(scope="module")
def decoders() -> Iterator[Decoders]:
    pool = Decoders(2)
    yield pool
    pool.close()


def test_jobs_run_in_helpers_with_megabytes_both_ways(decoders: Decoders) -> None:
    rng = np.random.default_rng(1)
    jobs = [[rng.standard_normal(300_000).astype(np.float32) * 0.1 for _ in range(3)] for _ in range(5)]  # 3.6 MB
    async def main() -> tuple[list[RequestAudio], list[int]]:
        loop = asyncio.get_running_loop()
        checked = asyncio.gather(*(decoders.submit(loop, _check, [Chunk(0.0, a) for a in arrays], "Hi.", 24000,
                                                   True) for arrays in jobs))
        pids = asyncio.gather(*(decoders.submit(loop, os.getpid) for _ in range(8)))
        return await checked, await pids

    results, pids = asyncio.run(main())
    assert set(pids) <= set(decoders.pids) and os.getpid() not in pids
    for arrays, out in zip(jobs, results):
        assert out.samples == [300_000] * 3 and out.flags == []
        for a, b in zip(arrays, out.audio):
            np.testing.assert_array_equal(a, b)


def test_errors_go_back_to_their_job_and_a_later_loop_is_served(decoders: Decoders) -> None:
    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        return await asyncio.gather(decoders.submit(loop, np.reshape, np.ones(4), (7,)),
                                    decoders.submit(loop, np.multiply, np.ones(4, np.float32), 3.0),
                                    return_exceptions=True)

    for _ in range(2):  # asyncio.run twice: a new loop each time
        failed, out = asyncio.run(main())
        assert isinstance(failed, ValueError)
        assert isinstance(out, np.ndarray)
        np.testing.assert_array_equal(out, np.full(4, 3.0, np.float32))


def test_a_dead_helper_fails_its_job_and_the_pool_says_so() -> None:
    pool = Decoders(1)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pid = await pool.submit(loop, os.getpid)
        os.kill(pid, 9)
        with pytest.raises(DecoderUnavailable):
            await pool.submit(loop, os.getpid)
        with pytest.raises(DecoderUnavailable):
            pool.submit(loop, os.getpid)

    try:
        asyncio.run(main())
    finally:
        pool.close()
    assert pool.broken is not None and "failed" in pool.broken


def test_a_loop_closed_with_jobs_in_flight_leaves_the_helpers_serving(decoders: Decoders) -> None:
    """A job still in a helper when its event loop closed (a run ended): the answer has nowhere to go. The feeding
    threads used to die on the closed loop, and every later job in that process (the next test under
    pytest-xdist, a sweep's next level) waited forever."""
    async def leave_jobs_in_flight() -> None:
        for _ in range(2):  # one for each feeding thread
            decoders.submit(asyncio.get_running_loop(), time.sleep, 0.3)

    asyncio.run(leave_jobs_in_flight())  # the next loop's jobs queue behind these, answered after the loop closed

    async def next_loop() -> list[int]:
        jobs = [decoders.submit(asyncio.get_running_loop(), abs, -i) for i in range(4)]
        return await asyncio.wait_for(asyncio.gather(*jobs), 10)

    assert asyncio.run(next_loop()) == [0, 1, 2, 3]
