"""API keys as an MSP's integrations meet them: keys made and revoked while the service runs,
keys limited to some customers, and per-key rate limits.

The walk over every operation of the OpenAPI document is the guard for scopes: a new endpoint
is walked too, and one with a path parameter the walk cannot fill fails it until it is taught.

Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.access import keys
from app.simulator import Simulator, SimulatorConfig
from app.store import keys as stored_keys
from app.store.tables import ApiKey
from tests.api.conftest import Gateway, services_of
from tests.clock import FakeClock

FINISHED, FAILED = 2, 3
WEBHOOK = {"webhook_urls": "http://127.0.0.1:9/hook", "webhook_secret": "whsec_" + "A" * 24}


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(SimulatorConfig(seed=11, customers=3, jobs_per_customer=5), clock=clock)


async def make_key(
    client: httpx.AsyncClient,
    name: str,
    customers: list[str] | None = None,
    rate_per_minute: int | None = None,
) -> str:
    """A key as `jobs-gateway keys create` makes it, seen by the running app at once (a
    server reads the keys every RELOAD_SECONDS; tests/e2e/test_keys.py checks that)."""
    svc = services_of(client)
    key = await keys.create_key(
        svc.writer, name, customers=customers, rate_per_minute=rate_per_minute, now=svc.clock()
    )
    await svc.keys.reload(svc.sessions)
    return key


def as_key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


# -- keys made, used, revoked ----------------------------------------------------------------


async def test_a_made_key_reads_and_only_its_salted_hash_is_stored(gateway: Gateway) -> None:
    async with gateway() as api:
        key = await make_key(api, "nightly-psa")
        assert key.startswith("jgw_") and len(key) > 50
        response = await api.get("/jobs", headers=as_key(key))
        assert response.status_code == 200, response.text
        bearer = await api.get("/jobs", headers={"Authorization": f"Bearer {key}"})
        assert bearer.status_code == 200
        svc = services_of(api)
        async with svc.sessions() as session:
            row = (await session.scalars(select(ApiKey))).one()
        stored = json.dumps([str(getattr(row, c.name)) for c in ApiKey.__table__.columns])
        secret = key.rsplit("_", 1)[-1]
        assert key not in stored and secret not in stored
        assert row.digest == keys.digest_of(row.salt, key) and len(row.salt) == 32


async def test_a_key_of_the_right_shape_with_a_wrong_secret_is_refused(gateway: Gateway) -> None:
    async with gateway() as api:
        key = await make_key(api, "psa")
        forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        response = await api.get("/jobs", headers=as_key(forged))
        assert response.status_code == 401
        assert response.json() == {"error": "unauthorized", "detail": "the API key is not valid"}
        assert forged not in response.text


async def test_a_revoked_key_is_refused_and_api_keys_keep_working(gateway: Gateway) -> None:
    async with gateway() as api:
        key = await make_key(api, "old-psa")
        assert (await api.get("/customers", headers=as_key(key))).status_code == 200
        svc = services_of(api)
        assert await stored_keys.revoke(svc.writer, "old-psa", now=svc.clock())
        await svc.keys.reload(svc.sessions)
        # The fast path remembered the answer; the key is checked again all the same.
        refused = await api.get("/customers", headers=as_key(key))
        assert refused.status_code == 401
        assert (await api.get("/customers")).status_code == 200  # API_KEYS: full access


async def test_a_key_works_on_its_first_request_the_moment_it_is_made(
    gateway: Gateway, sim: Simulator
) -> None:
    async with gateway() as api:
        svc = services_of(api)
        own = sim.customer_ids()[0]
        # Made as `jobs-gateway keys create` makes it beside the running service: the
        # service has not read the keys since.
        key = await keys.create_key(
            svc.writer, "pasted", customers=[own], rate_per_minute=None, now=svc.clock()
        )
        response = await api.get("/customers", headers=as_key(key))
        assert response.status_code == 200, response.text
        assert [c["customer_id"] for c in response.json()["items"]] == [own]
        bearer = await api.get("/enums", headers={"Authorization": f"Bearer {key}"})
        assert bearer.status_code == 200


async def test_a_made_up_key_is_refused_and_read_from_the_database_once_at_most(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    read = stored_keys.stored_key

    async def counted(session: Any, key_id: str) -> stored_keys.StoredKey | None:
        reads.append(key_id)
        return await read(session, key_id)

    monkeypatch.setattr(stored_keys, "stored_key", counted)
    async with gateway() as api:
        made_up = "jgw_0123456789ab_" + "x" * 43
        # Many requests with it at once share one read; later ones remember the miss.
        answers = await asyncio.gather(
            *(api.get("/enums", headers=as_key(made_up)) for _ in range(20))
        )
        assert [r.status_code for r in answers] == [401] * 20
        assert (await api.get("/enums", headers=as_key(made_up))).status_code == 401
        assert reads == ["0123456789ab"]
        # A wrong secret for a key id the service knows is refused from memory.
        key = await make_key(api, "psa")
        forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        assert (await api.get("/enums", headers=as_key(forged))).status_code == 401
        # Keys not shaped like a made key are never looked up.
        for other in ("jgw_short_x", "not-a-key", "jgw_0123456789ab_"):
            assert (await api.get("/enums", headers=as_key(other))).status_code == 401
        assert reads == ["0123456789ab"]


async def test_a_key_found_on_its_first_request_is_still_revoked_by_the_next_reload(
    gateway: Gateway,
) -> None:
    async with gateway() as api:
        svc = services_of(api)
        key = await keys.create_key(
            svc.writer, "brief", customers=None, rate_per_minute=None, now=svc.clock()
        )
        assert (await api.get("/customers", headers=as_key(key))).status_code == 200
        assert await stored_keys.revoke(svc.writer, "brief", now=svc.clock())
        await svc.keys.reload(svc.sessions)
        refused = await api.get("/customers", headers=as_key(key))
        assert refused.status_code == 401
        # Looked up again, it is found revoked: still refused.
        assert (await api.get("/enums", headers=as_key(key))).status_code == 401


async def test_a_name_is_taken_while_its_key_lives_and_free_once_revoked(
    gateway: Gateway,
) -> None:
    async with gateway() as api:
        svc = services_of(api)
        await make_key(api, "psa")
        with pytest.raises(keys.KeyRefused, match="already"):
            await make_key(api, "psa")
        assert await stored_keys.revoke(svc.writer, "psa", now=svc.clock())
        assert not await stored_keys.revoke(svc.writer, "psa", now=svc.clock())
        await make_key(api, "psa")
        async with svc.sessions() as session:
            names = [k.name for k in await stored_keys.list_keys(session, revoked=True)]
        assert names == ["psa", "psa"]


async def test_when_a_key_was_last_used_is_recorded(gateway: Gateway) -> None:
    async with gateway() as api:
        key = await make_key(api, "psa")
        svc = services_of(api)
        async with svc.sessions() as session:
            assert (await stored_keys.list_keys(session))[0].last_used_at is None
        assert (await api.get("/enums", headers=as_key(key))).status_code == 200
        await svc.keys.flush_used(svc.writer)
        async with svc.sessions() as session:
            assert (await stored_keys.list_keys(session))[0].last_used_at is not None


# -- scopes ------------------------------------------------------------------------------------


@dataclass
class World:
    """Two customers' worth of everything: the scoped key's own, and another's."""

    own: str
    other: str
    other_name: str
    other_job: str
    other_alert: str
    other_delivery: int
    other_run: str


