"""llm_review through the real langchain clients, against a local fake of both provider APIs.

One stdlib HTTP server on 127.0.0.1 speaks the OpenAI-compatible chat completions API (what
ChatDeepSeek calls) under /deepseek/ and the Gemini REST generateContent API (what
ChatGoogleGenerativeAI calls through google-genai) under /gemini/. A socket guard fails any
test that tries to leave the machine, instead of letting it hang on the closed network.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import llm_review
from core.logs import JsonFormatter
from core.settings import Secret
from llm_review import Candidate, LLMReviewer, MalformedAnswer, heuristic_opinion, parse_verdict

DEEPSEEK_KEY = "sk-fake-deepseek-0123456789abcdef"
GOOGLE_KEY = "AIza-fake-google-0123456789abcdef"
APPROVE = '{"approve": true, "confidence": 0.82, "reason": "clean breakout on volume"}'
VETO = '{"approve": false, "confidence": 0.7, "reason": "extended above VWAP"}'
GOOD = Candidate("AAPL", 190.5, 189.9, 62.0, 1.4, 0.8, 2.3, "standard")


# -- fake provider server --------------------------------------------------------------------


@dataclass
class Behaviour:
    """What one provider does: answer `text`, or fail with `status`, after `delay` seconds."""

    text: str = APPROVE
    status: int = 200
    delay: float = 0.0


@dataclass
class FakeProviders:
    port: int
    behaviour: dict[str, Behaviour] = field(
        default_factory=lambda: {"deepseek": Behaviour(), "gemini": Behaviour()}
    )
    requests: dict[str, int] = field(default_factory=lambda: {"deepseek": 0, "gemini": 0})
    paths: list[str] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)

    @property
    def deepseek_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/deepseek/v1"

    @property
    def gemini_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/gemini/"


def _openai_completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "deepseek-chat",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


def _gemini_response(text: str) -> dict[str, Any]:
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 10,
            "candidatesTokenCount": 10,
            "totalTokenCount": 20,
        },
        "modelVersion": "gemini-2.5-flash",
    }


def _handler(state: FakeProviders) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path.startswith("/deepseek/") and self.path.endswith("/chat/completions"):
                provider = "deepseek"
            elif self.path.startswith("/gemini/") and self.path.endswith(":generateContent"):
                provider = "gemini"
            else:
                self.send_error(404)
                return
            state.requests[provider] += 1
            state.paths.append(self.path)
            todo = state.behaviour[provider]
            if todo.delay:
                state.released.wait(todo.delay)  # teardown releases a sleeping handler
            if todo.status == 200:
                payload = (
                    _openai_completion(todo.text)
                    if provider == "deepseek"
                    else _gemini_response(todo.text)
                )
            else:
                # Echo the credentials back, as a careless proxy might: they must not reach a log.
                echoed = f"{self.headers.get('Authorization')} {self.headers.get('x-goog-api-key')}"
                payload = {"error": {"code": todo.status, "message": f"boom {echoed}"}}
            body = json.dumps(payload).encode()
            try:
                self.send_response(todo.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up (timeout test)
                pass

    return Handler


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxies, no tracing, no env overrides, and no socket to anything but loopback."""
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "OPENAI_PROXY",
        "LANGSMITH_TRACING",
        "LANGCHAIN_TRACING_V2",
        "LANGSMITH_GATEWAY",
        "LANGSMITH_API_KEY",
        "GOOGLE_GENAI_USE_VERTEXAI",
        "DEEPSEEK_API_BASE",
        "DEEPSEEK_API_KEY",
        "GOOGLE_API_KEY",
        "GEMINI_API_KEY",
        "CLOCK_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("no_proxy", "*")

    real_connect = socket.socket.connect

    def loopback_only(sock: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1"):
            raise ConnectionRefusedError(f"test tried to reach {host}: tests stay on loopback")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)


@pytest.fixture
def providers() -> Iterator[FakeProviders]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = FakeProviders(port=server.server_address[1])
    server.RequestHandlerClass = _handler(state)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    state.released.set()
    server.shutdown()
    server.server_close()


