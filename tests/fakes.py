"""The one FAKE engine the tests share: scripted replies, not a model.

    engine = ScriptedEngine.from_script({"q0": ["Answer: 3", "CUT:Answer: 4"], "q1": "ERROR"})
    engine = ScriptedEngine(lambda request, k: "Answer: 7")        # any rule of your own
    engine.calls[0].ids, engine.calls[0].params.n                    # what was asked

It stands in where a test needs exact, chosen outputs (a stage's bookkeeping, the adaptive
policy, retries on invalid JSON); every behaviour it stands in for is also tested against
the real engines (tests/engines/).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.engines.base import Completion, Engine, Request, SampleParams, SampleResult

# reply(request, k) -> the k-th output for this request (k counts across calls), or None
# for a request that fails alone. A text starting with "CUT:" comes back truncated.
Reply = Callable[[Request, int], "str | None"]


@dataclass
class Call:
    requests: list[Request]
    params: SampleParams

    @property
    def ids(self) -> list[str | None]:
        return [r.id for r in self.requests]


def text_of(request: Request, turn: int = -1) -> str:
    """The text of one of the request's user turns (default: the last one)."""
    user = [m for m in request.messages if m["role"] == "user"][turn]
    return "".join(p["text"] for p in user["content"] if p["type"] == "text")


class ScriptedEngine(Engine):
    """FAKE engine: ``reply(request, k)`` decides every output; every call is recorded."""

    def __init__(self, reply: Reply):
        self.reply = reply
        self.calls: list[Call] = []
        self.drawn: dict[str | None, int] = {}  # request id -> outputs given so far
        self.closed = False

    @classmethod
    def from_script(cls, script: dict[str, list[str | None] | str], *, repeat_last: bool = False):
        """Replies per request id: a list replayed in order (cycled, or its last entry
        repeated with ``repeat_last``); ``"ERROR"`` or a None entry fails the request."""

        def reply(request: Request, k: int) -> str | None:
            entry = script[request.id]
            if entry == "ERROR":
                return None
            return entry[min(k, len(entry) - 1)] if repeat_last else entry[k % len(entry)]

        return cls(reply)

    def _sample(self, requests: list[Request], params: SampleParams) -> list[SampleResult]:
        self.calls.append(Call(list(requests), params))
        out = []
        for r in requests:
            comps = []
            for _ in range(params.n):
                k = self.drawn.get(r.id, 0)
                self.drawn[r.id] = k + 1
                text = self.reply(r, k)
                if text is None:
                    comps = None
                    break
                cut = text.startswith("CUT:")
                comps.append(Completion(text=text.removeprefix("CUT:"), token_ids=[1],
                                        finish_reason="length" if cut else "stop"))
            if comps is None:
                out.append(SampleResult(completions=[], error=f"request {r.id!r}: scripted failure"))
            else:
                out.append(SampleResult(completions=comps))
        return out

    def score(self, requests, completions):
        raise NotImplementedError("the scripted engine does not score")

    def close(self) -> None:
        self.closed = True

    @property
    def requests_seen(self) -> int:
        return sum(len(c.requests) for c in self.calls)


def record_calls(engine: Engine) -> list[Call]:
    """Record every ``sample`` call a (real) engine receives; returns the growing list."""
    calls: list[Call] = []
    inner = engine._sample

    def recording(requests, params):
        calls.append(Call(list(requests), params))
        return inner(requests, params)

    engine._sample = recording  # type: ignore[method-assign]
    return calls