async def world(api: httpx.AsyncClient, sim: Simulator, clock: FakeClock) -> World:
    own, other, _ = sim.customer_ids()
    for cid in (own, other):
        sim.put_job(cid, f"fail-{cid[:4]}", status=FAILED, start=clock.now - timedelta(hours=1))
    assert (await api.get("/jobs", params={"max_age": 0})).status_code == 200
    customers = (await api.get("/customers")).json()["items"]
    other_name = next(c["customer_name"] for c in customers if c["customer_id"] == other)
    jobs = (await api.get("/jobs", params={"customer_id": other})).json()["items"]
    alerts = (await api.get("/alerts", params={"customer_id": other})).json()["items"]
    deliveries = (await api.get("/webhooks/deliveries", params={"customer_id": other})).json()
    run = await api.post("/refresh", json={"customer_ids": [other]})
    assert run.status_code == 202
    assert jobs and alerts and deliveries["items"], "the other customer needs jobs, alerts, hooks"
    return World(
        own=own,
        other=other,
        other_name=other_name,
        other_job=jobs[0]["job_id"],
        other_alert=alerts[0]["alert_key"],
        other_delivery=deliveries["items"][0]["id"],
        other_run=run.json()["run_id"],
    )


UNKNOWN = "ffffffff-0000-4000-8000-000000000000"
"""A customer id no partner has."""

