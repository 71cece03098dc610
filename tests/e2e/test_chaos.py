"""Chaos: many requests while every process type is killed and restarted, Redis is paused and
restarted from its AOF, and the providers and the callback receiver fail now and then.

The Procfile's processes (gunicorn ``web``, ``rq worker-pool`` ``worker`` pools, the janitor as
``scheduler``) run against a Redis of the test's own and the fakes. A seeded schedule of faults
plays while the requests come in, each id posted one to three times. Then every accepted request
must be called back, and the fakes' own logs must show nothing paid twice and one outcome per
request. The seed is printed; ``I2V_CHAOS_SEED=<seed>`` replays the same schedule of faults and
submissions (the processes' own timing still varies from run to run).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import secrets
import signal
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import requests
from rq.exceptions import SchedulerNotFound
from rq.scheduler import RQScheduler

from launch import free_port
from tests.fakes import Fakes, Fault
from tests.helpers import OwnRedis, ServiceProcess, descendants

pytestmark = pytest.mark.e2e

SEED_VARIABLE = "I2V_CHAOS_SEED"
QUEUE = "i2v"
#: Distinct request ids; each is posted one to three times.
REQUESTS = 50
#: Seconds over which the submissions are spread, and over which the faults play.
SUBMIT_SECONDS = 55.0
CHAOS_SECONDS = 70.0
#: After the last fault: how long every accepted request has to be called back.
RECOVERY_TIMEOUT = 75.0
#: Seconds one submission keeps retrying (connection errors, 503) before the test gives up on it.
SUBMIT_PATIENCE = 40.0
REDIS_PAUSE = 4.0
WORKER_POOLS = 2
#: Quiet time after everything settled in which a late duplicate callback would show up.
DUPLICATE_GRACE = 1.0
HTTP_TIMEOUT = 10.0
SIGNING_SECRET = "whsec_" + base64.b64encode(b"chaos-test-signing-key-0123456789").decode()

#: Short timings so that the whole test fits in about three minutes; deadlines far enough away
#: for a request whose worker was SIGKILLed to be found (heartbeat + 15 s) and still finish.
SETTINGS = {
    "I2V_QUEUE": QUEUE,
    "WORKER_PROCESSES": "3",
    "WEB_CONCURRENCY": "2",
    "INITIAL_WAIT_TIME": "0.5",
    "POLL_INTERVAL": "0.3",
    "MAX_CHECK_TIME": "90",
    "CAPTION_TIMEOUT": "60",
    "CAPTION_POLL_INTERVAL": "0.1",
    "PROVIDER_RETRY_BUDGET": "10",
    "RETRY_BASE_DELAY": "0.1",
    "HTTP_CONNECT_TIMEOUT": "2",
    "HTTP_READ_TIMEOUT": "5",
    "CALLBACK_RETRY_DELAYS": "0.5,0.5,1,1,1,2,2,2,3,3",
    "CALLBACK_SIGNING_SECRET": SIGNING_SECRET,
    "JANITOR_INTERVAL": "0.5",
    "JANITOR_GRACE": "1",
    "WORKER_HEARTBEAT_INTERVAL": "1",
}

#: (fake, route, fault, share of requests): only answers that mean "not accepted", or reads, so a
#: retry can never pay twice.
FLAKES: list[tuple[str, str, Fault, float]] = [
    ("replicate", "create", Fault.error(503), 0.10),
    ("replicate", "get", Fault.error(500), 0.10),
    ("pika", "generate", Fault.throttled(retry_after=0.5), 0.10),
    ("pika", "job", Fault.error(500), 0.10),
    ("game", "callback", Fault.error(503), 0.30),
]

#: Faults of each half of the run, shuffled within the half. Each half kills the holder of
#: ``rq:scheduler-lock:<queue>`` on purpose: callback retries wait for whoever holds it next.
FIRST_HALF = ["kill lock holder", "term pool", "kill pool", "kill janitor", "term web", "pause redis", "kill redis"]
#: "kill pool on resume": every idle worker takes a job the moment Redis answers again, and one pool
#: dies right then, between taking its jobs and starting them.
SECOND_HALF = ["kill lock holder", "term lock holder", "kill pool on resume", "term janitor", "kill web", "pause redis"]


@dataclass
class Cluster:
    """The running Procfile processes, restarted as a platform would after each kill."""

    start_process: Callable[..., ServiceProcess]
    redis: OwnRedis
    runtime_dir: Path
    web: ServiceProcess | None = None
    web_url: str = ""
    janitor: ServiceProcess | None = None
    pools: list[ServiceProcess] = field(default_factory=list)

    def start(self, kind: str, **extra: str) -> ServiceProcess:
        """Start one Procfile process on the chaos Redis with the chaos settings."""
        return self.start_process(kind, REDIS_URL=self.redis.url, **SETTINGS, **extra)

    def start_web(self) -> None:
        """A new ``web`` on a new port (a new dyno behind the router); clients follow ``web_url``."""
        port = free_port()
        self.web = self.start("web", HOST="127.0.0.1", PORT=str(port), XDG_RUNTIME_DIR=str(self.runtime_dir))
        self.web_url = f"http://127.0.0.1:{port}"

    def start_all(self) -> None:
        """Web, janitor and the worker pools."""
        self.start_web()
        self.janitor = self.start("scheduler")
        self.pools = [self.start("worker") for _ in range(WORKER_POOLS)]

    def stop(self, process: ServiceProcess, sig: int) -> None:
        """SIGKILL (at once, the whole tree) or SIGTERM (to every process, not waiting) a process."""
        if sig == signal.SIGKILL:
            process.kill()
        else:
            process.signal(sig)

    def replace_pool(self, pool: ServiceProcess, sig: int) -> None:
        """Stop a worker pool and start another in its place."""
        self.stop(pool, sig)
        self.pools.remove(pool)
        self.pools.append(self.start("worker"))

    def replace_janitor(self, sig: int) -> None:
        """Stop the janitor and start another."""
        assert self.janitor is not None
        self.stop(self.janitor, sig)
        self.janitor = self.start("scheduler")

    def replace_web(self, sig: int) -> None:
        """Stop the web process and start another."""
        assert self.web is not None
        self.stop(self.web, sig)
        self.start_web()

    def processes(self) -> list[ServiceProcess]:
        """Every live process of the cluster."""
        return [p for p in [self.web, self.janitor, *self.pools] if p is not None]

    def lock_holder(self) -> tuple[ServiceProcess | None, str]:
        """The process (pool or janitor) whose tree holds ``rq:scheduler-lock:<queue>``, and the lock's value."""
        conn = self.redis.connect()
        try:
            owner = conn.get(RQScheduler.get_locking_key(QUEUE))
            if owner is None:
                return None, "nobody"
            name = owner.decode()
            pids = set()
            with contextlib.suppress(SchedulerNotFound):
                pids.add(RQScheduler.fetch(name, conn).pid)
        finally:
            conn.close()
        # The service's own mover names its process in the lock: ``i2v:<host>:<pid>:<random>``.
        if name.startswith("i2v:") and name.count(":") >= 3 and name.rsplit(":", 2)[1].isdigit():
            pids.add(int(name.rsplit(":", 2)[1]))
        for process in self.processes():
            if process.proc is not None and pids & {process.proc.pid, *descendants(process.proc.pid)}:
                return process, name
        return None, name


