"""Errors that retrying cannot fix end the step visibly instead of retrying for ever.

Found in production-like testing on PostgreSQL: a webhook step refused at send time recorded a
skip reason longer than `enrollment_step.reason`; the insert failed on every attempt and the
enrollments stayed `running` for good.
"""

import contextlib

import pytest

from herald.core.db import session_scope
from tests.flow_world import start_world
from tests.test_flow_policies import metric_flow
from tests.test_flow_scenarios import email, lapsed_list


@pytest.fixture
async def world(skipping_env, db):
    # Nothing allow-listed: a loopback webhook is refused by the URL check.
    world, worker = await start_world(skipping_env, db, webhook_allow_hosts=[])
    async with worker:
        yield world


def _timeline(world, profile_id: str, step_id: str) -> list[tuple]:
    return [
        tuple(r)
        for r in world.db.rows(
            "SELECT outcome, reason FROM enrollment_step WHERE profile_id = :p AND step_id = :s "
            "AND outcome <> 'entered' ORDER BY id",
            p=profile_id,
            s=step_id,
        )
    ]


def _detail(world, profile_id: str, step_id: str) -> dict:
    with session_scope(world.db.engine) as session:
        from sqlalchemy import select

        from models.flows import EnrollmentStep

        return session.execute(
            select(EnrollmentStep.detail).where(
                EnrollmentStep.profile_id == profile_id,
                EnrollmentStep.step_id == step_id,
                EnrollmentStep.outcome != "entered",
            )
        ).scalar_one()


async def test_a_refused_webhook_records_a_short_reason_and_the_enrollment_goes_on(world):
    world.flow(
        metric_flow(
            {
                "id": "notify",
                "type": "webhook",
                "url": "http://127.0.0.1:9/a-long-path/" + "x" * 80,
            },
            email("after", "still going", smart_sending=False),
        )
    )
    shopper = world.profile("refused@example.com")
    await world.event("Started Checkout", shopper, "refused-1")
    await world.until(lambda: world.enrollments(shopper)[0][1] == "completed")

    assert _timeline(world, shopper, "notify") == [("skipped", "unsafe_url")]
    assert "loopback" in _detail(world, shopper, "notify")["error"]
    assert [s[0] for s in world.sent(shopper)] == ["after"]


@contextlib.contextmanager
def refusing(db, table: str, when: str = "true"):
    """The database refuses the rows of `table` for which the SQL condition `when` (on NEW)
    holds: a constraint no retry can satisfy."""
    name = f"refuse_{table}"
    if db.backend == "sqlite":
        db.execute(
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} WHEN {when} "
            "BEGIN SELECT RAISE(ABORT, 'refused by a constraint'); END"
        )
    else:
        db.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF {when} THEN RAISE EXCEPTION 'refused by a constraint' "
            "USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$"
        )
        db.execute(
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()"
        )
    try:
        yield
    finally:
        db.execute(f"DROP TRIGGER {name}" + ("" if db.backend == "sqlite" else f" ON {table}"))
        if db.backend == "postgres":
            db.execute(f"DROP FUNCTION {name}()")


@pytest.fixture
def refusing_list_membership(db):
    with refusing(db, "list_membership"):
        yield


async def test_a_step_the_database_refuses_fails_and_the_walk_goes_on(
    world, refusing_list_membership
):
    list_id = await lapsed_list(world)
    world.flow(
        metric_flow(
            {"id": "tag", "type": "add_to_list", "list_id": list_id},
            email("after", "still going", smart_sending=False),
        )
    )
    shopper = world.profile("refused-list@example.com")
    await world.event("Started Checkout", shopper, "list-1")
    await world.until(lambda: world.enrollments(shopper)[0][1] == "completed")

    assert _timeline(world, shopper, "tag") == [("failed", "error")]
    assert "refused by a constraint" in _detail(world, shopper, "tag")["error"]
    assert [s[0] for s in world.sent(shopper)] == ["after"]


def test_only_errors_no_retry_can_fix_are_permanent():
    from sqlalchemy.exc import DataError, IntegrityError, OperationalError

    from herald.core.activity_errors import permanent_reason
    from herald.delivery.templates import TemplateError

    too_long = DataError("INSERT ...", {"reason": "x" * 100}, Exception("value too long\nDETAIL"))
    assert permanent_reason(too_long) == "Exception: value too long"
    assert permanent_reason(IntegrityError("INSERT ...", {}, Exception("duplicate key")))
    assert permanent_reason(TemplateError("output limit"))
    # About the moment, not the input: retried with back-off.
    assert permanent_reason(OperationalError("SELECT 1", {}, Exception("timeout"))) is None
    assert permanent_reason(ConnectionError("reset")) is None


@pytest.fixture
def refusing_timeline_lines(db):
    """The lines of the message step `after` (the last one, written as the enrollment closes)
    are refused; the line that says so is not."""
    when = "NEW.step_id = 'after' AND NEW.outcome <> 'entered' AND NEW.step_type <> 'timeline'"
    with refusing(db, "enrollment_step", when):
        yield


async def test_an_enrollment_closes_even_when_its_last_lines_are_refused(
    world, refusing_timeline_lines
):
    world.flow(metric_flow(email("after", "the last step", smart_sending=False)))
    shopper = world.profile("refused-lines@example.com")
    await world.event("Started Checkout", shopper, "lines-1")
    await world.until(lambda: world.enrollments(shopper)[0][1] == "completed")

    assert [s[0] for s in world.sent(shopper)] == ["after"]
    lines = world.db.rows(
        "SELECT step_type, outcome, reason FROM enrollment_step WHERE profile_id = :p "
        "AND outcome = 'failed'",
        p=shopper,
    )
    assert [tuple(r) for r in lines] == [("timeline", "failed", "error")]
