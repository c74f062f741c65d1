"""Stored responses and streams: what may be stored, and how a stored response is replayed.

An entry is always the complete, non-streaming OpenAI response body (`chat.completion` or
`text_completion`), whichever way it was produced:

- a non-streaming response is stored as the exact bytes the engine's response had, so a hit
  returns an identical body;
- a streaming response is assembled from its chunks as they pass through (`assemble`), and
  stored only when the stream ended with `data: [DONE]`, carried no error, and every choice has
  a finish reason. Streams with tool-call or log-probability deltas are not assembled (their
  merge rules are the engine's business, and getting them subtly wrong would serve a corrupt
  answer): such requests are simply answered by the engine again.

A streaming request answered from the cache is replayed (`replay`) the way Ray Serve LLM streams
vLLM's chunks: `data: <chunk JSON>\\n\\n` events, the role first (chat), then the content, then
the finish reason, a usage chunk when the request asked for one (`stream_options.include_usage`),
and `data: [DONE]`. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final

from llmdeploy.serving.cache.key import Endpoint

DONE: Final = "[DONE]"
# Finish reasons of a response that was cut short by the server rather than finished.
UNFINISHED: Final = frozenset({None, "abort", "error"})


def is_complete(response: dict[str, Any]) -> bool:
    """A response worth storing: no error, at least one choice, and every choice finished."""
    if "error" in response or response.get("object") in (None, "error"):
        return False
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    return all(isinstance(c, dict) and c.get("finish_reason") not in UNFINISHED for c in choices)


def completion_tokens(response: dict[str, Any]) -> int:
    """Tokens the engine generated for `response` (0 where the usage is unknown)."""
    usage = response.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return int(usage["completion_tokens"])
    return 0


def sse_events(packets: Iterable[str]) -> list[str]:
    """The `data:` payloads of SSE packets (a packet may carry several events)."""
    events: list[str] = []
    for packet in packets:
        for block in packet.split("\n\n"):
            block = block.strip()
            if block.startswith("data:"):
                events.append(block[len("data:") :].strip())
    return events


def assemble(endpoint: Endpoint, packets: Iterable[str]) -> dict[str, Any] | None:
    """The complete response a finished stream amounts to, or None when it must not be stored."""
    events = sse_events(packets)
    if not events or events[-1] != DONE:
        return None
    head: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    choices: dict[int, dict[str, Any]] = {}
    for event in events[:-1]:
        try:
            chunk = json.loads(event)
        except json.JSONDecodeError:
            return None
        if not isinstance(chunk, dict) or "error" in chunk:
            return None
        head = head or chunk
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        for part in chunk.get("choices") or []:
            if not _merge(endpoint, choices.setdefault(int(part.get("index", 0)), {}), part):
                return None
    if head is None or not choices:
        return None
    response = {
        "id": head.get("id"),
        "object": "chat.completion" if endpoint is Endpoint.CHAT else "text_completion",
        "created": head.get("created"),
        "model": head.get("model"),
        "choices": [_finish(endpoint, index, choices[index]) for index in sorted(choices)],
        "usage": usage,
    }
    return response if is_complete(response) else None


def _merge(endpoint: Endpoint, acc: dict[str, Any], part: dict[str, Any]) -> bool:
    """Fold one streamed choice into `acc`; False for deltas this module does not assemble."""
    if part.get("logprobs") is not None:
        return False
    if endpoint is Endpoint.CHAT:
        delta = part.get("delta") or {}
        if delta.get("tool_calls") or delta.get("function_call"):
            return False
        if delta.get("role"):
            acc["role"] = delta["role"]
        acc["content"] = acc.get("content", "") + (delta.get("content") or "")
    else:
        acc["text"] = acc.get("text", "") + (part.get("text") or "")
    if part.get("finish_reason") is not None:
        acc["finish_reason"] = part["finish_reason"]
        acc["stop_reason"] = part.get("stop_reason")
    return True


def _finish(endpoint: Endpoint, index: int, acc: dict[str, Any]) -> dict[str, Any]:
    tail = {"logprobs": None, "finish_reason": acc.get("finish_reason"), "stop_reason": acc.get("stop_reason")}
    if endpoint is Endpoint.CHAT:
        message = {"role": acc.get("role", "assistant"), "content": acc.get("content", "")}
        return {"index": index, "message": message, **tail}
    return {"index": index, "text": acc.get("text", ""), **tail}


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n"


def replay(endpoint: Endpoint, response: dict[str, Any], *, include_usage: bool) -> list[str]:
    """SSE packets that stream a stored complete response, ending with `data: [DONE]`."""
    chat = endpoint is Endpoint.CHAT
    base = {
        "id": response.get("id"),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": response.get("created"),
        "model": response.get("model"),
    }
    packets: list[str] = []
    choices = response.get("choices") or []
    for choice in choices:
        index = choice.get("index", 0)
        if chat:
            message = choice.get("message") or {}
            role = {"role": message.get("role", "assistant"), "content": ""}
            packets.append(_event({**base, "choices": [_chunk_choice(index, role, None)]}))
            delta: dict[str, Any] = {"content": message.get("content") or ""}
            if message.get("tool_calls"):
                delta["tool_calls"] = [
                    {"index": i, **{k: v for k, v in call.items() if k != "index"}}
                    for i, call in enumerate(message["tool_calls"])
                ]
            packets.append(_event({**base, "choices": [_chunk_choice(index, delta, choice.get("logprobs"))]}))
            finish = {**_chunk_choice(index, {}, None), "finish_reason": choice.get("finish_reason")}
        else:
            text = {"index": index, "text": choice.get("text") or "", "logprobs": choice.get("logprobs")}
            packets.append(_event({**base, "choices": [{**text, "finish_reason": None}]}))
            finish = {"index": index, "text": "", "logprobs": None, "finish_reason": choice.get("finish_reason")}
        finish["stop_reason"] = choice.get("stop_reason")
        packets.append(_event({**base, "choices": [finish]}))
    if include_usage and isinstance(response.get("usage"), dict):
        packets.append(_event({**base, "choices": [], "usage": response["usage"]}))
    packets.append(f"data: {DONE}\n\n")
    return packets


def _chunk_choice(index: int, delta: dict[str, Any], logprobs: Any) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": None}
