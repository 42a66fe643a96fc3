"""The fleet's rules without a fleet: heartbeats, outages, batch summaries and the dataset run's
decisions (flows/dispatch.py PoolBatches._judge), driven by a fake server and a fake clock. The same
rules on the real pieces: tests/test_scaleout.py."""

from __future__ import annotations

import signal
import time
import uuid
from datetime import datetime, timezone
from types import SimpleNamespace

import httpx
import pytest
from prefect.client.schemas.objects import StateType

from conftest import small_config
from flows import dispatch, heartbeat, monitor, outages
from flows.dispatch import Batch, PoolBatches
from flows.heartbeat import Beat, BeatWatch, Heartbeat, heartbeat_path, stop_path
from flows.search_batch import BatchSummary, read_batch_file, read_summary, record_attempt, summary_path
from ttsf_core.config import ConfigError, build_config
from ttsf_core.engine.search_engine import BatchCounts
from ttsf_core.storage.files import write_json

# ---- config ----------------------------------------------------------------------------------------------


def test_dispatch_liveness_fields_are_validated_with_field_received_allowed():
    with pytest.raises(ConfigError, match=r"dispatch\.lost_after_s: received 10 with heartbeat_s 5, allowed: at "
                                          r"least 3 x heartbeat_s \(15 s\)"):
        build_config({"dispatch": {"heartbeat_s": 5, "lost_after_s": 10}})
    with pytest.raises(ConfigError, match=r"dispatch\.max_attempts: received 0, allowed"):
        build_config({"dispatch": {"max_attempts": 0}})
    with pytest.raises(ConfigError, match=r"dispatch\.server_outage_s: received 5, allowed"):
        build_config({"dispatch": {"server_outage_s": 5}})
    defaults = build_config({}).dispatch
    assert defaults.lost_after_s <= 300  # a lost batch is found within minutes (issue 20: at most 5)
    assert defaults.server_outage_s >= 300  # an outage of 5 minutes is ridden out


# ---- outages ---------------------------------------------------------------------------------------------


def _status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://server/api/x")
    return httpx.HTTPStatusError("x", request=request, response=httpx.Response(code, request=request))


def test_an_outage_is_a_refused_connection_a_timeout_or_a_5xx_also_when_wrapped():
    assert outages.is_outage(httpx.ConnectError("refused"))
    assert outages.is_outage(httpx.ReadTimeout("slow"))
    assert outages.is_outage(_status_error(503)) and outages.is_outage(_status_error(500))
    assert not outages.is_outage(_status_error(404)) and not outages.is_outage(ValueError("bad"))
    try:  # Prefect's version check wraps the transport error in a RuntimeError
        try:
            raise httpx.ConnectError("refused")
        except httpx.ConnectError as error:
            raise RuntimeError("Failed to reach API at http://server/api") from error
    except RuntimeError as wrapped:
        assert outages.is_outage(wrapped)


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_ride_out_retries_an_outage_with_capped_backoff_then_returns():
    clock, calls = _Clock(), []

    def call():
        calls.append(clock.now)
        if clock.now < 300:  # a five-minute outage
            raise httpx.ConnectError("refused")
        return "answer"

    assert outages.ride_out(call, "polling", 3600, sleep=clock.sleep, clock=clock) == "answer"
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert max(gaps) <= outages.BACKOFF_CAP_S and len(calls) < 40  # bounded back-off, not a busy loop


def test_ride_out_gives_up_after_its_budget_and_raises_other_errors_at_once():
    clock = _Clock()
    with pytest.raises(outages.ServerUnreachable, match=r"polling: the Prefect server could not be reached"):
        outages.ride_out(lambda: (_ for _ in ()).throw(httpx.ConnectError("refused")), "polling", 60,
                         sleep=clock.sleep, clock=clock)
    assert 60 <= clock.now <= 60 + outages.BACKOFF_CAP_S
    calls = []
    with pytest.raises(ValueError):
        outages.ride_out(lambda: calls.append(1) or (_ for _ in ()).throw(ValueError("bad")), "x", 60,
                         sleep=clock.sleep, clock=clock)
    assert calls == [1]


