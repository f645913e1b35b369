"""Fair share between projects and priority within one, decided at the claim; pausing, resuming
and reordering a waiting job.

Workers are simulated: each takes the oldest task the farm sent (the broker's order), claims
through the claim's own choice (`whose_turn`, as workers/shard.py does), and ends its shard
through the lifecycle, the longest-running first, so a fixed number of shards runs at once.
Nothing renders, so hundreds of claims stay fast and every run is the same.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field, replace
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from farm import scheduling
from farm.auth import ensure_project
from farm.context import Farm
from farm.db.models import Job, Project, Shard, Worker
from farm.db.states import JobStatus, RenderStatus, ShardStatus
from farm.db.types import utcnow
from farm.errors import InputError
from farm.lifecycle import PAUSED, cancel_job, end_shard, finish_job_if_done
from farm.queue.app import RENDER_SHARD
from farm.queue.outbox import send_unsent
from farm.scheduling import (
    HeldTurn,
    pause_job,
    resume_job,
    send_released,
    set_priority,
    set_share,
    whose_turn,
    within_caps,
)
from tests.farm.conftest import job_rows, make_story, submit
from tests.farm.test_run_shard import runtime_with
from workers.shard import run_shard


def project(farm: Farm, name: str, weight: float = 1, cap: int | None = None) -> int:
    with farm.sessions.begin() as session:
        row = ensure_project(session, name)
        set_share(session, row, weight=weight, cap=cap, uncap=False)
        return row.id


def submit_to(farm: Farm, faces, project_id: int, shards: int, **options) -> str:
    """A job of `shards` shards (two renders each) in the project."""
    return submit(farm, faces, make_story(2 * shards), project_id=project_id, **options).job_id


@dataclass
class Farmhands:
    """`workers` simulated workers on one farm, and what they claimed, in order."""

    farm: Farm
    workers: int
    claimed: list[str] = field(default_factory=list)  # job ids
    running: deque[tuple[int, str, str]] = field(default_factory=deque)
    most_running: Counter[str] = field(default_factory=Counter)  # job id -> peak at once

    def token(self) -> int | None:
        """The oldest shard task the farm sent, taken from the broker (the recorder)."""
        sent = self.farm.celery.sent
        for index, task in enumerate(sent):
            if task.name == RENDER_SHARD:
                return sent.pop(index).args[0]
        return None

    def claim(self, worker: str, hint_id: int) -> tuple[int, str] | None:
        """What the worker's claim does with a task (workers/shard.py), short of rendering."""
        with self.farm.sessions.begin() as session:
            hint = session.get_one(Shard, hint_id, with_for_update=True)
            shard = whose_turn(session, hint, worker, utcnow())
            if shard is None or shard.status is not ShardStatus.QUEUED:
                return None
            shard.start(worker, self.farm.settings.lease_s)
            session.get_one(Job, shard.job_id).start()
            return shard.id, shard.job_id

    def end_oldest(self, error: str | None = None) -> None:
        shard_id, job_id, worker = self.running.popleft()
        end_shard(self.farm, worker, shard_id, job_id, error)
        send_released(self.farm, job_id)  # as the worker does once its shard ended

    def run(self, claims: int) -> list[str]:
        """Claim until `claims` more shards ran, or no task is left; the job of each claim."""
        start = len(self.claimed)
        idle = [f"sim:cpu{i}" for i in range(self.workers)]
        busy = {w for _, _, w in self.running}
        idle = [w for w in idle if w not in busy]
        while len(self.claimed) - start < claims:
            if not idle:
                idle.append(self.running[0][2])
                self.end_oldest()
                continue
            hint = self.token()
            if hint is None:
                if not self.running:
                    break
                idle.append(self.running[0][2])
                self.end_oldest()
                continue
            got = self.claim(idle[0], hint)
            if got is None:
                continue  # the turn found nothing it may claim
            self.running.append((*got, idle.pop(0)))
            self.claimed.append(got[1])
            at_once = Counter(job for _, job, _ in self.running)
            for job, n in at_once.items():
                self.most_running[job] = max(self.most_running[job], n)
        return self.claimed[start:]


def test_two_projects_weighted_3_to_1_get_work_in_that_ratio(farm, faces):
    a = submit_to(farm, faces, project(farm, "features", weight=3), shards=30)
    b = submit_to(farm, faces, project(farm, "commercials", weight=1), shards=30)

    claimed = Farmhands(farm, workers=4).run(32)

    counts = Counter(claimed)
    assert abs(counts[a] - 24) <= 1 and counts[a] + counts[b] == 32
    # Not in bursts: every stretch of eight claims is about 3:1 too.
    for start in range(0, 32, 8):
        assert 1 <= claimed[start : start + 8].count(b) <= 3, claimed