PATH_VALUES = {"customer_id", "job_id", "alert_key", "delivery_id", "run_id", "key", "window_id"}
"""The path parameters the walk fills: with the other customer's, and with made-up ones."""

BODIES: dict[tuple[str, str], list[Any]] = {
    ("post", "/refresh"): [None, {"customer_ids": ["OTHER"]}],
    ("post", "/alerts/{alert_key}/snooze"): [{"until": "2030-01-01T00:00:00Z", "reason": "x"}],
    ("post", "/webhooks/deliveries/{delivery_id}/retry"): [None],
    ("put", "/objects/{key}/expectation"): [{"every_hours": 24}, {"retired": True}],
    ("post", "/maintenance"): [
        {
            "customer_id": "OTHER",
            "starts_at": "2030-01-01T00:00:00Z",
            "ends_at": "2030-01-02T00:00:00Z",
        }
    ],
}
"""The bodies each operation with one is walked with ("OTHER": the other customer's id)."""


def requests_of(template: str, method: str, operation: dict[str, Any]) -> list[dict[str, Any]]:
    """Every request the walk makes of one operation: the other customer's things in the path,
    in `customer_id` filters, in the text search and in bodies (as "OTHER")."""
    for param in operation.get("parameters", []):
        if param["in"] == "path":
            name = param["name"]
            assert name in PATH_VALUES, f"{method} {template}: teach the walk its {name!r}"
    names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
    queries: list[dict[str, str]] = [{}]
    if "customer_id" in names:
        queries += [{"customer_id": "OTHER"}, {"customer_id": "OWN,OTHER"}]
    if "q" in names:
        queries.append({"q": "OTHER_NAME"})
    bodies: list[Any] = [None]
    if "requestBody" in operation:
        assert (method, template) in BODIES, f"teach the walk a body of {method} {template}"
        bodies = BODIES[(method, template)]
    return [{"path": template, "params": q, "json": b} for q in queries for b in bodies]


def filled(value: Any, names: dict[str, str]) -> Any:
    """`value` with every placeholder replaced (names: placeholder -> text)."""
    text = json.dumps(value)
    for placeholder in sorted(names, key=len, reverse=True):
        text = text.replace(placeholder, names[placeholder])
    return json.loads(text)


