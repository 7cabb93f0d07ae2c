"""Persistence of runs and iterations through SQLAlchemy, on SQLite and on PostgreSQL."""

import pytest
from sqlalchemy import select

from jobs.config import SpinConfig
from services.control_plane import store
from services.control_plane.db import Iteration, IterationState, Run, RunState, make_engine, make_sessionmaker
from services.control_plane.errors import Conflict, Invalid, NotFound


def config(storage="/data/runs/a", iterations=2):
    return SpinConfig.model_validate(
        {
            "name": "persist",
            "storage_uri": storage,
            "model": {"path": "/m"},
            "data": {"path": "/d.jsonl"},
            "iterations": [{}] * iterations,
        }
    )


def test_runs_survive_a_restart_intact(database_url):
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as s:
        run = store.create_run(s, config())
        run_id = run.id
        store.launch(s, run, 2)
        first = store.get_iteration(run, 0)
        first.state, first.job_id, first.attempts = IterationState.SUCCEEDED, "spin-x-iter0-try1", 1
        first.metrics = {"train": {"final": {"loss": 0.5, "rewards/accuracies": 0.75}}, "nested": [1, 2.5, None]}
        first.progress = {"completed": 3, "total": 3, "info": {"loss": 0.61}}
    engine.dispose()

    engine = make_engine(database_url)  # a new process would do exactly this
    with make_sessionmaker(engine).begin() as s:
        run = store.get_run(s, run_id)
        assert run.state == RunState.RUNNING and run.num_iterations == 2 and run.config["name"] == "persist"
        assert [(it.index, it.state) for it in run.iterations] == [
            (0, IterationState.SUCCEEDED),
            (1, IterationState.PENDING),
        ]
        it = run.iterations[0]
        assert it.metrics == {"train": {"final": {"loss": 0.5, "rewards/accuracies": 0.75}}, "nested": [1, 2.5, None]}
        assert it.progress["info"] == {"loss": 0.61} and it.job_id == "spin-x-iter0-try1"
        assert run.created_at.tzinfo is not None
        assert SpinConfig.model_validate(run.config) == config()
    engine.dispose()


def test_rules_of_launch_cancel_and_delete(database_url):
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as s:
        run = store.create_run(s, config())
        with pytest.raises(
            Conflict, match="writes to /data/runs/a, which is or holds /data/runs/a: give this run its own storage_uri"
        ):
            store.create_run(s, config())
        with pytest.raises(Invalid, match="at most 2 more can be launched"):
            store.launch(s, run, 3)
        store.launch(s, run, 1)
        with pytest.raises(Conflict, match="already has an iteration queued or running"):
            store.launch(s, run, 1)
        with pytest.raises(Conflict, match="cancel it before deleting"):
            store.delete_run(s, run)
        assert store.cancel(run) == []  # nothing was submitted yet, so no job to stop
        assert run.state == RunState.CANCELLED and run.iterations[0].state == IterationState.CANCELLED
        # A cancelled iteration is launched again in place (it resumes from storage).
        store.launch(s, run, 1)
        assert [it.index for it in run.iterations] == [0] and run.iterations[0].state == IterationState.PENDING
        run.iterations[0].state = IterationState.SUCCEEDED
        store.settle_run(run)
        assert run.state == RunState.IDLE
        store.launch(s, run, 1)
        run.iterations[1].state = IterationState.SUCCEEDED
        store.settle_run(run)
        assert run.state == RunState.COMPLETED
        run_id = run.id
    with sessions.begin() as s:
        store.delete_run(s, store.get_run(s, run_id))
    with sessions.begin() as s:
        with pytest.raises(NotFound):
            store.get_run(s, run_id)
        assert s.scalars(select(Iteration)).all() == []  # deleted with their run
        assert s.scalars(select(Run)).all() == []
    engine.dispose()


def test_a_write_based_on_a_stale_read_is_refused(database_url):
    """The reconciler and the API write the same rows: the later, stale writer must fail, not win."""
    from sqlalchemy.orm.exc import StaleDataError

    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as s:
        run = store.create_run(s, config(storage="/data/runs/race"))
        store.launch(s, run, 1)
        run_id = run.id
    reconciler = sessions()
    seen = reconciler.get(Run, run_id)
    seen.iterations[0].stage = "train"  # the reconciler read RUNNING and is about to record progress
    with sessions.begin() as api:
        store.cancel(store.get_run(api, run_id))
    with pytest.raises(StaleDataError):
        reconciler.commit()
    reconciler.rollback()
    reconciler.close()
    with sessions.begin() as s:
        run = store.get_run(s, run_id)
        assert run.state == RunState.CANCELLED and run.iterations[0].state == IterationState.CANCELLED
        assert run.iterations[0].stage is None
    engine.dispose()