def test_the_share_holds_with_a_single_worker(farm, faces):
    """Stride scheduling needs no running shards to compare: one worker is shared 3:1 too."""
    a = submit_to(farm, faces, project(farm, "features", weight=3), shards=20)
    b = submit_to(farm, faces, project(farm, "commercials", weight=1), shards=20)

    counts = Counter(Farmhands(farm, workers=1).run(16))

    assert (counts[a], counts[b]) in {(12, 4), (11, 5), (13, 3)}


def test_a_project_back_from_idle_banks_no_credit(farm, faces):
    busy = submit_to(farm, faces, project(farm, "features"), shards=30)
    hands = Farmhands(farm, workers=2)
    hands.run(12)  # "features" alone has been served twelve shards

    back = submit_to(farm, faces, project(farm, "commercials"), shards=30)
    counts = Counter(hands.run(10))

    assert abs(counts[back] - counts[busy]) <= 2, counts  # equal weights: shared, not taken


def test_a_capped_project_never_runs_more_and_gets_its_turns_back(farm, faces):
    a = submit_to(farm, faces, project(farm, "features", weight=1), shards=6)
    b = submit_to(farm, faces, project(farm, "commercials", weight=1, cap=1), shards=6)
    hands = Farmhands(farm, workers=4)

    claimed = hands.run(100)  # until every shard ran

    assert Counter(claimed) == {a: 6, b: 6}
    assert hands.most_running[b] == 1 and hands.most_running[a] >= 3
    _, shards, _ = job_rows(farm, b)
    assert {s.status for s in shards} == {ShardStatus.SUCCEEDED}


def test_a_priority_change_reorders_queued_shards(farm, faces):
    team = project(farm, "features")
    first = submit_to(farm, faces, team, shards=2)
    second = submit_to(farm, faces, team, shards=2)
    hands = Farmhands(farm, workers=1)
    assert hands.run(1) == [first]  # the same priority: the older job first

    assert set_priority(farm, second, 9).priority == 9

    # The tasks in the broker still name the first job's shard first; the claim reads SQL.
    assert hands.run(3) == [second, second, first]


def test_priority_orders_work_within_a_project_not_across(farm, faces):
    urgent = submit_to(farm, faces, project(farm, "features"), shards=4, priority=9)
    calm = submit_to(farm, faces, project(farm, "commercials"), shards=4, priority=0)

    claimed = Farmhands(farm, workers=2).run(4)

    assert Counter(claimed) == {urgent: 2, calm: 2}


def test_a_paused_job_holds_no_worker_and_resumes(farm, faces):
    team = project(farm, "features")
    paused = submit_to(farm, faces, team, shards=3)
    other = submit_to(farm, faces, team, shards=2)
    hands = Farmhands(farm, workers=2)
    assert hands.run(1) == [paused]

    assert pause_job(farm, paused).status is JobStatus.PAUSED
    _, shards, _ = job_rows(farm, paused)
    assert [s.status for s in shards] == [ShardStatus.RUNNING] + [ShardStatus.PAUSED] * 2

    # Its running shard stops at its next batch (the worker's start_renders), and pauses
    # without spending an attempt.
    shard_id, job_id, worker = hands.running.popleft()
    assert end_shard(farm, worker, shard_id, job_id, PAUSED) == "paused"
    _, shards, _ = job_rows(farm, paused)
    assert (shards[0].status, shards[0].attempts, shards[0].worker_id) == (
        ShardStatus.PAUSED,
        0,
        None,
    )
    # Its tasks are still in the broker: they claim the other job's work, then nothing.
    assert hands.run(10) == [other, other]
    assert all(s.status is ShardStatus.PAUSED for s in job_rows(farm, paused)[1])
    with farm.sessions() as session:
        assert finish_job_if_done(session, paused) is None  # paused is not over

    farm.celery.sent.clear()
    assert resume_job(farm, paused).status is JobStatus.RUNNING  # it had started before
    assert sorted(t.args[0] for t in farm.celery.sent) == sorted(s.id for s in shards)
    assert hands.run(10) == [paused] * 3  # and each ran to its end
    with farm.sessions.begin() as session:
        assert finish_job_if_done(session, paused) is JobStatus.SUCCEEDED