@dataclass
class Chaos:
    """The seeded schedule of faults and what playing it did."""

    cluster: Cluster
    rng: random.Random
    started: float = field(default_factory=time.monotonic)
    done: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def schedule(self) -> list[tuple[float, str]]:
        """(seconds from the start, fault) for both halves, each half's faults spread over it."""
        plan = []
        half = CHAOS_SECONDS / 2
        for offset, names in ((0.0, FIRST_HALF), (half, SECOND_HALF)):
            names = list(names)
            self.rng.shuffle(names)
            slot = half / len(names)
            plan += [(offset + slot * (i + self.rng.uniform(0.3, 0.7)), name) for i, name in enumerate(names)]
        return plan

    def play(self, plan: list[tuple[float, str]]) -> None:
        """Play every fault at its time (run in a thread; errors are kept for the test to raise)."""
        try:
            for at, name in plan:
                delay = self.started + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                began = time.monotonic() - self.started
                what = self.fault(name)
                self.done.append(f"{began:5.1f}-{time.monotonic() - self.started:5.1f}s {name}: {what}")
        except BaseException:
            self.errors.append(traceback.format_exc())

    def fault(self, name: str) -> str:
        """Do one fault; say what it hit."""
        cluster = self.cluster
        sig = signal.SIGKILL if name.startswith("kill") else signal.SIGTERM
        if name.endswith("lock holder"):
            holder, owner = cluster.lock_holder()
            if holder is None:
                # Nobody (alive) holds the lock: scheduled work waits for the lock to expire.
                pool = self.rng.choice(cluster.pools)
                cluster.replace_pool(pool, sig)
                return f"lock held by {owner!r}, no live process of ours; stopped a pool instead"
            if holder is cluster.janitor:
                cluster.replace_janitor(sig)
            else:
                cluster.replace_pool(holder, sig)
            return f"stopped the {holder.kind} holding the lock ({owner})"
        if name.endswith("pool"):
            cluster.replace_pool(self.rng.choice(cluster.pools), sig)
        elif name.endswith("janitor"):
            cluster.replace_janitor(sig)
        elif name.endswith("web"):
            cluster.replace_web(sig)
        elif name == "pause redis":
            cluster.redis.pause(REDIS_PAUSE)
        elif name == "kill pool on resume":
            cluster.redis.pause(REDIS_PAUSE)
            time.sleep(self.rng.uniform(0, 0.05))
            cluster.replace_pool(self.rng.choice(cluster.pools), signal.SIGKILL)
        elif name == "kill redis":
            cluster.redis.kill_and_restart()
        else:
            raise ValueError(name)
        return "done"