def test_artifact_updates_wait_for_the_server_and_the_latest_is_sent_when_it_answers(monkeypatch):
    sent, down = [], [True]

    class Client:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def update_artifact(self, artifact_id, update):
            if down[0]:
                raise httpx.ConnectError("refused")
            sent.append((artifact_id, update.data))

    monkeypatch.setattr(monitor, "get_client", lambda sync_client: Client())
    monkeypatch.setattr(monitor, "_unsent", {})
    artifact = uuid.uuid4()
    monitor._update(artifact, "1 of 4")  # no exception: the run goes on
    monitor._update(artifact, "2 of 4")
    assert sent == []
    down[0] = False
    assert monitor.flush_updates()
    assert sent == [(artifact, "2 of 4")]  # only the latest: each update carries the whole artifact


# ---- heartbeats ------------------------------------------------------------------------------------------


def test_a_heartbeat_counts_up_carries_counts_and_says_how_it_ended(tmp_path):
    path = heartbeat_path(tmp_path, 3, "run-a")
    counts = BatchCounts(images_generated=5)
    with Heartbeat(path, "run-a", 3, interval_s=0.05, where="w1 (host pid 1)") as beat:
        beat.live_counts = counts
        deadline = time.monotonic() + 10
        for _ in range(400):
            if Beat.model_validate_json(path.read_text()).beat >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        beat.end("completed")
    last = Beat.model_validate_json(path.read_text())
    assert last.beat >= 3 and last.ended == "completed" and last.counts["images_generated"] == 5
    assert last.run_id == "run-a" and last.batch_index == 3


def test_the_reader_judges_silence_on_its_own_clock_never_the_writers(tmp_path):
    path = heartbeat_path(tmp_path, 0, "run-a")
    watch = BeatWatch(path)
    assert watch.read(now=100.0) is None and watch.silent_for(now=100.0, since=100.0) == 0
    # The writer's clock is hours off: nothing in the file is a time, so nothing is compared to it.
    write_json(path, Beat(run_id="run-a", batch_index=0, beat=1, where="w1").model_dump(mode="json"))
    watch.read(now=101.0)
    assert watch.silent_for(now=130.0, since=100.0) == 29.0
    watch.read(now=131.0)  # the same beat again: no change, silence goes on
    assert watch.silent_for(now=131.0, since=100.0) == 30.0
    write_json(path, Beat(run_id="run-a", batch_index=0, beat=2, where="w1").model_dump(mode="json"))
    watch.read(now=132.0)
    assert watch.silent_for(now=133.0, since=100.0) == 1.0


def test_a_stop_file_ends_the_batch_process_through_sigterm(tmp_path, monkeypatch):
    killed = []
    monkeypatch.setattr(heartbeat.os, "kill", lambda pid, sig: killed.append(sig))
    path = heartbeat_path(tmp_path, 0, "run-a")
    with Heartbeat(path, "run-a", 0, interval_s=0.05, where="w1") as beat:
        assert beat.stop_requested() is None
        BeatWatch(path).ask_to_stop("stopped by Ctrl-C")
        assert beat.stop_requested() == "stopped by Ctrl-C"
        deadline = time.monotonic() + 10
        for _ in range(500):
            if killed or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    assert killed == [signal.SIGTERM]


# ---- batch summaries -------------------------------------------------------------------------------------


def _summary(index: int, run_id: str, generated: int) -> BatchSummary:
    return BatchSummary(batch_index=index, counts=vars(BatchCounts(images_generated=generated)), failures=[],
                        unfinished_prompts=[], run_id=run_id)


def test_a_rerun_that_did_nothing_adds_an_attempt_and_never_zeroes_the_summary(tmp_path):
    config = small_config(tmp_path)
    record_attempt(config, _summary(2, "first", 12))
    record_attempt(config, _summary(2, "rerun", 0))  # everything was recorded: zero counts
    found = read_batch_file(config, 2)
    assert [a.run_id for a in found.attempts] == ["first", "rerun"]
    assert found.counts["images_generated"] == 12
    assert read_summary(config, 2, "first").counts["images_generated"] == 12
    assert read_summary(config, 2).run_id == "rerun" and read_summary(config, 2, "other") is None


def test_a_summary_written_before_attempts_were_kept_is_read_as_one_attempt(tmp_path):
    config = small_config(tmp_path)
    old = _summary(0, "", 6).model_dump(mode="json")
    old.pop("run_id"), old.pop("ended_at")
    write_json(summary_path(config, 0), old)
    record_attempt(config, _summary(0, "new", 2))
    found = read_batch_file(config, 0)
    assert len(found.attempts) == 2 and found.counts["images_generated"] == 8


