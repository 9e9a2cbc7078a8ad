"""The simulator's data: deterministic, in the upstream's wire format, moving with time."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import catalog
from app.normalize import normalize_row, parse_duration, parse_size, parse_timestamp
from app.simulator import Simulator, SimulatorConfig
from app.simulator.data import (
    NA,
    ODD_NAMES,
    format_duration,
    format_size,
    reported_total,
    with_odd_text,
)

NOW = datetime(2025, 9, 11, 12, 0, tzinfo=UTC)
ROW_KEYS = [
    "jobType",
    "jobModule",
    "status",
    "jobId",
    "name",
    "totalCount",
    "failedCount",
    "successfulCount",
    "skippedCount",
    "warningCount",
    "backupSize",
    "startTime",
    "endTime",
    "jobDuration",
    "lastModifyTime",
]
COUNT_KEYS = ["totalCount", "failedCount", "successfulCount", "skippedCount", "warningCount"]
VALID_PAIRS = {
    7: {302, 303, 304, 305, 308},
    11: {501, 502, 503, 504, 505},
    12: {356, 359, 362},
    15: {0},
    16: {401, 550},
    0: {0, 302, 305},
    10: {504, 505},
}


def make_sim(config: SimulatorConfig | None = None, now: datetime = NOW) -> Simulator:
    return Simulator(config, clock=lambda: now)


def all_rows(sim: Simulator, now: datetime | None = None) -> dict[str, list[dict[str, Any]]]:
    return {cid: sim.jobs(cid, now) for cid in sim.customer_ids()}


def start_of(row: dict[str, Any]) -> datetime:
    moment = parse_timestamp(row["startTime"])
    assert moment is not None
    return moment


# --- determinism and customers ------------------------------------------------------------


def test_same_seed_and_now_give_the_same_data() -> None:
    first, second = make_sim(), make_sim()
    assert first.customers() == second.customers()
    assert all_rows(first) == all_rows(second)


def test_another_seed_gives_other_customers() -> None:
    assert make_sim().customer_ids() != make_sim(SimulatorConfig(seed=7)).customer_ids()


def test_customers_are_wire_format_objects_with_guid_ids_and_distinct_names() -> None:
    customers = make_sim(SimulatorConfig(customers=50)).customers()
    assert len(customers) == 50
    for customer in customers:
        assert list(customer) == [
            "id",
            "organization",
            "ownerEmail",
            "jobStatus",
            "countryOrRegion",
            "managementMode",
            "tenants",
        ]
        assert str(uuid.UUID(customer["id"])) == customer["id"]
        assert customer["jobStatus"] in {1, 2, 4, 5}
        assert customer["managementMode"] in {0, 1}
        assert "@" in customer["ownerEmail"]
        assert customer["tenants"]
        assert all(set(t) == {"id", "name"} for t in customer["tenants"])
    assert len({c["organization"] for c in customers}) == 50
    assert len({c["id"] for c in customers}) == 50


def test_a_customer_is_the_same_whatever_the_number_of_customers() -> None:
    few = make_sim(SimulatorConfig(customers=3))
    many = make_sim(SimulatorConfig(customers=20))
    assert many.customers()[:3] == few.customers()
    cid = few.customer_ids()[1]
    assert few.jobs(cid) == many.jobs(cid)


def test_unknown_customer_raises_key_error() -> None:
    with pytest.raises(KeyError):
        make_sim().jobs("00000000-0000-0000-0000-000000000000")


def test_jobs_returns_copies_the_caller_may_change() -> None:
    sim = make_sim()
    cid = sim.customer_ids()[0]
    sim.jobs(cid)[1]["status"] = 99
    assert sim.jobs(cid)[1]["status"] != 99


def test_naive_now_means_utc() -> None:
    sim = make_sim()
    cid = sim.customer_ids()[0]
    assert sim.jobs(cid, NOW.replace(tzinfo=None)) == sim.jobs(cid, NOW)


# --- rows ---------------------------------------------------------------------------------


def test_first_row_of_every_customer_is_the_all_na_placeholder() -> None:
    for rows in all_rows(make_sim()).values():
        placeholder = rows[0]
        assert [placeholder[k] for k in ROW_KEYS[:3]] == [0, 0, 0]
        assert all(placeholder[k] == NA for k in ROW_KEYS[3:])
        assert all(row["jobId"] != NA for row in rows[1:])


def test_rows_have_the_wire_shape() -> None:
    na_seen: Counter[str] = Counter()
    for rows in all_rows(make_sim()).values():
        for row in rows:
            assert list(row) == ROW_KEYS
            for key in ("jobType", "jobModule", "status"):
                assert type(row[key]) is int
            for key in ROW_KEYS[3:]:
                assert isinstance(row[key], str)
            for key in COUNT_KEYS:
                assert row[key] == NA or row[key].isdigit()
            for key in ROW_KEYS[3:]:
                na_seen[key] += row[key] == NA
            if row["startTime"] != NA:
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["startTime"])
    # "N/A" turns up beyond the placeholder rows (12 customers, 12 placeholders).
    assert na_seen["backupSize"] > 12
    assert na_seen["name"] > 12
    assert na_seen["totalCount"] > 12


def test_codes_are_known_and_job_types_have_matching_modules() -> None:
    for rows in all_rows(make_sim()).values():
        for row in rows[1:]:
            assert row["jobModule"] in VALID_PAIRS[row["jobType"]]
            assert row["status"] in catalog.STATUS.known_codes()


def test_job_ids_are_unique_and_carry_the_start_time() -> None:
    for rows in all_rows(make_sim()).values():
        ids = [row["jobId"] for row in rows[1:]]
        assert len(ids) == len(set(ids))
        for row in rows[1:]:
            match = re.fullmatch(r"[A-Z]{2}(\d{14})\d{6}", row["jobId"])
            assert match is not None
            assert start_of(row).strftime("%Y%m%d%H%M%S") == match.group(1)


def test_rows_are_newest_first_within_the_history_window() -> None:
    for rows in all_rows(make_sim()).values():
        starts = [start_of(row) for row in rows[1:]]
        assert starts == sorted(starts, reverse=True)
        assert all(NOW - timedelta(days=7) <= s <= NOW for s in starts)


def test_default_counts_vary_realistically() -> None:
    sizes = [len(rows) for rows in all_rows(make_sim(SimulatorConfig(customers=30))).values()]
    assert min(sizes) >= 15
    assert max(sizes) <= 400
    assert len(set(sizes)) > 10


@pytest.mark.parametrize("count", [0, 1, 2, 100, 500])
def test_jobs_per_customer_is_exact(count: int) -> None:
    sim = make_sim(SimulatorConfig(customers=5, jobs_per_customer=count))
    for rows in all_rows(sim).values():
        assert len(rows) == count
        if count:
            assert rows[0]["jobId"] == NA


@pytest.mark.parametrize("count", [1, 7, 20])
def test_plans_per_customer_gives_that_many_protected_objects(count: int) -> None:
    sim = make_sim(SimulatorConfig(customers=6, plans_per_customer=count, history_days=31))
    for rows in all_rows(sim).values():
        pairs = {(r["jobType"], r["jobModule"]) for r in rows if r["jobId"] != NA}
        assert len(pairs) == count
        assert all(module in VALID_PAIRS[job_type] for job_type, module in pairs)


@pytest.mark.parametrize("count", [0, 21])
def test_plans_per_customer_beyond_the_known_pairs_is_refused(count: int) -> None:
    with pytest.raises(ValueError, match="plans_per_customer"):
        make_sim(SimulatorConfig(customers=1, plans_per_customer=count))


def test_every_row_normalizes() -> None:
    for cid, rows in all_rows(make_sim(SimulatorConfig(customers=30))).items():
        assert normalize_row(cid, rows[0]) is None  # the placeholder has no job id
        for row in rows[1:]:
            job = normalize_row(cid, row)
            assert job is not None
            assert job.start_time is not None
            if row["jobDuration"] != NA:
                assert job.duration_seconds is not None
            if row["backupSize"] != NA:
                assert job.backup_size_bytes is not None
            for key in COUNT_KEYS:
                field = key.removesuffix("Count") + "_count"
                assert (getattr(job, field) is None) == (row[key] == NA)
            if job.status_code == 1:
                assert job.end_time is None
                assert job.duration_seconds is None
            else:
                assert job.end_time is not None
                assert job.last_modified == job.end_time + timedelta(seconds=1)
                assert job.duration_seconds == (job.end_time - job.start_time).total_seconds()
            assert job.successful_count is None or job.total_count is not None


def test_the_data_has_the_variety_seen_live() -> None:
    rows = [r for rs in all_rows(make_sim(SimulatorConfig(customers=30))).values() for r in rs]
    statuses = Counter(r["status"] for r in rows[1:] if r["jobId"] != NA)
    assert statuses[2] > sum(statuses.values()) * 0.7  # mostly finished
    assert {3, 4, 7, 8}.issubset(statuses)
    units = {r["backupSize"].split()[-1] for r in rows if r["backupSize"] != NA}
    assert {"GB", "MB"}.issubset(units)
    assert any(r["backupSize"] == "0 GB" for r in rows)
    assert any(re.fullmatch(r"0\.\d+ GB", r["backupSize"]) for r in rows)
    durations = {r["jobDuration"] for r in rows}
    assert "0 S" in durations
    assert any(re.fullmatch(r"\d+s", d) for d in durations)
    assert any(re.fullmatch(r"\d+m\d+s", d) for d in durations)
    assert any(re.fullmatch(r"\d+h\d+m\d+s", d) for d in durations)
    assert any(r["name"] != NA for r in rows)
    assert {r["jobType"] for r in rows} == set(VALID_PAIRS)


# --- rough edges --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "page_size", "low", "reported"),
    [
        (450, 100, False, 450),
        (450, 100, True, 225),
        (150, 100, True, 100),  # never less than page 1 holds
        (60, 100, True, 60),
        (7, 5, True, 5),
        (1, 100, True, 1),
        (0, 100, True, 0),
    ],
)
def test_reported_total(count: int, page_size: int, low: bool, reported: int) -> None:
    assert reported_total(count, page_size, low=low) == reported


def test_odd_text_rows_carry_odd_names_and_a_huge_count() -> None:
    sim = make_sim(SimulatorConfig(customers=1, jobs_per_customer=12))
    rows = sim.jobs(sim.customer_ids()[0])
    before = [dict(row) for row in rows]

    odd = with_odd_text(rows)

    assert rows == before  # the shared rows are left alone
    assert odd[0] == rows[0]  # the placeholder stays all N/A
    assert [row["name"] for row in odd[1:]] == [ODD_NAMES[i % len(ODD_NAMES)] for i in range(11)]
    assert [row["jobId"] for row in odd] == [row["jobId"] for row in rows]
    assert odd[1]["totalCount"] == float("inf")
    assert all(row["totalCount"] != float("inf") for row in odd[2:])
    names = "".join(ODD_NAMES)
    assert "\ud800" in names  # a lone surrogate
    assert "\x00" in names
    assert any(ord(ch) > 0xFFFF for ch in names)  # an emoji outside the BMP
    assert any("\u0600" <= ch <= "\u06ff" for ch in names)  # Arabic
    assert any("\u0590" <= ch <= "\u05ff" for ch in names)  # Hebrew


def test_odd_text_customers_only_and_only_while_configured() -> None:
    sim = make_sim(SimulatorConfig(customers=3))
    odd_id, plain_id, _ = sim.customer_ids()
    plain_before = sim.jobs(plain_id)
    sim.config = SimulatorConfig(customers=3, odd_text_customers=frozenset({odd_id}))

    odd_rows = sim.jobs(odd_id)

    assert odd_rows[1]["name"] == ODD_NAMES[0]
    assert odd_rows[1]["totalCount"] == float("inf")
    assert sim.jobs(plain_id) == plain_before
    sim.config = SimulatorConfig(customers=3)
    assert all(row["name"] not in ODD_NAMES for row in sim.jobs(odd_id))


# --- time ---------------------------------------------------------------------------------


def test_a_later_now_shows_new_jobs_and_keeps_finished_ones() -> None:
    sim = make_sim()
    cid = sim.customer_ids()[0]
    before = {r["jobId"]: r for r in sim.jobs(cid, NOW)[1:]}
    after_rows = sim.jobs(cid, NOW + timedelta(hours=12))
    after = {r["jobId"]: r for r in after_rows[1:]}
    new = set(after) - set(before)
    assert new
    assert {r["jobId"] for r in after_rows[1 : len(new) + 1]} == new  # on top
    for job_id in set(before) & set(after):
        if before[job_id]["status"] != 1:
            assert after[job_id] == before[job_id]


def find_running(sim: Simulator) -> tuple[str, datetime, dict[str, Any]]:
    for hours in range(48):
        moment = NOW + timedelta(hours=hours)
        for cid in sim.customer_ids():
            for row in sim.jobs(cid, moment):
                if row["status"] == 1:
                    return cid, moment, row
    raise AssertionError("no running job in two days")


def test_a_running_job_later_gets_its_final_status() -> None:
    sim = make_sim()
    cid, moment, running = find_running(sim)
    assert running["endTime"] == NA
    assert running["jobDuration"] == NA
    assert parse_timestamp(running["lastModifyTime"]) is not None
    later = {r["jobId"]: r for r in sim.jobs(cid, moment + timedelta(hours=6))}
    finished = later[running["jobId"]]
    assert finished["status"] not in {0, 1}
    assert finished["startTime"] == running["startTime"]
    assert finished["endTime"] != NA
    assert start_of(finished) < parse_timestamp(finished["endTime"])  # type: ignore[operator]


def test_failures_persist_for_a_plan_then_recover() -> None:
    sim = make_sim(SimulatorConfig(customers=12, history_days=30))
    streaks = []
    for rows in all_rows(sim).values():
        by_plan: dict[tuple[int, int], list[int]] = {}
        for row in reversed(rows[1:]):  # oldest first
            by_plan.setdefault((row["jobType"], row["jobModule"]), []).append(row["status"])
        for statuses in by_plan.values():
            text = "".join("F" if s in (3, 7) else "." for s in statuses)
            streaks += [m.group() for m in re.finditer(r"(?<=\.)F+(?=\.)", text)]
    assert any(len(s) >= 2 for s in streaks)  # failing for a few runs, then recovered
    assert any(len(s) == 1 for s in streaks)


# --- formats ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 S"), (38, "38s"), (60, "1m0s"), (1059, "17m39s"), (7510, "2h5m10s")],
)
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "in_mb", "text"),
    [
        (0, False, "0 GB"),
        (round(0.84 * 1024**3), False, "0.84 GB"),
        (512 * 1024**2, True, "512 MB"),
        (512 * 1024**2, False, "0.5 GB"),
        (3 * 1024**3, True, "3 GB"),
        (round(1.5 * 1024**4), False, "1.5 TB"),
    ],
)
def test_format_size(size: int, in_mb: bool, text: str) -> None:
    assert format_size(size, in_mb=in_mb) == text


@given(st.integers(min_value=0, max_value=30 * 86400))
def test_durations_round_trip_through_the_parser(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=50 * 1024**4), st.booleans())
def test_sizes_round_trip_through_the_parser_to_two_decimals(size: int, in_mb: bool) -> None:
    parsed = parse_size(format_size(size, in_mb=in_mb))
    assert parsed is not None
    unit = 1024**4 if size >= 1024**4 else 1024**2 if in_mb and size < 1024**3 else 1024**3
    tolerance = unit if unit == 1024**2 else unit // 200
    assert abs(parsed - size) <= tolerance


def test_history_stays_right_after_dropping_runs_that_left_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("app.simulator.data.SPARE_RUNS", 0)
    sim, fresh = make_sim(SimulatorConfig(customers=2)), make_sim(SimulatorConfig(customers=2))
    cid = sim.customer_ids()[0]
    expected = fresh.jobs(cid, NOW)
    for days in range(0, 60, 3):
        sim.jobs(cid, NOW + timedelta(days=days))
    assert sim.jobs(cid, NOW) == expected
