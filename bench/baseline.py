"""The bare Temporal baseline of bench/flows.py: start, one activity, wait for a signal, done.

A module of its own (not bench/flows.py, which runs as __main__) so the workflow sandbox can
re-import it by name. The worker runs in its own process, started by `bench/flows.py
--baseline-worker`, so it competes for the CPU the way Herald's worker does.
"""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import sqlite3
    import time

WORKFLOW_TYPE = "BenchBaseline"
SIGNAL = "done"


class Touch:
    """The activity: one row in a scratch SQLite table (WAL), like a delivery row."""

    def __init__(self, path: str) -> None:
        self.path = path
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS touch (workflow_id TEXT PRIMARY KEY, at REAL)")

    @activity.defn(name="bench_touch")
    def touch(self, workflow_id: str) -> None:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            with db:
                db.execute("INSERT OR IGNORE INTO touch VALUES (?, ?)", (workflow_id, time.time()))
        finally:
            db.close()


@workflow.defn(name=WORKFLOW_TYPE)
class BaselineWorkflow:
    def __init__(self) -> None:
        self.done = False

    @workflow.signal(name=SIGNAL)
    def finish(self) -> None:
        self.done = True

    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity(
            "bench_touch",
            workflow.info().workflow_id,
            start_to_close_timeout=timedelta(minutes=2),
        )
        await workflow.wait_condition(lambda: self.done)


async def run_worker(address: str, task_queue: str, scratch: str) -> None:
    from common import serve
    from temporalio.client import Client
    from temporalio.worker import Worker

    client = await Client.connect(address)
    # Herald's worker runs its activities in a pool of 16 threads too (worker.py).
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[BaselineWorkflow],
        activities=[Touch(scratch).touch],
        activity_executor=ThreadPoolExecutor(max_workers=16),
    )
    await serve(worker)
