"""`ember bench serve` against a real server: arrivals, the figures, errors by status, and a
mix of tenants against `ember serve --tenants`."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.bench.serve_load import (
    LoadPlan,
    _body,
    default_processes,
    format_report,
    parse_mix,
    read_extra_body,
    run_load_async,
)
from ember.cli import main
from ember.errors import EmberError
from ember.serve.api_keys import key_hash
from tests.serve.running_server import MODEL, RunningServer, start_server


def test_arrival_schedules() -> None:
    fixed = LoadPlan(url="http://x", num_requests=4, rate=2.0, arrivals="fixed")
    assert fixed.arrival_offsets() == [0.0, 0.5, 1.0, 1.5]
    burst = LoadPlan(url="http://x", num_requests=3)
    assert burst.arrival_offsets() == [0.0, 0.0, 0.0]
    poisson = LoadPlan(url="http://x", num_requests=4000, rate=10.0, seed=1).arrival_offsets()
    gaps = [b - a for a, b in itertools.pairwise(poisson)]
    assert abs(statistics.mean(gaps) - 0.1) < 0.01 and min(gaps) >= 0
    assert (
        poisson == LoadPlan(url="http://x", num_requests=4000, rate=10.0, seed=1).arrival_offsets()
    )


def test_load_report_against_ember(server: RunningServer) -> None:
    plan = LoadPlan(
        url=server.url,
        concurrency=2,
        num_requests=4,
        rate=20.0,
        arrivals="fixed",
        max_tokens=3,
        ignore_eos=True,
    )
    report = asyncio.run(run_load_async(plan))
    assert report.model == MODEL and not report.errors
    assert [r.output_tokens for r in report.records] == [3, 3, 3, 3]
    assert report.output_tokens_per_second > 0 and report.requests_per_second > 0
    ttft_p50, ttft_p99 = report.ttft_percentile(50), report.ttft_percentile(99)
    assert ttft_p50 is not None and ttft_p99 is not None and 0 < ttft_p50 <= ttft_p99
    assert report.itl_percentile(50) is not None
    text = format_report(plan, report)
    assert "output tok/s" in text and "TTFT p50 / p99" in text and "errors" in text


def test_errors_are_counted_by_status(server: RunningServer) -> None:
    plan = LoadPlan(url=server.url, model="no-such-model", num_requests=3, max_tokens=1)
    report = asyncio.run(run_load_async(plan))
    assert report.errors == {"404": 3} and not report.completed
    assert "404: 3" in format_report(plan, report)


def test_a_mix_is_parsed_into_a_plan_per_tenant() -> None:
    base = LoadPlan(url="http://x", max_tokens=64, seed=7)
    chat, bulk = parse_mix("chat:sk-1:4,bulk:sk-2:256:128", base, processes=None)
    assert (chat.label, chat.plan.api_key, chat.plan.concurrency) == ("chat", "sk-1", 4)
    assert (chat.plan.max_tokens, chat.plan.seed, chat.plan.processes) == (64, 7, 1)
    assert (bulk.label, bulk.plan.api_key, bulk.plan.concurrency) == ("bulk", "sk-2", 256)
    assert (bulk.plan.max_tokens, bulk.plan.seed) == (128, 8)
    assert bulk.plan.processes == default_processes(256)
    assert parse_mix("a:k:2", base, processes=3)[0].plan.processes == 3
    few, many = parse_mix("few:k1:4:32:16,many:k2:8", base, processes=None)
    assert (few.plan.max_tokens, few.plan.num_requests) == (32, 16)
    assert (many.plan.max_tokens, many.plan.num_requests) == (64, base.num_requests)
    for bad, says in (
        ("chat:sk-1", "label:key:concurrency"),
        ("chat::4", "label:key:concurrency"),
        ("chat:sk-1:four", "integers"),
        ("chat:sk-1:4:32:16:9:8", "label:key:concurrency"),
        ("chat:sk-1:4:32:16:/no/such.json", "no/such.json"),
        ("chat:sk-1:4:32:x", "integers"),
        ("a:k:1,a:j:2", "twice"),
        ("a:k:0", "must be positive"),
    ):
        with pytest.raises(EmberError, match=says):
            parse_mix(bad, base)


@pytest.fixture(scope="module")
def tenants_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    directory = tmp_path_factory.mktemp("mix")
    path = directory / "tenants.toml"
    path.write_text(
        f'[tenants.chat]\nkeys = ["{key_hash("key-chat")}"]\nclass = "interactive"\n\n'
        f'[tenants.bulk]\nkeys = ["{key_hash("key-bulk")}"]\nclass = "batch"\n'
    )
    running = start_server(directory, "--tenants", str(path), "--log-level", "warning")
    yield running
    assert running.stop() == 0, running.log.read_text()


@pytest.mark.slow
def test_bench_serve_mix_against_tenants(
    tenants_server: RunningServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`ember bench serve --mix`: both tenants' loads at once, each in its own process, a
    table per tenant with its share of the output tokens, and the aggregate, also as JSON; a
    key the server does not know is counted as its 401s."""
    argv = ["bench", "serve", "--url", tenants_server.url, "--endpoint", "completions"]
    argv += ["--model", MODEL, "--requests", "4", "--max-tokens", "4", "--ignore-eos"]
    mix = ["--mix", "chat:key-chat:1:2,bulk:key-bulk:4,stranger:sk-nope:1"]
    assert main([*argv, *mix, "--json", str(tmp_path / "mix.json")]) == 0
    figures = json.loads((tmp_path / "mix.json").read_text())
    tenants, everything = figures["tenants"], figures["aggregate"]
    assert list(tenants) == ["chat", "bulk", "stranger"]
    assert tenants["chat"]["output_tokens"] == 8 and tenants["bulk"]["output_tokens"] == 16
    assert tenants["chat"]["output_token_share"] == pytest.approx(1 / 3)
    assert tenants["stranger"]["errors"] == {"401": 4} and tenants["stranger"]["ttft_p99_s"] is None
    assert everything["completed"] == 8 and everything["errors"] == {"401": 4}
    assert 0 < tenants["chat"]["ttft_p50_s"] <= tenants["chat"]["ttft_p99_s"]
    text = capsys.readouterr().out
    chat, bulk, stranger, aggregate = text.split("\n\n")
    assert chat.startswith("== tenant chat") and "concurrency 1," in chat
    assert "max_tokens 2" in chat and "requests 4 (4 ok)" in chat
    assert bulk.startswith("== tenant bulk") and "max_tokens 4" in bulk and "(4 ok)" in bulk
    # Output tokens: chat 4 x 2, bulk 4 x 4, the stranger none.
    assert re.search(r"output token share +33\.3%", chat), chat
    assert re.search(r"output token share +66\.7%", bulk), bulk
    assert re.search(r"errors +401: 4", stranger), stranger
    assert aggregate.startswith("== aggregate of 3 tenants")
    assert re.search(r"errors +401: 4", aggregate) and "TTFT p50 / p99" in aggregate
    assert main([*argv, "--mix", "a:k:1", "--concurrency", "2"]) == 2
    assert "drop --api-key and --concurrency" in capsys.readouterr().err
    assert main([*argv, *mix, "--json", str(tmp_path / "no" / "such" / "dir.json")]) == 2
    assert "--json" in capsys.readouterr().err


@pytest.mark.slow
def test_one_plan_with_a_key(tenants_server: RunningServer) -> None:
    plan = LoadPlan(url=tenants_server.url, api_key="key-chat", num_requests=2, max_tokens=2)
    report = asyncio.run(run_load_async(plan))
    assert not report.errors and len(report.completed) == 2


def test_a_body_file_goes_into_every_request_of_its_load(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text('{"response_format": {"type": "json_object"}}')
    base = LoadPlan(url="http://x")
    free, constrained = parse_mix(f"free:k:4,json:k:2:32:8:{path}", base)
    assert free.plan.extra_body is None
    assert constrained.plan.extra_body == {"response_format": {"type": "json_object"}}
    assert _body(constrained.plan, "m")["response_format"] == {"type": "json_object"}
    assert "response_format" not in _body(free.plan, "m")
    path.write_text("[1, 2]")
    with pytest.raises(EmberError, match="JSON object"):
        read_extra_body(str(path))