# ---- the dataset run's decisions -------------------------------------------------------------------------


class FakeServer:
    """Flow runs by id; what the dataset run set; every run it created."""

    def __init__(self):
        self.runs: dict[uuid.UUID, SimpleNamespace] = {}
        self.set: list[tuple[uuid.UUID, StateType, str]] = []
        self.created: list[tuple[int, int, dict, object]] = []

    def run(self, run_id, state: StateType, worker: str = "w1", message: str = ""):
        self.runs[run_id] = SimpleNamespace(id=run_id, state_type=state, labels={"prefect.worker.name": worker},
                                            state=SimpleNamespace(message=message, name=state.value.title()),
                                            expected_start_time=self.runs[run_id].expected_start_time)


@pytest.fixture
def pool(tmp_path, monkeypatch):
    config = small_config(tmp_path, dispatch={"mode": "pool", "deployment": "search-batch/cpu", "heartbeat_s": 2,
                                              "lost_after_s": 20, "batch_timeout_s": 1000, "max_attempts": 2})
    server = FakeServer()
    runner = PoolBatches(config, "prompts.json", None, lambda: None)

    def create(batch, number, parameters, scheduled_for):
        run_id = uuid.uuid4()
        when = scheduled_for or datetime(2026, 12, 3, tzinfo=timezone.utc)
        server.runs[run_id] = SimpleNamespace(id=run_id, state_type=StateType.SCHEDULED, labels={},
                                              state=SimpleNamespace(message="", name="Scheduled"),
                                              expected_start_time=when)
        server.created.append((batch.index, number, parameters, scheduled_for))
        return server.runs[run_id]

    def set_state(attempt, state):
        server.set.append((attempt.run_id, state.type, state.message))
        server.run(attempt.run_id, state.type, message=state.message)

    monkeypatch.setattr(runner, "_create_run", create)
    monkeypatch.setattr(runner, "_set_state", set_state)
    runner.server = server
    return runner


def _beat(runner: PoolBatches, attempt, number: int, ended: str | None = None, **counts):
    write_json(attempt.watch.path, Beat(run_id=str(attempt.run_id), batch_index=attempt.batch.index, beat=number,
                                        where="w1", counts=counts, ended=ended).model_dump(mode="json"))


def _judge(runner: PoolBatches, attempt, now: float, reachable: bool = True):
    return runner._judge(attempt, runner.server.runs if reachable else None, now)


def test_a_silent_batch_is_lost_after_lost_after_s_crashed_and_resubmitted_in_its_place(pool):
    attempt = pool._submit(Batch(0, 0, 1), {"allowance": {"requests": 7}})
    pool.server.run(attempt.run_id, StateType.RUNNING)
    assert _judge(pool, attempt, now=0.0) is None
    _beat(pool, attempt, 1, images_generated=3)
    assert _judge(pool, attempt, now=1.0) is None
    assert _judge(pool, attempt, now=20.5) is None  # 19.5 s silent: not yet
    assert _judge(pool, attempt, now=21.5) is None  # lost: resubmitted (None: nothing to report yet)
    assert pool.server.set[-1][:2] == (attempt.run_id, StateType.CRASHED) and "no heartbeat" in pool.server.set[-1][2]
    (index, number, parameters, scheduled_for) = pool.server.created[-1]
    assert (index, number, parameters) == (0, 2, {"allowance": {"requests": 7}})  # same parameters, same budget
    assert scheduled_for == attempt.scheduled_for  # its place in the queue
    assert pool.carried[0].images_generated == 3  # the lost attempt's work still counts for this run
    assert attempt.run_id not in pool.live and len(pool.live) == 1


def test_a_beating_batch_is_never_lost_however_long_it_runs(pool):
    attempt = pool._submit(Batch(0, 0, 1), {})
    pool.server.run(attempt.run_id, StateType.RUNNING)
    for second in range(0, 95, 5):
        _beat(pool, attempt, second + 1)
        assert _judge(pool, attempt, now=float(second)) is None
    assert pool.server.set == [] and attempt.run_id in pool.live


def test_a_batch_lost_max_attempts_times_fails_in_one_line_naming_it(pool):
    first = pool._submit(Batch(4, 8, 10), {})
    pool.server.run(first.run_id, StateType.CRASHED, message="Flow run infrastructure exited with code -9")
    assert _judge(pool, first, now=0.0) is None  # crashed: resubmitted
    second = next(iter(pool.live.values()))
    pool.server.run(second.run_id, StateType.CRASHED, worker="w2", message="killed")
    result = _judge(pool, second, now=1.0)
    assert result.error == ("batch 4 (prompts 8-9) lost 2 times (dispatch.max_attempts 2); last on w2: its run "
                            "crashed: killed")
    assert "\n" not in result.error and not pool.live