class FakeClock:
    """Market time for the per-day cache, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0
        self.day = date(2025, 6, 16)

    def epoch(self) -> float:
        return self.now

    def today(self) -> date:
        return self.day


def make_reviewer(
    providers: FakeProviders,
    *,
    deepseek: bool = True,
    gemini: bool = True,
    **options: Any,
) -> LLMReviewer:
    options.setdefault("clock", FakeClock())
    options.setdefault("budget_s", 5.0)
    return LLMReviewer(
        deepseek_api_key=Secret(DEEPSEEK_KEY) if deepseek else None,
        google_api_key=Secret(GOOGLE_KEY) if gemini else None,
        deepseek_base_url=providers.deepseek_url,
        gemini_base_url=providers.gemini_url,
        **options,
    )


# -- provider order --------------------------------------------------------------------------


def test_deepseek_approval_is_used_and_gemini_not_asked(providers: FakeProviders) -> None:
    reviewer = make_reviewer(providers)

    opinion = asyncio.run(reviewer.review(GOOD))

    assert opinion.approve is True
    assert opinion.source == "deepseek"
    assert opinion.confidence == pytest.approx(0.82)
    assert opinion.reason == "clean breakout on volume"
    assert 0 < opinion.latency_s < 5.0
    assert providers.requests == {"deepseek": 1, "gemini": 0}
    assert providers.paths == ["/deepseek/v1/chat/completions"]


def test_deepseek_http_500_falls_through_to_gemini(providers: FakeProviders) -> None:
    providers.behaviour["deepseek"] = Behaviour(status=500)
    providers.behaviour["gemini"] = Behaviour(text=VETO)
    reviewer = make_reviewer(providers)

    opinion = asyncio.run(reviewer.review(GOOD))

    assert (opinion.approve, opinion.source) == (False, "gemini")
    assert opinion.reason == "extended above VWAP"
    assert providers.requests == {"deepseek": 1, "gemini": 1}
    assert providers.paths[1] == "/gemini/v1beta/models/gemini-2.5-flash:generateContent"


def test_malformed_deepseek_answer_counts_as_failure(providers: FakeProviders) -> None:
    providers.behaviour["deepseek"] = Behaviour(text="Sure! I would approve this one.")
    reviewer = make_reviewer(providers, breaker_failures=1)

    opinion = asyncio.run(reviewer.review(GOOD))

    assert opinion.source == "gemini"
    assert providers.requests == {"deepseek": 1, "gemini": 1}
    assert reviewer.providers[0].breaker.consecutive_failures == 1


def test_malformed_answers_from_both_give_heuristic(providers: FakeProviders) -> None:
    providers.behaviour["deepseek"] = Behaviour(text='{"approve": "yes"}')
    providers.behaviour["gemini"] = Behaviour(text='{"approve": true, "confidence": 7}')
    reviewer = make_reviewer(providers)

    opinion = asyncio.run(reviewer.review(GOOD))

    assert opinion.source == "heuristic"
    assert "deepseek: malformed answer" in opinion.reason
    assert "gemini: malformed answer" in opinion.reason


def test_both_slow_gives_heuristic_within_budget(providers: FakeProviders) -> None:
    providers.behaviour["deepseek"] = Behaviour(delay=10.0)
    providers.behaviour["gemini"] = Behaviour(delay=10.0)
    budget = 1.0
    reviewer = make_reviewer(providers, budget_s=budget)

    started = time.monotonic()
    opinion = asyncio.run(reviewer.review(GOOD))
    elapsed = time.monotonic() - started

    assert opinion.source == "heuristic"
    assert opinion.approve == heuristic_opinion(GOOD).approve
    assert elapsed < budget + 0.5, f"review took {elapsed:.2f}s with a {budget}s budget"
    assert opinion.latency_s < budget + 0.5
    assert "deepseek: timeout" in opinion.reason and "gemini: timeout" in opinion.reason
    # A slow DeepSeek must leave Gemini part of the budget, not all of it gone.
    assert providers.requests == {"deepseek": 1, "gemini": 1}


def test_no_keys_gives_heuristic_without_any_request(providers: FakeProviders) -> None:
    reviewer = make_reviewer(providers, deepseek=False, gemini=False)

    opinion = asyncio.run(reviewer.review(GOOD))

    assert opinion.source == "heuristic"
    assert "no LLM key configured" in opinion.reason
    assert providers.requests == {"deepseek": 0, "gemini": 0}


def test_empty_key_counts_as_no_key(providers: FakeProviders) -> None:
    reviewer = LLMReviewer(
        deepseek_api_key=Secret(""),
        google_api_key=None,
        deepseek_base_url=providers.deepseek_url,
        clock=FakeClock(),
    )

    assert asyncio.run(reviewer.review(GOOD)).source == "heuristic"
    assert providers.requests["deepseek"] == 0


def test_only_google_key_asks_gemini_directly(providers: FakeProviders) -> None:
    reviewer = make_reviewer(providers, deepseek=False)

    opinion = asyncio.run(reviewer.review(GOOD))

    assert opinion.source == "gemini"
    assert providers.requests == {"deepseek": 0, "gemini": 1}


def test_base_urls_default_to_the_providers_own() -> None:
    reviewer = LLMReviewer(
        deepseek_api_key=Secret(DEEPSEEK_KEY), google_api_key=Secret(GOOGLE_KEY), clock=FakeClock()
    )

    deepseek, gemini = (reviewer._build_model(p) for p in reviewer.providers)  # no I/O

    assert str(deepseek.root_async_client.base_url).rstrip("/") == "https://api.deepseek.com/v1"
    assert gemini.base_url == "https://generativelanguage.googleapis.com/"


def test_unreachable_provider_fails_fast_instead_of_hanging(providers: FakeProviders) -> None:
    # 10.x is refused by the socket guard, as a closed network would (but without the hang).
    reviewer = LLMReviewer(
        deepseek_api_key=Secret(DEEPSEEK_KEY),
        google_api_key=Secret(GOOGLE_KEY),
        deepseek_base_url="http://10.1.2.3:9/v1",
        gemini_base_url="http://10.1.2.3:9/",
        clock=FakeClock(),
        budget_s=3.0,
    )

    opinion = asyncio.run(reviewer.review(GOOD))

    assert opinion.source == "heuristic"
    assert "deepseek: " in opinion.reason and "gemini: " in opinion.reason
    assert opinion.latency_s < 3.0


# -- secrets, loop, errors -------------------------------------------------------------------


def test_keys_never_reach_the_logs_even_when_the_server_echoes_them(
    providers: FakeProviders, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    providers.behaviour["deepseek"] = Behaviour(status=500)
    providers.behaviour["gemini"] = Behaviour(status=500)
    reviewer = make_reviewer(providers)
    caplog.set_level(logging.DEBUG)  # every library's debug lines too

    opinion = asyncio.run(reviewer.review(GOOD))
    providers.behaviour["deepseek"] = Behaviour(text=VETO)
    asyncio.run(reviewer.review(Candidate("MSFT", 420.0, 418.0, 60.0, 1.2, 0.5, 2.0)))

    out, err = capfd.readouterr()
    # Render records as the run file would, so event fields (error, reason) are checked too.
    as_json = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    logged = as_json + caplog.text + out + err + opinion.reason
    assert '"event": "llm_provider_failed"' in as_json and '"event": "llm_veto"' in as_json
    assert '"error": "HTTP 500' in as_json  # the echoing error body itself was logged
    assert providers.requests["deepseek"] == 2
    for key in (DEEPSEEK_KEY, GOOGLE_KEY):
        assert key not in logged
    assert DEEPSEEK_KEY not in repr(reviewer.__dict__)


def test_review_does_not_block_the_event_loop(providers: FakeProviders) -> None:
    providers.behaviour["deepseek"] = Behaviour(delay=0.6)
    reviewer = make_reviewer(providers, deepseek=True, gemini=False)

    async def scenario() -> tuple[int, str]:
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        beat = asyncio.create_task(heartbeat())
        opinion = await reviewer.review(GOOD)
        beat.cancel()
        return ticks, opinion.source

    ticks, source = asyncio.run(scenario())

    assert source == "deepseek"
    assert ticks >= 10  # the loop kept running while the answer was 0.6 s away


def test_internal_error_gives_heuristic_instead_of_raising(
    providers: FakeProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    reviewer = make_reviewer(providers)

    def broken(_: Any) -> Any:
        raise RuntimeError(f"cannot build client for {DEEPSEEK_KEY}")

    monkeypatch.setattr(reviewer, "_cached", broken)

    opinion = asyncio.run(reviewer.review(GOOD))

    assert opinion.source == "heuristic"
    assert "internal error RuntimeError" in opinion.reason
    assert DEEPSEEK_KEY not in opinion.reason


# -- circuit breaker and cache ---------------------------------------------------------------


def test_circuit_breaker_skips_failing_deepseek_then_retries_after_pause(
    providers: FakeProviders,
) -> None:
    providers.behaviour["deepseek"] = Behaviour(status=500)
    real_time = [1000.0]
    reviewer = make_reviewer(
        providers,
        breaker_failures=2,
        breaker_minutes=5.0,
        cache_minutes=0.0,
        monotonic=lambda: real_time[0],
    )

    async def three_reviews() -> list[str]:
        return [(await reviewer.review(GOOD)).source for _ in range(3)]

    sources = asyncio.run(three_reviews())

    assert sources == ["gemini", "gemini", "gemini"]
    assert providers.requests == {"deepseek": 2, "gemini": 3}  # third review skipped DeepSeek

    real_time[0] += 5 * 60 + 1  # the pause is over: DeepSeek gets one more try
    providers.behaviour["deepseek"] = Behaviour()
    assert asyncio.run(reviewer.review(GOOD)).source == "deepseek"
    assert providers.requests["deepseek"] == 3
    assert reviewer.providers[0].breaker.consecutive_failures == 0


def test_first_review_budget_is_not_spent_importing_the_clients(
    providers: FakeProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI under load: the first review's cold import of the client libraries took the whole
    DeepSeek share, so a healthy DeepSeek counted as failed and Gemini answered."""
    real_time = [1000.0]
    reviewer = make_reviewer(providers, monotonic=lambda: real_time[0])
    real_import = importlib.import_module

    def slow_import(name: str) -> Any:
        real_time[0] += 60.0  # a cold import on a loaded machine, far past the budget
        return real_import(name)

    monkeypatch.setattr(llm_review.importlib, "import_module", slow_import)

    opinion = asyncio.run(reviewer.review(GOOD))

    assert opinion.source == "deepseek"
    assert providers.requests == {"deepseek": 1, "gemini": 0}
    before = real_time[0]
    asyncio.run(reviewer.review(replace(GOOD, symbol="MSFT")))
    assert real_time[0] == before  # prepared once: later reviews import nothing