async def test_a_scoped_key_cannot_reach_another_customer_through_any_operation(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    """Walk every operation that takes a key with a key limited to one customer, naming
    another customer's id, job, alert, delivery and run wherever the operation takes one.
    Each answer must be exactly what the same request gets for things that do not exist,
    and nothing of the other customer may appear in any answer."""
    async with gateway(**WEBHOOK) as api:
        w = await world(api, sim, clock)
        scoped = as_key(await make_key(api, "own-only", customers=[w.own]))
        document = (await api.get("/openapi.json")).json()
        other_window = (
            await api.post(
                "/maintenance",
                json={
                    "customer_id": w.other,
                    "starts_at": "2030-01-01T00:00:00Z",
                    "ends_at": "2030-01-02T00:00:00Z",
                },
            )
        ).json()["id"]
        real = {
            "{customer_id}": w.other,
            "{job_id}": w.other_job,
            "{alert_key}": w.other_alert,
            "{delivery_id}": str(w.other_delivery),
            "{run_id}": w.other_run,
            "{key}": w.other_alert,
            "{window_id}": str(other_window),
            "OTHER_NAME": w.other_name,
            "OTHER": w.other,
            "OWN": w.own,
        }
        made_up = {
            "{customer_id}": UNKNOWN,
            "{job_id}": "FB20990101000000000000",
            "{alert_key}": w.other_alert.replace(w.other, UNKNOWN),
            "{delivery_id}": "987654",
            "{run_id}": "0" * 32,
            "{key}": w.other_alert.replace(w.other, UNKNOWN),
            "{window_id}": "987655",
            "OTHER_NAME": "No Such Customer Ltd",
            "OTHER": UNKNOWN,
            "OWN": w.own,
        }
        walked: dict[tuple[str, str, str], int] = {}
        for template, operations in document["paths"].items():
            for method, operation in operations.items():
                if not operation.get("security"):
                    continue  # answers without a key (/healthz, /readyz, /metrics)
                for request in requests_of(template, method, operation):
                    answers = []
                    for names in (real, made_up):
                        r = filled(request, names)
                        response = await api.request(
                            method, r["path"], params=r["params"], json=r["json"], headers=scoped
                        )
                        answers.append(response)
                    where = f"{method.upper()} {template} {request['params']} {request['json']}"
                    theirs, nobodys = answers
                    assert theirs.status_code < 500, where
                    assert theirs.status_code == nobodys.status_code, where
                    text = theirs.text
                    # Asking for another customer's things is asking for things that do not
                    # exist: the same answer, word for word, but for the words asked with.
                    mirrored = nobodys.text
                    for placeholder in sorted(made_up, key=len, reverse=True):
                        mirrored = mirrored.replace(made_up[placeholder], real[placeholder])
                    if theirs.status_code >= 400:
                        assert text == mirrored, where
                    else:
                        assert w.other not in text, f"{where} shows the other customer"
                        assert w.other_name not in text, f"{where} shows its name"
                        assert w.other_job not in text, f"{where} shows its job"
                    listing = template in (
                        "/jobs",
                        "/customers",
                        "/summary",
                        "/alerts",
                        "/objects",
                        "/grid",
                    )
                    if listing and theirs.status_code == 200 and not request["params"]:
                        assert w.own in text, f"{where}: the own customer is missing"
                    walked[(method, template, json.dumps(request["params"]))] = theirs.status_code
        # Naming the other customer is asking for an unknown one: 422 on a filter, 404 on a path.
        other = json.dumps({"customer_id": "OTHER"})
        for template in (
            "/jobs",
            "/jobs.csv",
            "/summary",
            "/events",
            "/alerts",
            "/objects",
            "/grid",
            "/maintenance",
        ):
            assert walked[("get", template, other)] == 422, template
        assert walked[("get", "/webhooks/deliveries", other)] == 422
        for method, template in (
            ("get", "/jobs/{customer_id}/{job_id}"),
            ("post", "/alerts/{alert_key}/snooze"),
            ("post", "/webhooks/deliveries/{delivery_id}/retry"),
            ("get", "/refresh/{run_id}"),
            ("put", "/objects/{key}/expectation"),
            ("delete", "/maintenance/{window_id}"),
        ):
            assert walked[(method, template, "{}")] == 404, template
        # The other customer's things are all still there, for a key that may see them.
        assert (await api.get(f"/jobs/{w.other}/{w.other_job}")).status_code == 200
        assert (await api.get(f"/refresh/{w.other_run}")).status_code == 200


async def test_a_scoped_key_never_gets_an_answer_remembered_for_a_wider_key(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    async with gateway() as api:
        own, other, _ = sim.customer_ids()
        url = "/jobs?limit=500"
        for _ in range(2):  # the second answer comes from the fast path
            wide = await api.get(url)
            assert {j["customer_id"] for j in wide.json()["items"]} == set(sim.customer_ids())
        scoped = as_key(await make_key(api, "own-only", customers=[own]))
        for _ in range(2):
            narrow = await api.get(url, headers=scoped)
            assert {j["customer_id"] for j in narrow.json()["items"]} == {own}
            assert narrow.headers["etag"] != wide.headers["etag"]
        summary = await api.get("/summary", headers=scoped)
        assert [i["key"] for i in summary.json()["items"]] == [own]
        refresh = await api.post("/refresh", headers=scoped)
        run = await api.get(refresh.headers["location"], headers=scoped)
        assert [c["customer_id"] for c in run.json()["customers"]] == [own]
        assert other not in run.text


async def test_a_key_scoped_to_customers_the_partner_no_longer_has_sees_nothing(
    gateway: Gateway,
) -> None:
    async with gateway() as api:
        scoped = as_key(await make_key(api, "gone", customers=["no-such-customer"]))
        response = await api.get("/jobs", headers=scoped)
        assert response.status_code == 200
        assert response.json()["items"] == []
        assert (await api.get("/customers", headers=scoped)).json()["items"] == []
        assert (await api.get("/events", headers=scoped)).json()["items"] == []
        csv = await api.get("/jobs.csv", headers=scoped)
        assert csv.status_code == 200 and len(csv.text.strip().splitlines()) == 1


# -- rate limits -----------------------------------------------------------------------------


async def test_past_its_rate_limit_a_key_gets_429_with_retry_after(gateway: Gateway) -> None:
    async with gateway() as api:
        key = as_key(await make_key(api, "slow", rate_per_minute=3))
        for _ in range(3):
            assert (await api.get("/customers", headers=key)).status_code == 200
        refused = await api.get("/customers", headers=key)  # remembered: the fast path
        assert refused.status_code == 429
        assert refused.json()["error"] == "rate_limited"
        assert "3 requests a minute" in refused.json()["detail"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        other_route = await api.get("/jobs", params={"limit": 3}, headers=key)
        assert other_route.status_code == 429  # the full route counts the same key
        assert (await api.get("/customers")).status_code == 200  # other keys are not affected
        metrics = (await api.get("/metrics")).text
        assert "jobs_gateway_rate_limited_requests_total 2.0" in metrics


async def test_a_keys_minute_is_the_services_clocks(gateway: Gateway, clock: FakeClock) -> None:
    """Windows follow the service's clock: its minute, not the machine's, so a refusal holds
    until the service's next minute, and a test's frozen clock never crosses one."""
    async with gateway() as api:
        key = as_key(await make_key(api, "paced", rate_per_minute=2))
        assert [(await api.get("/enums", headers=key)).status_code for _ in range(3)] == [
            200,
            200,
            429,
        ]
        clock.advance(60)
        assert (await api.get("/enums", headers=key)).status_code == 200


async def test_rate_limit_per_minute_applies_to_api_keys_and_zero_turns_it_off(
    gateway: Gateway,
) -> None:
    async with gateway(rate_limit_per_minute=2) as api:
        assert [(await api.get("/enums")).status_code for _ in range(3)] == [200, 200, 429]
        unlimited = as_key(await make_key(api, "bulk", rate_per_minute=0))
        assert {(await api.get("/enums", headers=unlimited)).status_code for _ in range(5)} == {200}
        assert (await api.get("/healthz")).status_code == 200  # no key, no limit
    async with gateway(rate_limit_per_minute=0) as api:
        assert {(await api.get("/enums")).status_code for _ in range(5)} == {200}
