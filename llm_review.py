"""An optional LLM second opinion on a trade candidate the rules already chose.

The LLM can only approve or veto: it never picks symbols, sizes or prices. Every opinion is
logged (`llm_approve` / `llm_veto`, with symbol, source, confidence and reason), so a veto
can always be traced after the day.

Order of asking, inside one time budget (default 8 s, real seconds):
    1. DeepSeek (`langchain-deepseek` ChatDeepSeek), when a DeepSeek key is set,
    2. Gemini (`langchain-google-genai` ChatGoogleGenerativeAI), when a Google key is set,
    3. `heuristic_opinion`, a pure function of the candidate, when neither key is set or both
       providers failed, timed out, were skipped by their circuit breaker or answered
       malformed JSON. Its reason names why the LLMs were not used.

`LLMReviewer.review` is async, uses the langchain clients' `ainvoke` under
`asyncio.wait_for`, so it never blocks the trader's event loop, and it never raises.

Also:
    - a per-day cache: a symbol answered by an LLM is not asked again within `cache_minutes`
      (market time, so a simulated day at speed behaves like a real one);
    - a circuit breaker per provider: after `breaker_failures` consecutive failures the provider
      is skipped for `breaker_minutes` (real time), then tried once again.

API keys stay inside `Secret` until the client is built; error texts are scrubbed of them
before they reach a log line or an `Opinion.reason`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

from core.clock import get_clock
from core.logs import get_logger
from core.settings import Secret, Settings, get_settings

if TYPE_CHECKING:  # langchain is imported by `prepare` (seconds): not on the bot's way to start
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import HumanMessage, SystemMessage

log = get_logger("llm")

Rule = Literal["standard", "gap_and_go"]
Source = Literal["deepseek", "gemini", "heuristic"]

DEEPSEEK_DEFAULT_BASE_URL = "https://api.deepseek.com/v1"
GEMINI_DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/"
DEEPSEEK_DEFAULT_MODEL = "deepseek-chat"
GEMINI_DEFAULT_MODEL = "gemini-2.5-flash"
# Below this many seconds left, a provider call cannot finish; skip it rather than start it.
_MIN_CALL_SECONDS = 0.05
_CLIENT_MODULES = {"deepseek": "langchain_deepseek", "gemini": "langchain_google_genai"}
_MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class Candidate:
    """A long entry the rules already chose, with the numbers they chose it on."""

    symbol: str
    price: float
    vwap: float
    rsi: float  # 0..100
    atr_pct: float  # average true range as % of price
    gap_pct: float  # today's open vs yesterday's close, %
    volume_ratio: float  # volume so far vs the usual volume by this time of day
    rule: Rule = "standard"


class Opinion(NamedTuple):
    approve: bool
    confidence: float  # 0..1
    source: Source
    reason: str
    latency_s: float  # real seconds spent in `review`


class MalformedAnswer(ValueError):
    """The model answered, but not with the strict JSON verdict asked for."""


# -- heuristic ------------------------------------------------------------------------------


def heuristic_opinion(candidate: Candidate, latency_s: float = 0.0) -> Opinion:
    """A rules-of-thumb second opinion; a pure function of `candidate` (no I/O, no clock).

    Vetoes when any of these holds (the reason lists every one that does):
      - bad data: a price, VWAP or ATR% that is not a finite positive number, or RSI outside 0..100;
      - overbought: RSI >= 80 (>= 85 on gap_and_go, where strong momentum is the setup);
      - extended: price more than max(1%, 1.5 x ATR%) above VWAP (chasing; the stop sits in
        the noise of the pullback);
      - weak: price below VWAP on the standard rule (it buys strength);
      - thin: volume_ratio below 1.2 (below 2.0 on gap_and_go, a gap needs participation).
    Approval confidence starts at 0.5 and gains 0.1 for each of: volume_ratio >= 2,
    RSI 50..70, price within 0.5 x ATR% of VWAP; capped at 0.8 (a heuristic is never sure).
    Veto confidence is 0.6 plus 0.1 per extra red flag, capped at 0.9.

    Returns an Opinion with source "heuristic" and the given `latency_s`.
    """
    c = candidate
    numbers = (c.price, c.vwap, c.rsi, c.atr_pct, c.gap_pct, c.volume_ratio)
    if not all(isinstance(x, int | float) and math.isfinite(x) for x in numbers) or (
        c.price <= 0 or c.vwap <= 0 or c.atr_pct <= 0 or not 0 <= c.rsi <= 100
    ):
        return Opinion(False, 0.9, "heuristic", "veto: bad data in candidate", latency_s)

    gap_and_go = c.rule == "gap_and_go"
    above_vwap_pct = (c.price - c.vwap) / c.vwap * 100.0
    flags: list[str] = []
    if c.rsi >= (85.0 if gap_and_go else 80.0):
        flags.append(f"overbought (RSI {c.rsi:.0f})")
    if above_vwap_pct > max(1.0, 1.5 * c.atr_pct):
        flags.append(f"extended {above_vwap_pct:.1f}% above VWAP (ATR {c.atr_pct:.1f}%)")
    if not gap_and_go and above_vwap_pct < 0:
        flags.append(f"below VWAP ({above_vwap_pct:.1f}%)")
    if c.volume_ratio < (2.0 if gap_and_go else 1.2):
        flags.append(f"thin volume ({c.volume_ratio:.1f}x)")
    if flags:
        confidence = min(0.9, 0.6 + 0.1 * (len(flags) - 1))
        return Opinion(False, confidence, "heuristic", "veto: " + "; ".join(flags), latency_s)

    support = [
        c.volume_ratio >= 2.0,
        50.0 <= c.rsi <= 70.0,
        abs(above_vwap_pct) <= 0.5 * c.atr_pct,
    ]
    confidence = min(0.8, 0.5 + 0.1 * sum(support))
    return Opinion(True, confidence, "heuristic", "approve: no red flags", latency_s)


# -- prompt and answer ----------------------------------------------------------------------

SYSTEM_PROMPT = (
    "You review intraday long entries for an automated day trader. The trading rules already "
    "selected this candidate; you can only approve it or veto it. Veto when the numbers suggest "
    "a poor risk/reward entry (chasing an extended move, exhausted momentum, thin volume). "
    'Answer with strict JSON only, no prose, no code fence: {"approve": true or false, '
    '"confidence": a number from 0 to 1, "reason": "one short sentence"}'
)

_RULE_TEXT = {
    "standard": "momentum above VWAP",
    "gap_and_go": "gap-and-go: continuation of an opening gap",
}


def build_messages(candidate: Candidate) -> list[SystemMessage | HumanMessage]:
    """The chat messages sent to either provider for `candidate`."""
    from langchain_core.messages import HumanMessage, SystemMessage

    facts = asdict(candidate)
    facts["rule"] = _RULE_TEXT.get(candidate.rule, candidate.rule)
    return [SystemMessage(SYSTEM_PROMPT), HumanMessage("Candidate: " + json.dumps(facts))]


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_verdict(text: str) -> tuple[bool, float, str]:
    """(approve, confidence, reason) from a model's answer.

    Tolerates only surrounding whitespace and a ```json fence; anything else that is not the
    exact JSON object asked for raises MalformedAnswer.
    """
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        data = json.loads(body)
    except ValueError:
        raise MalformedAnswer(f"not JSON: {body[:80]!r}") from None
    if not isinstance(data, dict):
        raise MalformedAnswer("not a JSON object")
    approve, confidence, reason = data.get("approve"), data.get("confidence"), data.get("reason")
    if not isinstance(approve, bool):
        raise MalformedAnswer("approve is not a boolean")
    # bool is an int subclass; true/false is not a confidence
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise MalformedAnswer("confidence is not a number")
    if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
        raise MalformedAnswer("confidence is outside 0..1")
    if not isinstance(reason, str):
        raise MalformedAnswer("reason is not a string")
    return approve, float(confidence), reason.strip()[:_MAX_REASON_CHARS]


def _answer_text(message: Any) -> str:
    """The text of an AIMessage whose content is a string or a list of content blocks."""
    content = message.content
    if isinstance(content, str):
        return content
    parts = [
        block if isinstance(block, str) else block.get("text", "")
        for block in content
        if isinstance(block, str) or (isinstance(block, dict) and block.get("type") == "text")
    ]
    return "".join(parts)


# -- circuit breaker ------------------------------------------------------------------------


@dataclass
class CircuitBreaker:
    """Skip a provider for `open_seconds` after `failures_to_open` consecutive failures.

    After the pause one call goes through; a failure then opens it again at once, a success
    closes it.
    """

    failures_to_open: int
    open_seconds: float
    consecutive_failures: int = 0
    open_until: float = 0.0

    def allows(self, now: float) -> bool:
        return now >= self.open_until

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.open_until = 0.0

    def record_failure(self, now: float) -> bool:
        """Count a failure; True when this failure opened the breaker."""
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.failures_to_open:
            self.open_until = now + self.open_seconds
            return True
        return False


# -- reviewer -------------------------------------------------------------------------------


class _Clock(Protocol):
    def epoch(self) -> float: ...
    def today(self) -> date: ...


@dataclass
class _Provider:
    name: Source
    key: Secret
    breaker: CircuitBreaker


class LLMReviewer:
    """Second opinions from DeepSeek, then Gemini, then the heuristic; see the module doc."""

    def __init__(
        self,
        *,
        deepseek_api_key: Secret | None = None,
        google_api_key: Secret | None = None,
        deepseek_base_url: str = DEEPSEEK_DEFAULT_BASE_URL,
        gemini_base_url: str = GEMINI_DEFAULT_BASE_URL,
        deepseek_model: str = DEEPSEEK_DEFAULT_MODEL,
        gemini_model: str = GEMINI_DEFAULT_MODEL,
        budget_s: float = 8.0,
        primary_share: float = 0.6,
        cache_minutes: float = 30.0,
        breaker_failures: int = 3,
        breaker_minutes: float = 10.0,
        clock: _Clock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`primary_share`: the fraction of the remaining budget the first provider may use
        when a second one is still available, so a slow DeepSeek leaves Gemini time to answer.
        `clock` (market time; default the process clock) drives the per-day cache;
        `monotonic` (real time) drives the budget and the circuit breakers.
        """
        if budget_s <= 0 or not 0 < primary_share <= 1 or breaker_failures < 1:
            raise ValueError("budget_s > 0, 0 < primary_share <= 1, breaker_failures >= 1")
        self.deepseek_base_url = deepseek_base_url
        self.gemini_base_url = gemini_base_url
        self.deepseek_model = deepseek_model
        self.gemini_model = gemini_model
        self.budget_s = budget_s
        self.primary_share = primary_share
        self.cache_seconds = cache_minutes * 60.0
        self._clock = clock
        self._monotonic = monotonic
        self.providers: list[_Provider] = []
        for name, key in (("deepseek", deepseek_api_key), ("gemini", google_api_key)):
            if key:  # an empty Secret is falsy: same as no key
                breaker = CircuitBreaker(breaker_failures, breaker_minutes * 60.0)
                self.providers.append(_Provider(name, key, breaker))  # type: ignore[arg-type]
        self._cache_day: date | None = None
        self._cache: dict[str, tuple[float, Opinion]] = {}
        # Async HTTP clients belong to the loop they were first used on; rebuild for a new one.
        self._models_loop: asyncio.AbstractEventLoop | None = None
        self._models: dict[str, BaseChatModel] = {}
        self._prepared = False

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **options: Any) -> LLMReviewer:
        """A reviewer with the keys (and DEEPSEEK_BASE_URL / GEMINI_BASE_URL, when set) from
        `settings` (default: the process settings)."""
        s = settings or get_settings()
        urls = {"deepseek_base_url": s.deepseek_base_url, "gemini_base_url": s.gemini_base_url}
        options = {**{k: v for k, v in urls.items() if v}, **options}
        return cls(deepseek_api_key=s.deepseek_api_key, google_api_key=s.google_api_key, **options)

    # -- public ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Import the configured providers' clients now (seconds on a cold start under
        load), so that no review's budget is spent importing. Idempotent and safe from a
        thread (the bot runs it in one at startup); `review` runs it before its clock starts.
        Raises ImportError when a configured provider's client is not installed."""
        if self._prepared:
            return
        importlib.import_module("langchain_core.messages")
        for provider in self.providers:
            importlib.import_module(_CLIENT_MODULES[provider.name])
        self._prepared = True

    async def review(self, candidate: Candidate) -> Opinion:
        """The opinion on `candidate`; never raises (any error -> heuristic, reason says why).

        Returns within about `budget_s` real seconds. A veto is logged as `llm_veto`.
        """
        if not self._prepared:  # in a thread: the event loop keeps serving the bot meanwhile
            with contextlib.suppress(ImportError):  # a missing client fails its call, below
                await asyncio.to_thread(self.prepare)
        started = self._monotonic()
        try:
            opinion = await self._review(candidate, started)
        except Exception as exc:  # the trader must never see an exception from here
            why = f"internal error {type(exc).__name__}: {self._redact(str(exc))[:120]}"
            opinion = self._fallback(candidate, started, [why])
        fields = {
            "symbol": candidate.symbol,
            "rule": candidate.rule,
            "source": opinion.source,
            "confidence": round(opinion.confidence, 3),
            "reason": self._redact(opinion.reason),
            "latency_s": round(opinion.latency_s, 3),
        }
        if opinion.approve:
            log.info("llm_approve", **fields)
        else:
            log.info("llm_veto", **fields)
        return opinion

    # -- internals ------------------------------------------------------------------------

    async def _review(self, candidate: Candidate, started: float) -> Opinion:
        cached = self._cached(candidate.symbol)
        if cached is not None:
            return cached._replace(
                reason=f"cached: {cached.reason}", latency_s=self._monotonic() - started
            )
        if not self.providers:
            return self._fallback(candidate, started, ["no LLM key configured"])

        deadline = started + self.budget_s
        failures: list[str] = []
        for index, provider in enumerate(self.providers):
            now = self._monotonic()
            if not provider.breaker.allows(now):
                failures.append(f"{provider.name}: circuit open")
                continue
            remaining = deadline - now
            if remaining < _MIN_CALL_SECONDS:
                failures.append(f"{provider.name}: no time left")
                continue
            later = [p for p in self.providers[index + 1 :] if p.breaker.allows(now)]
            timeout = remaining * self.primary_share if later else remaining
            try:
                verdict = await asyncio.wait_for(self._ask(provider, candidate), timeout)
            except Exception as exc:
                why = self._describe_failure(exc, timeout)
                failures.append(f"{provider.name}: {why}")
                opened = provider.breaker.record_failure(self._monotonic())
                log.warning(
                    "llm_provider_failed",
                    symbol=candidate.symbol,
                    provider=provider.name,
                    error=why,
                    consecutive_failures=provider.breaker.consecutive_failures,
                    circuit_opened=opened,
                )
                continue
            provider.breaker.record_success()
            approve, confidence, reason = verdict
            opinion = Opinion(
                approve, confidence, provider.name, reason, self._monotonic() - started
            )
            self._remember(candidate.symbol, opinion)
            return opinion
        return self._fallback(candidate, started, failures)

    async def _ask(self, provider: _Provider, candidate: Candidate) -> tuple[bool, float, str]:
        model = self._model(provider)
        answer = await model.ainvoke(build_messages(candidate))
        return parse_verdict(_answer_text(answer))

    def _model(self, provider: _Provider) -> BaseChatModel:
        loop = asyncio.get_running_loop()
        if loop is not self._models_loop:
            self._models_loop, self._models = loop, {}
        model = self._models.get(provider.name)
        if model is None:
            model = self._build_model(provider)
            self._models[provider.name] = model
        return model

    def _build_model(self, provider: _Provider) -> BaseChatModel:
        # Client timeouts are a backstop (wait_for is the real bound); retries would only
        # spend the budget twice, so each provider gets one attempt per review.
        if provider.name == "deepseek":
            from langchain_deepseek import ChatDeepSeek

            return ChatDeepSeek(
                model=self.deepseek_model,
                api_key=provider.key.reveal(),
                api_base=self.deepseek_base_url,
                temperature=0.0,
                max_tokens=200,
                max_retries=0,
                request_timeout=self.budget_s,
                model_kwargs={"response_format": {"type": "json_object"}},
            )
        from langchain_google_genai import ChatGoogleGenerativeAI

        return ChatGoogleGenerativeAI(
            model=self.gemini_model,
            google_api_key=provider.key.reveal(),
            base_url=self.gemini_base_url,
            vertexai=False,  # the Gemini Developer API, whatever GOOGLE_GENAI_USE_VERTEXAI says
            temperature=0.0,
            max_output_tokens=200,
            max_retries=1,  # 1 = a single attempt (0 would mean the SDK default)
            timeout=self.budget_s,
            response_mime_type="application/json",
            thinking_budget=0,  # a verdict needs no thinking tokens; they only add latency
        )

    def _describe_failure(self, exc: BaseException, timeout: float) -> str:
        if isinstance(exc, TimeoutError):
            return f"timeout after {timeout:.1f}s"
        if isinstance(exc, MalformedAnswer):
            return f"malformed answer: {self._redact(str(exc))}"
        status = getattr(exc, "status_code", None) or getattr(exc, "code", None)
        prefix = f"HTTP {status} " if isinstance(status, int) else ""
        return f"{prefix}{type(exc).__name__}: {self._redact(str(exc))[:160]}"

    def _fallback(self, candidate: Candidate, started: float, why: Sequence[str]) -> Opinion:
        opinion = heuristic_opinion(candidate, latency_s=self._monotonic() - started)
        return opinion._replace(reason=f"{opinion.reason} (LLM not used: {'; '.join(why)})")

    def _redact(self, text: str) -> str:
        for provider in self.providers:
            text = text.replace(provider.key.reveal(), "***")
        return text

    def _market_clock(self) -> _Clock:
        return self._clock or get_clock()

    def _cached(self, symbol: str) -> Opinion | None:
        clock = self._market_clock()
        today = clock.today()
        if today != self._cache_day:  # a new trading day starts with no opinions
            self._cache_day, self._cache = today, {}
            return None
        entry = self._cache.get(symbol)
        if entry is None or clock.epoch() - entry[0] >= self.cache_seconds:
            return None
        return entry[1]

    def _remember(self, symbol: str, opinion: Opinion) -> None:
        # Only LLM answers are cached: the heuristic is free, and a failure is no answer.
        self._cache[symbol] = (self._market_clock().epoch(), opinion)
