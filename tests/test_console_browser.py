"""The web console in a real headless Chromium, over the real services: every page shows what the
query service answers, a row opens its request, Live shows a new record within 2 s, and a browser
signed in with a team-bound key sees that team only. Screenshots go to test-artifacts/console/."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import struct_pb2

from llmmeter.cli.render import fmt_cost, fmt_int, fmt_ms
from llmmeter.v1 import query_pb2, query_pb2_grpc, usage_pb2
from llmmeter_alerts.server import AlertsServer
from llmmeter_common.auth.keys import Role
from llmmeter_console import data
from llmmeter_console.settings import ConsoleSettings
from llmmeter_console.window import parse_view
from llmmeter_query.server import QueryServer

from console_harness import browser_page, screenshot, serving
from keyring import ADMIN, keyed_channel, make_key
from records import ingest, record

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
async def dataset(ingest_stub) -> list[usage_pb2.UsageRecord]:
    """60 records over the last 20 hours, three models and two teams, some failing, one with payloads."""
    recs = []
    for i in range(60):
        model = ("gpt-4o", "claude-sonnet", "gemini-flash")[i % 3]
        failed = i % 10 == 0
        recs.append(record(NOW - timedelta(minutes=20 * i + 5), latency_ms=400 + 37 * i, ttft_ms=120 + i,
                           request_id=f"req-{i:03d}", model=model, team=("payments", "search")[i % 2],
                           user=f"user-{i % 4}", input_tokens=100 + i, output_tokens=20 + i,
                           cost=round(0.001 * (i + 1), 6), status_code=429 if failed else 200,
                           error_type="RateLimitError" if failed else "",
                           metadata={"tenant": f"t{i % 2}"},
                           payload=usage_pb2.Payload(request=struct_pb2.Value(string_value=f"hello {i}"))
                           if i == 1 else None))
    await ingest(ingest_stub, recs)
    return recs


@pytest.fixture
async def console(query_server: QueryServer, alerts_server: AlertsServer) -> AsyncIterator[str]:
    settings = ConsoleSettings(query_addr=f"127.0.0.1:{query_server.port}",
                               alerts_addr=f"127.0.0.1:{alerts_server.port}", api_key=ADMIN.token)
    async with serving(settings) as url:
        yield url


@pytest.fixture
async def query(query_server: QueryServer) -> AsyncIterator[query_pb2_grpc.QueryServiceStub]:
    async with keyed_channel(f"127.0.0.1:{query_server.port}") as ch:
        yield query_pb2_grpc.QueryServiceStub(ch)


async def _window(since: str) -> dict[str, object]:
    return parse_view({"since": since}).window()


async def test_usage_page_shows_the_query_services_numbers_and_opens_requests(
        console: str, dataset, query, ingest_stub) -> None:
    async with browser_page() as page:
        await page.goto(f"{console}/usage?since=24h")
        summary = (await query.GetSummary(query_pb2.GetSummaryRequest(**await _window("24h")))).summary
        assert summary.request_count == 60
        cards = {c: (await page.inner_text(f"#card-{c} .big")).strip()
                 for c in ("requests", "tokens", "spend", "latency")}
        assert cards == {"requests": fmt_int(summary.request_count),
                         "tokens": f"{fmt_int(summary.total_tokens)} tokens",
                         "spend": fmt_cost(summary.cost), "latency": fmt_ms(summary.latency_avg_ms)}
        assert fmt_ms(summary.latency_p95_ms) in await page.inner_text("#card-latency .sub")
        listed = await query.ListRequests(query_pb2.ListRequestsRequest(page_size=50,
                                                                        **await _window("24h")))
        shown = await page.eval_on_selector_all("#requests tbody tr", "rows => rows.map(r => r.dataset.id)")
        assert shown == [r.request_id for r in listed.requests] and len(shown) == 50
        headers = await page.eval_on_selector_all("#requests thead th", "hs => hs.map(h => h.textContent)")
        assert headers == ["Time", "Status", "Model", "Prompt", "Completion", "Total", "Latency", "Spend",
                           "Request"]
        await screenshot(page, "usage")

        await page.click("#requests tbody tr[data-id='req-001']")
        await page.wait_for_selector("#drawer:not([hidden])")
        assert await page.get_attribute("#drawer", "data-request-id") == "req-001"
        text = await page.inner_text("#drawer-body")
        assert "req-001" in text and "hello 1" in text and "Cost breakdown" in text and "t1" in text
        await screenshot(page, "usage-drawer")
        await page.click("#drawer .toggle button[data-mode=json]")
        assert json.loads(await page.inner_text("#drawer-body pre"))["record"]["request_id"] == "req-001"
        await page.click("#drawer-close")

        async with page.expect_navigation():
            await page.click("#next-page")
        second = await page.eval_on_selector_all("#requests tbody tr", "rows => rows.map(r => r.dataset.id)")
        assert len(second) == 10 and not set(second) & set(shown)

        await page.goto(f"{console}/usage?since=1h")
        await page.click("#live-toggle")
        await page.wait_for_selector("#live-banner:not([hidden])")
        await asyncio.sleep(0.5)  # the tail subscribes as the page opens its event stream
        await ingest(ingest_stub, [record(datetime.now(UTC) - timedelta(seconds=2), request_id="live-one")])
        acked = time.monotonic()
        await page.wait_for_selector("#requests tr[data-id='live-one']", timeout=2000)
        assert time.monotonic() - acked < 2.0
        await screenshot(page, "usage-live")


async def test_metrics_page_charts_are_the_time_series(console: str, dataset, query) -> None:
    async with browser_page() as page:
        await page.goto(f"{console}/metrics?since=24h&group=model")
        await page.wait_for_selector("#chart-cost")
        charts = {c["id"]: c for c in json.loads(await page.inner_text("#chart-data"))}
        assert set(charts) >= {"rps", "failure_rate", "failures", "latency", "ttft", "itl", "tpot", "cost",
                               "input_tokens", "output_tokens"}
        view = parse_view({"since": "24h", "group": "model"})
        series = await query.GetTimeSeries(query_pb2.GetTimeSeriesRequest(
            metrics=[query_pb2.METRIC_COST], granularity=data.granularity(view), group_by="model", top_n=5,
            **view.window()))
        expected = {s.group: {p.time.ToJsonString(): p.value for p in s.points if p.present and p.value}
                    for s in series.series}
        cost = charts["cost"]
        shown = {d["label"]: {t: v for t, v in zip(cost["labels"], d["data"], strict=True) if v}
                 for d in cost["datasets"]}
        assert shown == expected and set(shown) == {"gpt-4o", "claude-sonnet", "gemini-flash"}
        failures = {d["label"] for d in charts["failures"]["datasets"]}
        assert failures == {"RateLimitError"}
        assert await page.eval_on_selector("#chart-cost", "c => c.width > 0")  # Chart.js drew it
        assert (await page.inner_text("#card-requests .big")).strip() == "60"
        await screenshot(page, "metrics")
        csv = await page.evaluate("url => fetch(url).then(r => r.text())", await page.get_attribute(
            "#export", "href"))
        assert csv.splitlines()[0].startswith("bucket") or "model" in csv.splitlines()[0]
        assert "gpt-4o" in csv

        await page.goto(f"{console}/metrics?since=24h&group=team&filter=" + 'model = "gpt-4o"')
        assert "model = \"gpt-4o\"" in await page.inner_text(".tags")
        assert {d["label"] for d in json.loads(await page.inner_text("#chart-data"))[0]["datasets"]} == {
            "payments", "search"}


async def test_analytics_logs_and_alerts_pages(console: str, dataset, query) -> None:
    async with browser_page() as page:
        await page.goto(f"{console}/analytics?since=24h")
        rows = await page.eval_on_selector_all("#models tbody tr",
                                               "rs => rs.map(r => r.cells[0].textContent)")
        breakdown = await query.GetBreakdown(query_pb2.GetBreakdownRequest(
            group_by="model", order_by="-request_count", **await _window("24h")))
        assert rows == [r.group for r in breakdown.rows]
        await screenshot(page, "analytics")
        await page.goto(f"{console}/logs?since=24h&filter=" + 'status_code >= 400')
        shown = await page.eval_on_selector_all("#requests tbody tr", "rows => rows.map(r => r.dataset.id)")
        assert sorted(shown) == [f"req-{i:03d}" for i in range(0, 60, 10)]
        await screenshot(page, "logs")
        await page.goto(f"{console}/alerts")
        assert "No rules" in await page.inner_text("#rules")
        await screenshot(page, "alerts")
        await page.goto(f"{console}/usage?since=banana")
        assert "since" in await page.inner_text("#error")


async def test_a_browser_signs_in_with_its_own_team_key(
        query_server: QueryServer, alerts_server: AlertsServer, dataset, db_url: str) -> None:
    key = await make_key(db_url, Role.READ, team="search")
    settings = ConsoleSettings(query_addr=f"127.0.0.1:{query_server.port}",
                               alerts_addr=f"127.0.0.1:{alerts_server.port}")
    async with serving(settings) as url, browser_page() as page:
        await page.goto(f"{url}/usage?since=24h")
        assert page.url.startswith(f"{url}/login")
        await page.fill("input[name=api_key]", key)
        async with page.expect_navigation():
            await page.click("form.login button")
        assert (await page.inner_text("#card-requests .big")).strip() == "30"
        await screenshot(page, "usage-team-key")
        async with page.expect_navigation():
            await page.click("form.logout button")
        await page.fill("input[name=api_key]", "llmm_000000000000_" + "x" * 43)
        async with page.expect_navigation():
            await page.click("form.login button")
        assert "API key" in await page.inner_text("#error")


async def test_alerts_page_creates_updates_silences_and_deletes_rules(
        console: str, alerts_server: AlertsServer) -> None:
    async with browser_page() as page:
        await page.goto(f"{console}/alerts")
        await page.fill("#rule-form input[name=name]", "pay-errors")
        await page.select_option("#rule-form select[name=metric]", "failure_rate")
        await page.fill("#rule-form input[name=warning]", "0.05")
        await page.fill("#rule-form input[name=filter]", 'team = "payments"')
        async with page.expect_navigation():
            await page.click("#rule-form button")
        assert "rule pay-errors created" in await page.inner_text("#done")
        assert "pay-errors" in await page.inner_text("#rules")
        await page.fill("#rule-form input[name=name]", "pay-errors")
        await page.fill("#rule-form input[name=window]", "banana")
        async with page.expect_navigation():
            await page.click("#rule-form button")
        assert "window" in await page.inner_text("#error")
        async with keyed_channel(f"127.0.0.1:{alerts_server.port}") as ch:  # a rule with a channel
            from llmmeter.v1 import alerts_pb2, alerts_pb2_grpc
            stub = alerts_pb2_grpc.AlertsServiceStub(ch)
            with_log = (await stub.GetRule(alerts_pb2.GetRuleRequest(name="pay-errors"))).rule
            with_log.channels.add().log.SetInParent()
            await stub.UpdateRule(alerts_pb2.UpdateRuleRequest(rule=with_log))
            await page.fill("#rule-form input[name=name]", "pay-errors")
            await page.fill("#rule-form input[name=window]", "10m")
            await page.check("#mode-update")
            async with page.expect_navigation():
                await page.click("#rule-form button")
            assert "rule pay-errors updated" in await page.inner_text("#done")
            updated = (await stub.GetRule(alerts_pb2.GetRuleRequest(name="pay-errors"))).rule
            assert updated.window.seconds == 600 and len(updated.channels) == 1  # the form kept the channel
        await page.fill("#silence-form input[name=rule]", "pay-errors")
        await page.fill("#silence-form input[name=comment]", "deploy")
        async with page.expect_navigation():
            await page.click("#silence-form button")
        assert "silence" in await page.inner_text("#done") and "deploy" in await page.inner_text("main")
        await screenshot(page, "alerts-forms")
        page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        async with page.expect_navigation():
            await page.click("#rules form button")
        assert "rule pay-errors deleted" in await page.inner_text("#done")
        assert "No rules yet" in await page.inner_text("#rules")
