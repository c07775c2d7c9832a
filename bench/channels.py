"""Channel benchmark: Herald's send path against the same messages sent raw, per provider.

Against local partners started here: an aiosmtpd sink (SMTP, in a process of its own, as a
relay would be) and a fake Twilio answering after 50 ms (tests/fakes/twilio.py on a real HTTP
server). For concurrency 1, 8 and 32, it times
  - raw: aiosmtplib / httpx sending the same messages with that many connections/requests (the
    SMTP messages built before the clock starts, sent with send_message), and for SMTP the
    floor: the same flattened to bytes beforehand too and sent with sendmail (transport alone);
  - Herald: the `send_page` activity (activities/campaigns.py) on a migrated SQLite database,
    pages of 1,000: audience query, policy, Liquid, claim, provider call with no transaction
    open, record. Both run in this process, so they share the same interpreter and CPU.
and prints messages/s and Herald/raw. Then the render time per message of a 30 KB HTML email
with 20 links (herald/delivery/rendering.py). Last, with --campaign N (default 100,000): the
whole stack (`herald dev`, SQLite) sends an N-recipient email campaign over SMTP to the sink,
while single events are posted to the API; their p99 is compared with the idle p99.

  make bench-channels   # or: .venv/bin/python bench/channels.py [--messages N] [--campaign N]
"""

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

# The repository root, for tests/fakes/twilio.py (the fake Twilio the tests use too).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiosmtplib  # noqa: E402
import httpx  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402
from common import Stack, free_port, log, percentile, save  # noqa: E402

TWILIO_LATENCY = 0.05
ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "bench-token"


class _Sink:
    """Accepts and counts messages (aiosmtpd handler)."""

    def __init__(self, count) -> None:
        self.count = count  # a multiprocessing.Value the bench reads

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        with self.count.get_lock():
            self.count.value += 1
        return "250 OK"


def _serve_sink(port: int, count, ready) -> None:
    controller = Controller(_Sink(count), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    threading.Event().wait()  # until the bench terminates the process


class SinkProcess:
    """An aiosmtpd sink in a process of its own, so it does not share the interpreter lock
    with the sender being measured (raw or Herald), as a real relay would not."""

    def __init__(self) -> None:
        self.port = free_port()
        self._count = multiprocessing.Value("q", 0)
        ready = multiprocessing.Event()
        self._process = multiprocessing.Process(
            target=_serve_sink, args=(self.port, self._count, ready), daemon=True
        )
        self._process.start()
        if not ready.wait(30):
            raise RuntimeError("the SMTP sink did not start")

    @property
    def count(self) -> int:
        return int(self._count.value)

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(10)


# ---- raw baselines ------------------------------------------------------------------------------


def raw_email(i: int) -> EmailMessage:
    email = EmailMessage()
    email["From"] = "shop@bench.test"
    email["To"] = f"p{i}@bench.test"
    email["Subject"] = f"Hello N{i}"
    email["Message-ID"] = f"<{i}@bench.test>"
    email.set_content(f"Hello N{i}, the sale is on.")
    email.add_alternative(f"<p>Hello N{i}, the sale is on.</p>", subtype="html")
    return email


async def raw_smtp(port: int, count: int, concurrency: int, floor: bool = False) -> float:
    """aiosmtplib's send_message of messages built before the clock starts; `floor`: sendmail
    of messages flattened to bytes before it too (the transport alone)."""
    built = [(f"p{i}@bench.test", raw_email(i)) for i in range(count)]
    flat = [(to, m.as_bytes(policy=SMTP_POLICY)) for to, m in built] if floor else []
    started = time.perf_counter()

    async def connection(c: int) -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) as smtp:
            if floor:
                for to, data in flat[c::concurrency]:
                    await smtp.sendmail("shop@bench.test", [to], data)
            else:
                for _, message in built[c::concurrency]:
                    await smtp.send_message(message)

    await asyncio.gather(*(connection(c) for c in range(concurrency)))
    return time.perf_counter() - started