def test_a_job_paused_before_it_started_resumes_queued_and_a_paused_job_cancels(farm, faces):
    team = project(farm, "features")
    job_id = submit_to(farm, faces, team, shards=2)
    pause_job(farm, job_id)

    assert resume_job(farm, job_id).status is JobStatus.QUEUED

    pause_job(farm, job_id)
    assert cancel_job(farm, job_id).status is JobStatus.CANCELLED
    _, shards, _ = job_rows(farm, job_id)
    assert {s.status for s in shards} == {ShardStatus.CANCELLED}


def test_a_paused_job_whose_running_shard_was_its_last_ends(farm, faces):
    job_id = submit_to(farm, faces, project(farm, "features"), shards=1)
    hands = Farmhands(farm, workers=1)
    hands.run(1)
    pause_job(farm, job_id)

    hands.end_oldest()  # it finished its last batch before it saw the pause

    with farm.sessions.begin() as session:
        assert finish_job_if_done(session, job_id) is JobStatus.SUCCEEDED


@pytest.mark.parametrize("priority", [10, -1, "9", 2.5, True])
def test_a_priority_out_of_range_is_refused(farm, faces, priority):
    job_id = submit_to(farm, faces, project(farm, "features"), shards=1)

    with pytest.raises(InputError, match="priority must be a whole number from 0 to 9"):
        set_priority(farm, job_id, priority)
    assert job_rows(farm, job_id)[0].priority == 5


def test_pausing_resuming_or_reordering_another_projects_job_is_refused(farm, faces):
    theirs = submit_to(farm, faces, project(farm, "features"), shards=1)
    mine = project(farm, "commercials")

    for change in (
        lambda: pause_job(farm, theirs, project_id=mine),
        lambda: resume_job(farm, theirs, project_id=mine),
        lambda: set_priority(farm, theirs, 9, project_id=mine),
    ):
        with pytest.raises(InputError, match="is not in this project"):
            change()
    job, shards, _ = job_rows(farm, theirs)
    assert (job.status, job.priority) == (JobStatus.QUEUED, 5)
    assert {s.status for s in shards} == {ShardStatus.QUEUED}


def test_only_a_waiting_job_pauses_and_only_a_paused_one_resumes(farm, faces):
    job_id = submit_to(farm, faces, project(farm, "features"), shards=1)
    with pytest.raises(InputError, match="only a paused job resumes"):
        resume_job(farm, job_id)
    cancel_job(farm, job_id)

    with pytest.raises(InputError, match="is cancelled; only a queued or running job pauses"):
        pause_job(farm, job_id)
    with pytest.raises(InputError, match="no job"):
        pause_job(farm, "00000000-0000-0000-0000-000000000000")


@pytest.mark.parametrize(
    ("weight", "cap", "message"),
    [
        (0, None, "weight must be a number above 0"),
        (-2, None, "weight must be a number above 0"),
        (float("nan"), None, "weight must be a number above 0"),
        (float("inf"), None, "weight must be a number above 0"),
        (None, 0, "max running shards must be 1 or more"),
    ],
)
def test_a_bad_share_is_refused_and_changes_nothing(farm, weight, cap, message):
    team = project(farm, "features", weight=2)

    with pytest.raises(InputError, match=message), farm.sessions.begin() as session:
        set_share(session, session.get_one(Project, team), weight=weight, cap=cap, uncap=False)

    with farm.sessions() as session:
        row = session.get_one(Project, team)
        assert (row.share_weight, row.max_running_shards) == (2, None)


def test_the_database_refuses_a_weight_that_is_not_positive(farm):
    """The CHECK behind `set_share`: a script writing the row directly cannot starve the claim
    of a weight to divide by."""
    team = project(farm, "features")
    with pytest.raises(IntegrityError), farm.sessions.begin() as session:
        session.get_one(Project, team).share_weight = 0
    with farm.sessions() as session:
        assert session.scalar(select(Project.share_weight).where(Project.id == team)) == 1


# --- Through the worker's own claim and render loop (workers/shard.py), on the tiny preset ----


