"""The crash flight recorder and the isolation of suspects."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.wait import until
from vnetd.amqp.quarantine import FlightRecorder, Quarantine, job_key


def crash_with(state: Path, *keys: str) -> None:
    """Simulate a run that died with `keys` in flight (S written, no E)."""
    rec = FlightRecorder(state)
    rec.open()
    for key in keys:
        rec.started(key)
    rec.started("done")
    rec.ended("done")
    # no close_clean(): the process "died"


def test_keys_prefer_message_id_and_hash_otherwise() -> None:
    assert job_key("abc", b"x", None, None) == "m:abc"
    a = job_key(None, b"body", "c1", "q")
    assert a.startswith("h:") and a != job_key(None, b"body", "c2", "q")
    assert "\n" not in job_key("a\nb", b"", None, None)


def test_a_crash_makes_suspects_and_alone_counts(tmp_path: Path) -> None:
    crash_with(tmp_path, "a", "b")
    q = Quarantine(FlightRecorder(tmp_path), threshold=2)
    assert set(q.suspects) == {"a", "b"}
    assert (q.suspects["a"].crashes, q.suspects["a"].alone) == (1, 0)
    assert not q.is_poison("a") and not q.is_poison("done")
    q.recorder.started("a")  # type: ignore[union-attr]  # dies again, alone
    q2 = Quarantine(FlightRecorder(tmp_path), threshold=2)
    assert (q2.suspects["a"].crashes, q2.suspects["a"].alone) == (2, 1)
    assert not q2.is_poison("a")
    q2.recorder.started("a")  # type: ignore[union-attr]
    q3 = Quarantine(FlightRecorder(tmp_path), threshold=2)
    assert q3.is_poison("a") and not q3.is_poison("b")


def test_clean_close_leaves_no_suspects(tmp_path: Path) -> None:
    q = Quarantine(FlightRecorder(tmp_path), threshold=2)
    q.recorder.started("x")  # type: ignore[union-attr]
    q.close_clean()
    assert Quarantine(FlightRecorder(tmp_path), threshold=2).suspects == {}


def test_threshold_zero_disables(tmp_path: Path) -> None:
    crash_with(tmp_path, "a")
    q = Quarantine(FlightRecorder(tmp_path), threshold=0)
    assert q.suspects == {} and not q.is_poison("a")


def test_corrupt_state_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "suspects.json").write_text("{not json")
    (tmp_path / "inflight.log").write_text("garbage\nS a\n")
    q = Quarantine(FlightRecorder(tmp_path), threshold=2)
    assert (q.suspects["a"].crashes, q.suspects["a"].alone) == (1, 1)


async def test_suspect_runs_alone_after_the_others(tmp_path: Path) -> None:
    crash_with(tmp_path, "sus")
    q = Quarantine(FlightRecorder(tmp_path), threshold=2)
    log: list[str] = []
    running: set[str] = set()

    async def job(key: str, delay: float) -> None:
        async with q.running(key):
            running.add(key)
            log.append(f"start {key} with {sorted(running - {key})}")
            await asyncio.sleep(delay)
            running.discard(key)

    await asyncio.gather(job("sus", 0.01), job("n1", 0.1), job("n2", 0.1))
    assert log[-1] == "start sus with []"  # alone, after the innocent ones
    # Settled: no longer a suspect, here or after a restart.
    assert "sus" not in q.suspects
    assert "sus" not in Quarantine(FlightRecorder(tmp_path), threshold=2).suspects


async def test_new_jobs_wait_while_a_suspect_runs(tmp_path: Path) -> None:
    crash_with(tmp_path, "sus")
    q = Quarantine(FlightRecorder(tmp_path), threshold=2)
    order: list[str] = []
    suspect_running, late_arrived = asyncio.Event(), asyncio.Event()

    async def suspect() -> None:
        async with q.running("sus"):
            order.append("sus-start")
            suspect_running.set()
            await late_arrived.wait()
            for _ in range(20):  # loop turns enough for the late job to run, were it let in
                await asyncio.sleep(0)
            order.append("sus-end")

    async def late() -> None:
        await suspect_running.wait()  # arrives while the suspect runs
        late_arrived.set()
        async with q.running("late"):
            order.append("late")

    await asyncio.wait_for(asyncio.gather(suspect(), late()), 5)
    assert order == ["sus-start", "sus-end", "late"]


async def test_a_cancelled_delivery_lets_its_job_finish() -> None:
    from vnetd.amqp.consumer import run_to_end

    steps: list[str] = []

    async def job() -> dict[str, str]:
        steps.append("created")
        await asyncio.sleep(0.05)
        steps.append("marked")  # the second netlink request of a create
        return {}

    delivery = asyncio.ensure_future(run_to_end(job()))
    await until(lambda: steps == ["created"], "the job to be half-way")
    delivery.cancel()  # the channel closed under it
    try:
        await delivery
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the cancellation was swallowed")
    assert steps == ["created", "marked"]


def test_the_flight_log_stays_bounded_on_a_long_run(tmp_path: Path) -> None:
    rec = FlightRecorder(tmp_path, max_bytes=4096)
    rec.open()
    rec.started("m:long-runner")  # in flight all along
    biggest = 0
    for i in range(20_000):
        key = f"m:{i:0200d}"  # the longest key a message_id makes
        rec.started(key)
        rec.ended(key)
        biggest = max(biggest, (tmp_path / "inflight.log").stat().st_size)
    assert biggest <= 4096 + 2 * 210, biggest
    assert rec.compactions > 100
    assert rec.size == (tmp_path / "inflight.log").stat().st_size


def test_a_crash_after_compactions_still_finds_the_jobs_in_flight(tmp_path: Path) -> None:
    rec = FlightRecorder(tmp_path, max_bytes=1024)
    rec.open()
    rec.started("m:a")
    rec.started("m:dup")
    rec.started("m:dup")  # a redelivery of the same job beside the first
    for i in range(500):
        rec.started(f"m:{i}")
        rec.ended(f"m:{i}")
    rec.ended("m:dup")
    assert rec.compactions > 0
    # died here: m:a and one m:dup in flight
    q = Quarantine(FlightRecorder(tmp_path, max_bytes=1024), threshold=2)
    assert set(q.suspects) == {"m:a", "m:dup"}
    assert not (tmp_path / "inflight.new").exists()


def test_many_jobs_in_flight_do_not_compact_at_every_line(tmp_path: Path) -> None:
    rec = FlightRecorder(tmp_path, max_bytes=1024)
    rec.open()
    for i in range(200):  # ~2.4 KB of S lines in flight, over max_bytes by themselves
        rec.started(f"m:held{i:08d}")
    for i in range(300):
        rec.started(f"m:{i}")
        rec.ended(f"m:{i}")
    assert rec.compactions < 10
    assert set(Quarantine(FlightRecorder(tmp_path), threshold=2).suspects) == {
        f"m:held{i:08d}" for i in range(200)}


def test_suspects_are_bounded(tmp_path: Path) -> None:
    from vnetd.amqp import quarantine

    crash_with(tmp_path, *(f"m:{i}" for i in range(quarantine.MAX_SUSPECTS + 50)))
    q = Quarantine(FlightRecorder(tmp_path), threshold=2)
    assert len(q.suspects) == quarantine.MAX_SUSPECTS
    assert "m:0" not in q.suspects and f"m:{quarantine.MAX_SUSPECTS + 49}" in q.suspects