def test_circuit_breaker_reopens_after_one_failed_retry() -> None:
    breaker = llm_review.CircuitBreaker(failures_to_open=3, open_seconds=60.0)

    opened = [breaker.record_failure(now=0.0) for _ in range(3)]
    assert opened == [False, False, True]
    assert not breaker.allows(30.0)
    assert breaker.allows(60.0)
    assert breaker.record_failure(now=60.0) is True  # the single retry failed: open at once
    assert not breaker.allows(100.0)


def test_same_symbol_is_not_asked_twice_within_cache_window(providers: FakeProviders) -> None:
    clock = FakeClock()
    reviewer = make_reviewer(providers, clock=clock, cache_minutes=30.0)

    async def review_at(minutes_later: float) -> llm_review.Opinion:
        clock.now += minutes_later * 60
        return await reviewer.review(GOOD)

    first = asyncio.run(review_at(0))
    second = asyncio.run(review_at(10))
    assert providers.requests["deepseek"] == 1
    assert (second.approve, second.source) == (first.approve, first.source)
    assert second.reason.startswith("cached: ")

    asyncio.run(review_at(21))  # 31 minutes after the first answer
    assert providers.requests["deepseek"] == 2

    clock.day = date(2025, 6, 17)  # a new day forgets yesterday's opinions
    asyncio.run(review_at(1))
    assert providers.requests["deepseek"] == 3