@pytest.mark.usefixtures("one_torch_thread")
def test_the_worker_takes_the_shard_whose_turn_it_is(farm, faces, tiny):
    runtime = runtime_with(farm, tiny)
    team = project(farm, "features")
    first = submit_to(farm, faces, team, shards=1)
    second = submit_to(farm, faces, team, shards=1)
    set_priority(farm, second, 9)

    assert run_shard(runtime, job_rows(farm, first)[1][0].id).result() == "succeeded"

    assert job_rows(farm, second)[0].status is JobStatus.SUCCEEDED
    assert job_rows(farm, first)[1][0].status is ShardStatus.QUEUED  # the next task's turn


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # row locks
def test_a_turn_whose_shards_stay_held_by_other_claims_is_handed_back(farm, faces, monkeypatch):
    """The task of shard 0 arrives after another turn took shard 0, and the job's one queued
    shard stays held by a claim in flight for all of the turn's looks: the turn is handed
    back naming that shard, instead of being lost until the reaper's pass."""
    monkeypatch.setattr(scheduling, "_LOCKED_LOOKS", 2)
    job = submit_to(farm, faces, project(farm, "features"), shards=2)
    _, (taken, held), _ = job_rows(farm, job)
    with farm.sessions.begin() as session:
        session.get_one(Shard, taken.id).start("other:cpu0", farm.settings.lease_s)

    with farm.sessions.begin() as in_flight, farm.sessions.begin() as session:
        in_flight.get_one(Shard, held.id, with_for_update=True)
        hint = session.get_one(Shard, taken.id, with_for_update=True)
        turn = whose_turn(session, hint, "test:cpu0", utcnow())

    assert isinstance(turn, HeldTurn)
    assert (turn.task.shard_id, turn.task.job_id) == (held.id, job)
    with farm.sessions.begin() as session:  # once the claim in flight let go, it is taken
        hint = session.get_one(Shard, taken.id, with_for_update=True)
        assert whose_turn(session, hint, "test:cpu0", utcnow()).id == held.id


class PausesItsJob:
    """The tiny pipeline, whose first call pauses the job, as a producer would mid-shard."""

    def __init__(self, pipeline, farm: Farm) -> None:
        self.pipeline, self.farm, self.job_id = pipeline, farm, None

    def __call__(self, *args, **kwargs):
        if self.job_id is not None:
            pause_job(self.farm, self.job_id)
            self.job_id = None
        return self.pipeline(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.pipeline, name)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_job_paused_mid_shard_stops_at_its_next_batch_and_resumes(farm, faces, tiny):
    pipeline = PausesItsJob(tiny.pipeline, farm)
    one_at_a_time = replace(tiny, preset=replace(tiny.preset, batch_size=1), pipeline=pipeline)
    runtime = runtime_with(farm, one_at_a_time)
    job_id = submit_to(farm, faces, project(farm, "features"), shards=1)
    pipeline.job_id = job_id

    assert run_shard(runtime, job_rows(farm, job_id)[1][0].id).result() == "paused"

    job, (shard,), renders = job_rows(farm, job_id)
    assert job.status is JobStatus.PAUSED
    assert (shard.status, shard.attempts, shard.worker_id) == (ShardStatus.PAUSED, 0, None)
    assert [r.status for r in renders] == [RenderStatus.DONE, RenderStatus.QUEUED]
    with farm.sessions() as session:
        assert session.get_one(Worker, runtime.name).current_shard_id is None  # holds nothing

    farm.celery.sent.clear()
    resume_job(farm, job_id)
    (task,) = farm.celery.sent
    assert run_shard(runtime, task.args[0]).result() == "succeeded"
    job, (shard,), renders = job_rows(farm, job_id)
    assert (job.status, shard.attempts) == (JobStatus.SUCCEEDED, 1)
    assert {r.status for r in renders} == {RenderStatus.DONE}


def test_the_reaper_resends_a_held_back_shard_only_once_its_project_has_room(farm, faces):
    job_id = submit_to(farm, faces, project(farm, "commercials", cap=1), shards=3)
    hands = Farmhands(farm, workers=3)
    claims = [hands.claim(f"sim:cpu{i}", hands.token()) for i in range(3)]
    (running,) = [c for c in claims if c is not None]  # the other two turns were given up
    _, shards, _ = job_rows(farm, job_id)
    assert [s.sent is None for s in shards if s.status is ShardStatus.QUEUED] == [True, True]
    later = utcnow() + timedelta(seconds=1)  # as if a reaper interval had passed

    assert send_unsent(farm, later, keep=within_caps) == []  # still at its cap

    end_shard(farm, "sim:cpu0", *running, None)
    assert len(send_unsent(farm, later, keep=within_caps)) == 1  # room for one