@dataclass
class Submissions:
    """What the callers were told: accepted ids and anything unexpected."""

    accepted: dict[str, float] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def post(self, cluster: Cluster, request_id: str, image: str) -> None:
        """Post one submission until the service answers 202 or 200 (retrying outages, as callers do)."""
        deadline = time.monotonic() + SUBMIT_PATIENCE
        while time.monotonic() < deadline:
            try:
                resp = requests.post(
                    f"{cluster.web_url}/api/v1/i2v",
                    json={"image_id": image},
                    headers={"x-request-id": request_id},
                    timeout=HTTP_TIMEOUT,
                )
            except requests.RequestException:
                time.sleep(0.3)
                continue
            if resp.status_code in (200, 202):
                with self.lock:
                    self.accepted.setdefault(request_id, time.monotonic())
                return
            if resp.status_code != 503:
                with self.lock:
                    self.unexpected.append(f"{request_id}: {resp.status_code} {resp.text[:200]}")
                return
            time.sleep(0.3)
        with self.lock:
            self.given_up.append(request_id)


def image_for(request_id: str) -> str:
    """Each request has an image of its own, so the fakes' logs tell requests apart."""
    return f"https://cdn.example.com/images/{request_id}.jpg"


def get_record(cluster: Cluster, request_id: str) -> dict[str, Any] | None:
    """The status body of a request, or None while the web process cannot answer."""
    try:
        resp = requests.get(f"{cluster.web_url}/api/v1/i2v/{request_id}", timeout=HTTP_TIMEOUT)
    except requests.RequestException:
        return None
    return resp.json() if resp.status_code == 200 else None


@pytest.fixture
def cluster(own_redis: OwnRedis, start_process, tmp_path: Path) -> Cluster:
    """Web, janitor and worker pools on the chaos Redis; they are stopped after the test."""
    cluster = Cluster(start_process, own_redis, tmp_path)
    cluster.start_all()
    return cluster