async def raw_twilio(url: str, count: int, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)
    path = f"{url}/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(auth=(ACCOUNT, TOKEN), limits=limits) as client:
        started = time.perf_counter()

        async def one(i: int) -> None:
            async with gate:
                form = {"To": f"+3161{i:07d}", "From": "+15005550006", "Body": f"Hi N{i}"}
                response = await client.post(path, data=form)
                response.raise_for_status()

        await asyncio.gather(*(one(i) for i in range(count)))
        return time.perf_counter() - started


# ---- Herald -------------------------------------------------------------------------------------


class HeraldWorld:
    """A migrated SQLite database with `count` subscribed profiles, and one list per audience
    size holding the first that many."""

    def __init__(self, count: int, sizes: set[int]):
        from sqlalchemy import insert

        from herald.cli.migrate import upgrade
        from herald.core.db import make_engine, session_scope
        from herald.core.ids import new_id
        from models.account import Account
        from models.lists import ListMembership, ProfileList
        from models.profile import Consent, Profile
        from models.types import utcnow

        self.lists: dict[int, str] = {}  # audience size -> a list of the first that many
        self.dir = tempfile.TemporaryDirectory(prefix="herald-bench-channels-")
        self.engine = make_engine(f"sqlite:///{Path(self.dir.name) / 'herald.db'}")
        upgrade(self.engine)
        now = utcnow()
        ids = [f"pr_{i:08d}" for i in range(count)]
        with session_scope(self.engine) as session:
            account = session.get(Account, 1)
            account.smart_sending_hours = {"email": 0, "sms": 0, "whatsapp": 0, "push": 0}
            # No quiet hours: a run at night would otherwise skip every text.
            account.quiet_hours_start = account.quiet_hours_end = "00:00"
            session.add(account)
            for size in sorted(sizes | {count}):
                self.lists[size] = new_id("li")
                session.add(ProfileList(id=self.lists[size], name=f"first {size}"))
            session.flush()
            session.execute(
                insert(Profile.__table__),
                [
                    {
                        "id": pid,
                        "external_id": None,
                        "email": f"{pid}@bench.test",
                        "phone": f"+3161{i:07d}",
                        "anonymous_id": None,
                        "first_name": f"N{i}",
                        "last_name": None,
                        "timezone": "UTC",
                        "push_tokens": [],
                        "properties": {},
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i, pid in enumerate(ids)
                ],
            )
            session.execute(
                insert(Consent.__table__),
                [
                    {
                        "profile_id": pid,
                        "channel": channel,
                        "status": "subscribed",
                        "source": "bench",
                        "updated_at": now,
                    }
                    for pid in ids
                    for channel in ("email", "sms")
                ],
            )
            session.execute(
                insert(ListMembership.__table__),
                [
                    {"list_id": list_id, "profile_id": p, "added_at": now}
                    for size, list_id in self.lists.items()
                    for p in ids[:size]
                ],
            )

    def send_all(self, count: int, channel: str, provider) -> float:
        """Sends one campaign message to the list's first `count` profiles through send_page;
        seconds taken."""
        from activities.campaigns import CampaignActivities
        from herald.campaigns.contract import (
            CampaignSettings,
            MessageSnapshot,
            PageRequest,
            PathSnapshot,
            Wave,
        )
        from herald.core.config import Settings
        from herald.core.db import session_scope
        from herald.core.ids import new_id
        from herald.flows.graph import MessageContent
        from models.campaigns import Campaign, CampaignMessage, CampaignPath
        from models.types import utcnow

        content = MessageContent(
            subject="Hello {{ profile.first_name }}" if channel == "email" else None,
            body=(
                "<p>Hello {{ profile.first_name }}, the sale is on.</p>"
                if channel == "email"
                else "Hi {{ profile.first_name }}, the sale is on"
            ),
            sender="shop@bench.test" if channel == "email" else None,
        )
        message = MessageSnapshot(
            id=new_id("cm"), channel=channel, content=content, send_at_local="2026-01-01T09:00"
        )
        path = PathSnapshot(
            id=new_id("pa"),
            position=0,
            name="all",
            include_lists=[self.lists[count]],
            messages=[message],
        )
        settings = CampaignSettings(campaign_id=new_id("cp"), name="bench", path_order=[path.id])
        with session_scope(self.engine) as session:
            session.add(Campaign(id=settings.campaign_id, name="bench", status="scheduled"))
            session.flush()
            session.add(
                CampaignPath(id=path.id, campaign_id=settings.campaign_id, position=0, name="all")
            )
            session.flush()
            session.add(
                CampaignMessage(
                    id=message.id,
                    campaign_id=settings.campaign_id,
                    path_id=path.id,
                    position=0,
                    channel=channel,
                    content=content.model_dump(),
                    send_at_local=message.send_at_local,
                    status="scheduled",
                )
            )
        acts = CampaignActivities(self.engine, Settings(), providers={channel: provider})
        cursor, sent = None, 0
        started = time.perf_counter()
        try:
            while True:
                request = PageRequest(
                    settings=settings,
                    path=path,
                    all_paths=[path],
                    message_id=message.id,
                    wave=Wave(at=utcnow()),
                    after_profile_id=cursor,
                    sent_in_wave=sent,
                    now=utcnow(),
                )
                page = _with_retries(acts, request)
                sent += page.sent
                cursor = page.last_profile_id
                if page.done:
                    break
            return time.perf_counter() - started
        finally:
            acts.hub.close()


def _with_retries(acts, request):
    """send_page as Temporal would run it: a page that ran out of time is retried at once."""
    from temporalio.exceptions import ApplicationError

    while True:
        try:
            return acts.send_page(request)
        except ApplicationError as exc:
            if exc.type != "ProviderUnavailable":
                raise
            log(f"page retried: {exc}")


# ---- driver -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; medians shown")
    parser.add_argument(
        "--campaign", type=int, default=100_000, help="recipients of the whole-stack run; 0: skip"
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    from herald.delivery.providers.smtp import SmtpConfig, SmtpProvider
    from herald.delivery.providers.twilio import TwilioConfig, TwilioProvider
    from tests.fakes.twilio import fake_twilio

    sink = SinkProcess()
    port = sink.port
    rows: list[dict] = []
    # Twilio answers after 50 ms: a few seconds' worth of messages per run at each concurrency.
    counts = {"smtp": lambda c: args.messages, "twilio": lambda c: min(args.messages, 60 * c)}
    log(f"seeding {args.messages} profiles")
    world = HeraldWorld(args.messages, {counts[n](c) for n in counts for c in levels})
    try:
        with fake_twilio(ACCOUNT, auth_token=TOKEN, latency=TWILIO_LATENCY) as twilio:
            for c in levels:
                for name, raw, floor, herald in (
                    (
                        "smtp",
                        lambda n, c=c: asyncio.run(raw_smtp(port, n, c)),
                        lambda n, c=c: asyncio.run(raw_smtp(port, n, c, floor=True)),
                        lambda n, c=c: world.send_all(
                            n,
                            "email",
                            SmtpProvider(
                                SmtpConfig(
                                    host="127.0.0.1",
                                    port=port,
                                    tls="none",
                                    sender="shop@bench.test",
                                    pool_size=c,
                                    max_messages_per_connection=100_000,
                                )
                            ),
                        ),
                    ),
                    (
                        "twilio",
                        lambda n, c=c: asyncio.run(raw_twilio(twilio.url, n, c)),
                        None,  # the raw requests are the floor
                        lambda n, c=c: world.send_all(
                            n,
                            "sms",
                            TwilioProvider(
                                TwilioConfig(
                                    account_sid=ACCOUNT,
                                    auth_token=TOKEN,
                                    from_number="+15005550006",
                                    base_url=twilio.url,
                                    concurrency=c,
                                    per_second=None,
                                )
                            ),
                        ),
                    ),
                ):
                    raw_s, floor_s, herald_s = [], [], []
                    count = counts[name](c)
                    for _ in range(args.repeat):  # alternate, so drift hits all alike
                        raw_s.append(raw(count))
                        if floor is not None:
                            floor_s.append(floor(count))
                        herald_s.append(herald(count))
                    raw_rate = count / statistics.median(raw_s)
                    floor_rate = count / statistics.median(floor_s) if floor_s else raw_rate
                    herald_rate = count / statistics.median(herald_s)
                    rows.append(
                        {
                            "provider": name,
                            "concurrency": c,
                            "messages": count,
                            "raw_per_s": raw_rate,
                            "floor_per_s": floor_rate,
                            "herald_per_s": herald_rate,
                            "ratio": herald_rate / raw_rate,
                            "floor_ratio": herald_rate / floor_rate,
                        }
                    )
                    log(f"{name} x{c}: raw {raw_rate:,.0f}/s, Herald {herald_rate:,.0f}/s")
    finally:
        sink.stop()

    render_ms = render_time()
    print()
    print(
        f"median of {args.repeat} runs per cell; Twilio answers after 50 ms; floor: SMTP "
        "messages flattened to bytes before the clock (the transport alone)"
    )
    print(
        f"{'provider':<9}{'conc':>5}{'messages':>9}{'raw msg/s':>12}{'floor msg/s':>13}"
        f"{'Herald msg/s':>14}{'Herald/raw':>12}{'Herald/floor':>14}"
    )
    for row in rows:
        print(
            f"{row['provider']:<9}{row['concurrency']:>5}{row['messages']:>9}"
            f"{row['raw_per_s']:>12,.0f}{row['floor_per_s']:>13,.0f}"
            f"{row['herald_per_s']:>14,.0f}{row['ratio']:>11.2f}x{row['floor_ratio']:>13.2f}x"
        )
    print(f"render: {render_ms:.2f} ms per message (30 KB HTML email, 20 links, Liquid)")
    checks = [
        (f"Herald >= 0.7x raw at concurrency {c} ({r['provider']})", r["ratio"] >= 0.7)
        for r in rows
        for c in [r["concurrency"]]
        if c == max(levels)
    ]
    whole = asyncio.run(campaign_over_smtp(args.campaign)) if args.campaign else None
    if whole is not None:
        print(
            f"campaign over SMTP (whole stack, SQLite): {whole['recipients']:,} recipients in "
            f"{whole['seconds']:.1f} s = {whole['per_s']:,.0f} messages/s; single-event p99 "
            f"{whole['busy_p99_ms']:.1f} ms during the send vs {whole['idle_p99_ms']:.1f} ms idle "
            f"({whole['busy_p99_ms'] / whole['idle_p99_ms']:.2f}x, {whole['busy_events']} events)"
        )
        checks += [
            ("campaign >= 2,000 messages/s", whole["per_s"] >= 2000),
            (
                "ingest p99 during the send within 1.5x of idle",
                whole["busy_p99_ms"] <= 1.5 * whole["idle_p99_ms"],
            ),
        ]
    for label, ok in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {label}")
    save("channels", {"rows": rows, "render_ms": render_ms, "campaign": whole})


# ---- a whole campaign over SMTP, with ingest beside it ----------------------------------------


async def post_events(stack, run: str, count: int, pause: float) -> list[float]:
    """`count` single events, one at a time with `pause` between: latencies in ms."""
    conn = stack.connection("write_key")
    latencies = []
    try:
        for i in range(count):
            body = {
                "metric": "Viewed Product",
                "profile": {"external_id": f"bench-{i % 500}"},
                "properties": {"sku": f"SKU-{i % 97}"},
                "unique_id": f"{run}-{i}",
            }
            started = time.perf_counter()
            status, _ = await conn.json("POST", "/v1/events", body)
            latencies.append((time.perf_counter() - started) * 1000)
            if status >= 400:
                raise RuntimeError(f"event refused: {status}")
            await asyncio.sleep(pause)
    finally:
        conn.close()
    return latencies


def one_email_campaign(engine, list_id: str):
    from herald.campaigns import snapshot
    from herald.core.db import session_scope
    from herald.core.ids import new_id
    from models.campaigns import Campaign, CampaignMessage, CampaignPath
    from models.types import utcnow

    campaign_id, path_id = new_id("cp"), new_id("pa")
    with session_scope(engine) as session:
        session.add(
            Campaign(
                id=campaign_id, name="Bench channels", status="scheduled", scheduled_at=utcnow()
            )
        )
        session.flush()
        session.add(
            CampaignPath(
                id=path_id, campaign_id=campaign_id, position=0, name="All", include_lists=[list_id]
            )
        )
        session.flush()
        session.add(
            CampaignMessage(
                id=new_id("cm"),
                campaign_id=campaign_id,
                path_id=path_id,
                position=0,
                channel="email",
                content={
                    "subject": "The drop is live, {{ profile.first_name }}",
                    "body": "<p>Hi {{ profile.first_name }}, the Aurora runner is out.</p>",
                    "sender": "drops@shoes.example.com",
                },
                send_at_local="2020-01-01T00:00",  # passed: sent at once
                smart_sending=False,
                status="scheduled",
            )
        )
    with session_scope(engine) as session:
        return snapshot.snapshot(session, campaign_id, search_attributes=True)


async def campaign_over_smtp(recipients: int) -> dict:
    from campaigns import seed
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter

    from herald.campaigns.contract import CAMPAIGN_WORKFLOW, campaign_workflow_id
    from herald.core.config import Settings
    from herald.core.db import make_engine
    from herald.core.search_attributes import attributes

    sink = SinkProcess()
    port = sink.port
    os.environ.update(
        HERALD_EMAIL_PROVIDER="smtp",
        HERALD_SMTP_HOST="127.0.0.1",
        HERALD_SMTP_PORT=str(port),
        HERALD_SMTP_TLS="none",
        HERALD_SMTP_SENDER="drops@shoes.example.com",
        HERALD_SMTP_POOL_SIZE="8",
    )
    stack = Stack()
    try:
        engine = make_engine(f"sqlite:///{stack.sqlite_path}")
        log(f"seeding {recipients:,} profiles")
        list_id, _, _ = seed(engine, recipients, "UTC", "ch")
        plan = one_email_campaign(engine, list_id)
        client = await Client.connect(
            stack.temporal_address, data_converter=pydantic_data_converter
        )
        idle = await post_events(stack, "idle", 300, 0.02)
        log("sending the campaign")
        started = time.perf_counter()
        await client.start_workflow(
            CAMPAIGN_WORKFLOW,
            plan,
            id=campaign_workflow_id(plan.settings.campaign_id),
            task_queue=Settings().task_queue,
            search_attributes=attributes(kind="campaign", campaign_id=plan.settings.campaign_id),
        )
        busy: list[float] = []
        while sink.count < recipients:
            busy += await post_events(stack, f"busy{len(busy)}", 20, 0.02)
            if time.perf_counter() - started > 1800:
                raise RuntimeError(f"only {sink.count} of {recipients} arrived in 30 min")
        seconds = time.perf_counter() - started
    finally:
        stack.stop()
        sink.stop()
    return {
        "recipients": recipients,
        "seconds": seconds,
        "per_s": recipients / seconds,
        "received": sink.count,
        "idle_p99_ms": percentile(idle, 0.99),
        "busy_p99_ms": percentile(busy, 0.99),
        "busy_events": len(busy),
    }


def render_time(count: int = 300) -> float:
    from herald.delivery.rendering import render_content
    from herald.delivery.templates import template_variables
    from herald.flows.graph import MessageContent

    links = "".join(
        f'<p><a href="https://shop.test/p/{i}?utm=x">Product {i} for {{{{ profile.first_name }}}}'
        "</a></p>"
        for i in range(20)
    )
    filler = "<p>" + "Lorem ipsum dolor sit amet. " * 40 + "</p>"
    html = "<html><body>" + links + filler * ((30_000 - len(links)) // len(filler)) + "</body>"
    content = MessageContent(subject="Hi {{ profile.first_name }}", body=html)
    variables = template_variables({"first_name": "Ada", "email": "ada@bench.test"}, {})
    started = time.perf_counter()
    for _ in range(count):
        render_content(content, variables)
    return (time.perf_counter() - started) / count * 1000


if __name__ == "__main__":
    main()