def test_the_timeout_counts_from_the_start_and_an_overdue_batch_is_cancelled_then_resubmitted(pool, tmp_path):
    attempt = pool._submit(Batch(0, 0, 1), {})
    assert _judge(pool, attempt, now=5000.0) is None  # waiting for a worker for 5000 s: not overdue
    pool.server.run(attempt.run_id, StateType.RUNNING)
    for second in range(5000, 6000, 10):
        _beat(pool, attempt, second)
        assert _judge(pool, attempt, now=float(second)) is None
    assert pool.server.set == []
    _beat(pool, attempt, 6001)
    assert _judge(pool, attempt, now=6001.0) is None  # 1001 s running: cancelled, through Prefect and the folder
    assert pool.server.set[-1][1] == StateType.CANCELLING and "batch_timeout_s (1000 s)" in pool.server.set[-1][2]
    assert stop_path(attempt.watch.path).is_file()
    pool.server.run(attempt.run_id, StateType.CANCELLED)
    assert _judge(pool, attempt, now=6010.0) is None  # cancelled: submitted again (attempt 2 of 2)
    assert [c[1] for c in pool.server.created] == [1, 2]


def test_a_batch_whose_work_is_done_is_finished_even_when_its_report_to_the_server_was_lost(pool):
    attempt = pool._submit(Batch(1, 1, 2), {})
    pool.server.run(attempt.run_id, StateType.RUNNING)
    _beat(pool, attempt, 9, ended="completed")
    assert _judge(pool, attempt, now=0.0) is None  # the engine normally reports in seconds: wait
    assert _judge(pool, attempt, now=10.0, reachable=False) is None  # the server is away: wait
    result = _judge(pool, attempt, now=25.0)
    assert result is not None and result.error is None
    assert pool.server.set[-1][1] == StateType.COMPLETED and "run folder" in pool.server.set[-1][2]
    crashed = pool._submit(Batch(2, 2, 3), {})
    pool.server.run(crashed.run_id, StateType.CRASHED, message="Execution was aborted")
    _beat(pool, crashed, 5, ended="completed")
    assert _judge(pool, crashed, now=30.0).error is None  # Crashed after its work: set right at once
    assert pool.server.set[-1][:2] == (crashed.run_id, StateType.COMPLETED)


def test_nothing_is_decided_while_the_server_is_away_and_a_batch_that_died_meanwhile_is_found_after(pool):
    alive, dead = pool._submit(Batch(0, 0, 1), {}), pool._submit(Batch(1, 1, 2), {})
    for attempt in (alive, dead):
        pool.server.run(attempt.run_id, StateType.RUNNING)
        _beat(pool, attempt, 1)
        assert _judge(pool, attempt, now=0.0) is None
    for second in range(5, 120, 5):  # a two-minute outage: the live one beats on, the dead one is silent
        _beat(pool, alive, second)
        assert _judge(pool, alive, now=float(second), reachable=False) is None
        assert _judge(pool, dead, now=float(second), reachable=False) is None
    assert pool.server.set == []
    _beat(pool, alive, 200)
    assert _judge(pool, alive, now=121.0) is None and alive.run_id in pool.live
    assert _judge(pool, dead, now=121.0) is None  # silent for 121 s: lost now that the server answers
    assert pool.server.set == [(dead.run_id, StateType.CRASHED, pool.server.set[0][2])]