def test_failed_review_is_not_cached(providers: FakeProviders) -> None:
    providers.behaviour["deepseek"] = Behaviour(status=500)
    providers.behaviour["gemini"] = Behaviour(status=500)
    reviewer = make_reviewer(providers, breaker_failures=10)

    asyncio.run(reviewer.review(GOOD))
    providers.behaviour["deepseek"] = Behaviour()

    assert asyncio.run(reviewer.review(GOOD)).source == "deepseek"


# -- answer parsing --------------------------------------------------------------------------


def test_parse_verdict_accepts_strict_json_and_a_json_fence() -> None:
    assert parse_verdict(APPROVE) == (True, 0.82, "clean breakout on volume")
    assert parse_verdict(f"```json\n{VETO}\n```") == (False, 0.7, "extended above VWAP")


@pytest.mark.parametrize(
    "answer",
    [
        "approve",
        "",
        "[true, 0.5, 'x']",
        '{"approve": 1, "confidence": 0.5, "reason": "x"}',
        '{"approve": true, "confidence": true, "reason": "x"}',
        '{"approve": true, "confidence": 1.5, "reason": "x"}',
        '{"approve": true, "confidence": NaN, "reason": "x"}',
        '{"approve": true, "confidence": 0.5}',
        'Here you go: {"approve": true, "confidence": 0.5, "reason": "x"}',
    ],
)
def test_parse_verdict_rejects_anything_but_the_asked_json(answer: str) -> None:
    with pytest.raises(MalformedAnswer):
        parse_verdict(answer)