@pytest.mark.timeout(240)
def test_chaos_every_request_is_called_back_with_one_outcome_and_paid_once(cluster: Cluster, fakes: Fakes) -> None:
    """Kills, pauses and flaky upstreams: every request called back, nothing paid twice, one outcome each."""
    seed = int(os.environ.get(SEED_VARIABLE) or secrets.randbelow(2**31))
    print(f"chaos seed {seed} (replay with {SEED_VARIABLE}={seed})")
    rng = random.Random(seed)
    fakes.replicate.duration = 0.2
    fakes.pika.duration = 1.5
    fakes.game.signing_secret = SIGNING_SECRET
    by_name = {"replicate": fakes.replicate, "pika": fakes.pika, "game": fakes.game}
    for n, (fake, route, fault, share) in enumerate(FLAKES):
        by_name[fake].add_flaky_fault(route, fault, share, seed=seed + n)

    ids = [f"chaos-{seed}-{i}" for i in range(REQUESTS)]
    posts = sorted((rng.uniform(0, SUBMIT_SECONDS), rid) for rid in ids for _ in range(rng.randint(1, 3)))
    chaos = Chaos(cluster, random.Random(rng.random()))
    plan = chaos.schedule()
    submissions = Submissions()
    started = chaos.started

    player = threading.Thread(target=chaos.play, args=(plan,), name="chaos", daemon=True)
    player.start()
    with ThreadPoolExecutor(max_workers=12) as pool:
        for at, rid in posts:
            time.sleep(max(0.0, started + at - time.monotonic()))
            pool.submit(submissions.post, cluster, rid, image_for(rid))
        player.join(timeout=CHAOS_SECONDS + 60)
    chaos_over = time.monotonic()
    print("\n".join(chaos.done))
    assert not player.is_alive(), "the fault schedule did not finish"
    assert not chaos.errors, chaos.errors[0]
    assert not submissions.unexpected, submissions.unexpected
    assert not submissions.given_up, f"never accepted (seed {seed}): {submissions.given_up}"
    assert sorted(submissions.accepted) == sorted(ids)

    # Every accepted request reaches a terminal status with its callback acknowledged.
    records: dict[str, dict[str, Any]] = {}

    def all_settled() -> bool:
        for rid in ids:
            if rid in records:
                continue
            record = get_record(cluster, rid)
            delivered = record is not None and record["callback"]["status"] != "pending"
            if delivered and fakes.game.callbacks_for(rid):
                records[rid] = record
        return len(records) == len(ids)

    deadline = chaos_over + RECOVERY_TIMEOUT
    while not all_settled() and time.monotonic() < deadline:
        time.sleep(0.5)
    settled_after = time.monotonic() - chaos_over
    time.sleep(DUPLICATE_GRACE)

    attempts: dict[str, list[Any]] = defaultdict(list)
    for req in fakes.game.requests_for("callback"):
        attempts[unquote(req.path.split("/")[2])].append(req)
    acknowledged = {rid: fakes.game.callbacks_for(rid) for rid in ids}
    unsettled = {}
    for rid in sorted(set(ids) - set(records)):
        record = get_record(cluster, rid)
        unsettled[rid] = f"{record['status']}/{record['callback']['status']}" if record else "unreadable"
    outcomes = Counter(
        r["status"] + ("" if r["error"] is None else f" ({r['error']['code']})") for r in records.values()
    )
    print(
        f"seed {seed}: {len(posts)} posts of {len(ids)} ids; settled {settled_after:.1f} s after the last fault;"
        f" outcomes {dict(outcomes)}; callback attempts {sum(len(a) for a in attempts.values())},"
        f" acknowledged {sum(len(a) for a in acknowledged.values())}; refused by the fakes:"
        f" {len(fakes.replicate.requests_for('create')) - len(fakes.replicate.creates)} Replicate creates,"
        f" {len(fakes.pika.requests_for('generate')) - len(fakes.pika.generates)} Pika generates"
    )
    assert not unsettled, f"not called back {RECOVERY_TIMEOUT:g} s after the last fault (seed {seed}): {unsettled}"

    # At most one prediction and one Pika generation per request that the provider accepted.
    creates = Counter(c["image"] for c in fakes.replicate.creates)
    generates = Counter(g["image"] for g in fakes.pika.generates)
    assert not [image for image, n in creates.items() if n > 1], f"paid twice at Replicate (seed {seed})"
    assert not [image for image, n in generates.items() if n > 1], f"paid twice at Pika (seed {seed})"
    assert set(creates) | set(generates) <= {image_for(rid) for rid in ids}
    results = {job["videos"][0]["imageThumb"]: job["videos"][0]["resultUrl"] for job in fakes.pika.jobs.values()}

    assert set(attempts) == set(ids), f"callbacks for unknown ids: {set(attempts) - set(ids)}"
    for rid in ids:
        # One webhook-id and one body (so one outcome) over every attempt, each validly signed.
        assert {a.headers.get("webhook-id") for a in attempts[rid]} != {None}, rid
        assert len({a.headers.get("webhook-id") for a in attempts[rid]}) == 1, rid
        assert len({json.dumps(a.json, sort_keys=True) for a in attempts[rid]}) == 1, rid
        callback = acknowledged[rid][0]
        assert callback.problems() == [], (rid, callback.json)
        assert all(c.signature_valid for c in acknowledged[rid]), rid
        # The record says what the callback said.
        record = records[rid]
        assert record["callback"]["status"] == "delivered", (rid, record["callback"])
        if record["status"] == "completed":
            assert callback.status == "COMPLETED", (rid, callback.json)
            assert callback.url == record["video_url"] == results[image_for(rid)], rid
        else:
            assert record["status"] in ("failed", "canceled"), (rid, record["status"])
            assert callback.status == "FAILED", (rid, callback.json)