def test_a_run_taken_by_a_worker_is_lost_only_when_that_worker_went_offline_or_after_the_limit(pool):
    statuses = {"w3": "ONLINE"}
    pool._worker_status = lambda now: statuses
    pool.up_since = -1000.0  # the server has answered for long: its worker statuses are current
    slow = pool._submit(Batch(0, 0, 1), {})
    pool.server.run(slow.run_id, StateType.PENDING, worker="w3")
    assert _judge(pool, slow, now=0.0) is None
    assert _judge(pool, slow, now=300.0) is None  # a slow start on a live worker is not a loss
    assert pool.server.set == []
    statuses["w3"] = "OFFLINE"
    assert _judge(pool, slow, now=301.0) is None  # its worker is gone: lost, resubmitted
    assert "its worker w3 went offline before the batch began" in pool.server.set[-1][2]
    assert len(pool.server.created) == 2
    stuck = next(iter(pool.live.values()))
    statuses["w4"] = "ONLINE"
    pool.server.run(stuck.run_id, StateType.PENDING, worker="w4")
    assert _judge(pool, stuck, now=400.0) is None
    result = _judge(pool, stuck, now=400.0 + dispatch.PENDING_LIMIT_S + 1)  # never started: lost anyway
    assert "did not start it within" in pool.server.set[-1][2]
    assert result.error.startswith("batch 0 (prompt 0) lost 2 times (dispatch.max_attempts 2); last on w4: taken")


def test_right_after_an_outage_worker_statuses_are_not_trusted(pool):
    pool._worker_status = lambda now: {"w3": "OFFLINE"}  # stale: workers have not reported in yet
    pool.up_since = 500.0
    attempt = pool._submit(Batch(0, 0, 1), {})
    pool.server.run(attempt.run_id, StateType.PENDING, worker="w3")
    assert _judge(pool, attempt, now=450.0) is None
    assert _judge(pool, attempt, now=520.0) is None  # pending 70 s, but the server answers only since 500
    assert pool.server.set == []
    assert _judge(pool, attempt, now=600.0) is None  # settled: offline now means gone
    assert "went offline" in pool.server.set[-1][2]


def test_the_waiting_line_is_one_a_minute_with_counts(pool, caplog):
    pool.progress = lambda: "1 of 4 prompts finished"
    attempt = pool._submit(Batch(0, 0, 1), {})
    pool._submit(Batch(1, 1, 2), {})
    pool.server.run(attempt.run_id, StateType.RUNNING)
    attempt.started_at = 0.0
    attempt.worker = "w1"
    pool.last_report = 0.0
    with caplog.at_level("INFO", logger="ttsf.dispatch"):
        pool._workers_online = lambda: ""
        for second in range(0, 120, 2):
            pool._report(float(second), pool.server.runs)
    lines = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    assert lines == ["waiting for 2 batches: 1 running (0 on w1 for 60 s); 1 waiting for a worker; "
                     "1 of 4 prompts finished"]


def test_fail_fast_turns_prefects_own_retries_off_only_inside_the_block():
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

    outside = PREFECT_CLIENT_MAX_RETRIES.value()
    with outages.fail_fast():
        assert PREFECT_CLIENT_MAX_RETRIES.value() == 0
    assert PREFECT_CLIENT_MAX_RETRIES.value() == outside


def test_a_retried_dataset_run_watches_its_earlier_batch_runs_instead_of_submitting_them_again(pool, monkeypatch):
    earlier = uuid.uuid4()
    pool.server.runs[earlier] = SimpleNamespace(
        id=earlier, name="batch-0", parameters={"batch_index": 0, "allowance": None}, state_type=StateType.RUNNING,
        labels={"prefect.worker.name": "w2"}, state=SimpleNamespace(message="", name="Running"),
        expected_start_time=datetime(2026, 12, 3, tzinfo=timezone.utc))
    pool.adopt = [pool.server.runs[earlier]]
    monkeypatch.setattr(pool, "check", lambda: None)
    monkeypatch.setattr(pool, "_poll", lambda now: pool.server.runs)
    pool.server.run(earlier, StateType.COMPLETED, worker="w2")
    results = list(pool.run([Batch(0, 0, 1)]))
    assert pool.server.created == []  # nothing submitted: the live run from before the retry was watched
    assert [(r.batch.index, r.error) for r in results] == [(0, None)]


@pytest.mark.usefixtures("prefect_harness")
def test_ctrl_c_in_a_local_run_ends_it_cancelled_saying_what_finished(tmp_path, monkeypatch):
    """dispatch: local. Ctrl-C lands in the batch running in this process: the run ends Cancelled with one
    message naming what finished and the stopped batch (the CLI adds the resume hint, once)."""
    from prefect.exceptions import CancelledRun

    import flows.search_batch as search_batch_module
    from flows.search_dataset import search_dataset

    data = tmp_path / "prompts.txt"
    data.write_text("a red lighthouse on a cliff\nan owl reading a map\n")
    config = small_config(tmp_path, search_args={"search_rounds": 1}, prompts_per_batch=1,
                          prompts={"prompt": None, "dataset": str(data), "num_prompts": "all"})
    real = search_batch_module._search_batch

    def interrupted(run, layout, batch_index, *args):
        if batch_index == 1:
            raise KeyboardInterrupt
        return real(run, layout, batch_index, *args)

    monkeypatch.setattr(search_batch_module, "_search_batch", interrupted)
    with pytest.raises(CancelledRun) as stopped:
        search_dataset(config)
    message = str(stopped.value)
    assert message == ("stopped by Ctrl-C: 1 of 2 prompts finished; batch 1 (prompt 1): stopped (it ran in this "
                       "process)"), message
    assert "resume" not in message