# -- heuristic -------------------------------------------------------------------------------


def test_heuristic_approves_a_clean_candidate_with_modest_confidence() -> None:
    opinion = heuristic_opinion(GOOD)

    assert opinion == heuristic_opinion(GOOD)  # pure: same input, same answer
    assert (opinion.approve, opinion.source) == (True, "heuristic")
    assert 0.5 <= opinion.confidence <= 0.8


@pytest.mark.parametrize(
    ("candidate", "flag"),
    [
        (Candidate("X", 100.0, 99.5, 83.0, 1.5, 0.0, 2.5), "overbought"),
        (Candidate("X", 105.0, 100.0, 65.0, 1.5, 0.0, 2.5), "extended"),
        (Candidate("X", 99.0, 100.0, 55.0, 1.5, 0.0, 2.5), "below VWAP"),
        (Candidate("X", 100.0, 99.8, 60.0, 1.5, 0.0, 1.0), "thin volume"),
        (Candidate("X", 100.0, 99.8, 60.0, 1.5, 6.0, 1.5, "gap_and_go"), "thin volume"),
        (Candidate("X", float("nan"), 99.8, 60.0, 1.5, 0.0, 2.0), "bad data"),
    ],
)
def test_heuristic_vetoes_red_flags(candidate: Candidate, flag: str) -> None:
    opinion = heuristic_opinion(candidate)

    assert opinion.approve is False
    assert flag in opinion.reason


def test_heuristic_lets_gap_and_go_run_hotter_than_standard() -> None:
    hot = dict(price=100.0, vwap=99.5, rsi=82.0, atr_pct=2.0, gap_pct=5.0, volume_ratio=3.0)

    assert heuristic_opinion(Candidate("X", **hot, rule="gap_and_go")).approve is True
    assert heuristic_opinion(Candidate("X", **hot, rule="standard")).approve is False


def test_heuristic_does_not_veto_an_unknown_volume_ratio_as_thin() -> None:
    """The day trader does not know the volume ratio: passed as 1.0 it read as thin volume,
    so with the LLM down the fallback vetoed every standard entry."""
    healthy = dict(price=100.0, vwap=99.8, rsi=55.0, atr_pct=0.8, gap_pct=0.5)

    unknown = heuristic_opinion(Candidate("X", **healthy, volume_ratio=None))
    assert unknown.approve is True, unknown.reason
    assert heuristic_opinion(Candidate("X", **healthy, volume_ratio=0.5)).approve is False