def test_running_on_the_server_but_not_yet_beating_is_not_lost_by_silence(pool):
    """A process may sit between the engine's Running report and the flow's first line for minutes
    (an outage waited out in Prefect's retries): only its worker going offline, or the limit, loses it."""
    pool._worker_status = lambda now: {"w1": "ONLINE"}
    pool.up_since = -1000.0
    attempt = pool._submit(Batch(0, 0, 1), {})
    pool.server.run(attempt.run_id, StateType.RUNNING)
    for second in range(0, 600, 30):
        assert _judge(pool, attempt, now=float(second)) is None
    assert pool.server.set == []
    _beat(pool, attempt, 1)
    assert _judge(pool, attempt, now=600.0) is None  # it began: from now on silence counts
    assert _judge(pool, attempt, now=621.0) is None
    assert "no heartbeat for 21 s" in pool.server.set[-1][2]


def _running(pool):
    """A batch seen running and beating at time 0."""
    attempt = pool._submit(Batch(0, 0, 1), {})
    pool.server.run(attempt.run_id, StateType.RUNNING)
    _beat(pool, attempt, 1)
    assert _judge(pool, attempt, now=0.0) is None
    return attempt


def test_a_batch_that_stops_itself_on_its_stop_file_is_cancelled_at_once(pool):
    attempt = _running(pool)
    pool._ask_to_stop(attempt, "stopped by Ctrl-C", kind="stop")
    assert pool.server.set[-1][1] == StateType.CANCELLING
    _beat(pool, attempt, 2, ended="stopped")  # what its heartbeat thread writes before it ends the process
    result = _judge(pool, attempt, now=3.0)
    assert result.error == "cancelled: stopped by Ctrl-C"
    assert pool.server.set[-1][:2] == (attempt.run_id, StateType.CANCELLED)
    assert not attempt.watch.path.exists() and not stop_path(attempt.watch.path).exists()  # it ended: no files


def test_a_stop_cancels_a_waiting_batch_and_leaves_a_taken_one_cancelling_with_its_stop_file(pool):
    """Workers take only Scheduled runs, so a waiting one is Cancelled. One a worker took may be starting:
    Cancelling refuses its Running report, and its stop file (kept) stops it if it begins all the same."""
    waiting, taken = pool._submit(Batch(0, 0, 1), {}), pool._submit(Batch(1, 1, 2), {})
    pool.server.run(taken.run_id, StateType.PENDING, worker="w2")
    assert _judge(pool, waiting, now=0.0) is None and _judge(pool, taken, now=0.0) is None
    pool.stop()
    assert [s[1] for s in pool.server.set] == [StateType.CANCELLED, StateType.CANCELLING]
    assert _judge(pool, waiting, now=1.0).error.startswith("cancelled: ")
    assert _judge(pool, taken, now=1.0).error.startswith("cancelled: ")  # done with it: it cannot begin
    assert pool.server.runs[taken.run_id].state_type == StateType.CANCELLING  # its worker confirms it
    assert stop_path(taken.watch.path).is_file() and not pool.live and len(pool.server.created) == 2


def test_a_stopped_batch_that_goes_quiet_is_cancelled_without_waiting_for_prefect(pool):
    attempt = _running(pool)
    pool._ask_to_stop(attempt, "it ran longer than dispatch.batch_timeout_s (1000 s)", kind="timeout")
    attempt.stop_asked_at = 10.0
    pool.server.run(attempt.run_id, StateType.CANCELLING)
    assert _judge(pool, attempt, now=15.0) is None  # 5 s quiet: not yet (3 beats of 2 s)
    assert _judge(pool, attempt, now=16.5) is None  # quiet: Cancelled here, and resubmitted (a timeout)
    assert pool.server.set[-1][1] == StateType.CANCELLED and len(pool.server.created) == 2
