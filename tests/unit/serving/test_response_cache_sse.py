"""Entries from streams, streams from entries: what is stored and how a hit is replayed."""

from __future__ import annotations

import json
from typing import Any

from llmdeploy.serving.cache.key import Endpoint
from llmdeploy.serving.cache.sse import assemble, completion_tokens, is_complete, replay, sse_events

BASE = {"id": "chatcmpl-1", "created": 1700000000, "model": "tiny"}


def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
    return "data: " + json.dumps({**BASE, "object": "chat.completion.chunk", "choices": choices, **extra}) + "\n\n"


def delta(content: str | None = None, *, role: str | None = None, finish: str | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if role:
        d["role"] = role
    if content is not None:
        d["content"] = content
    return {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish, "stop_reason": None}


def chat_stream(*, done: bool = True, finish: str | None = "length") -> list[str]:
    packets = [
        chunk([delta("", role="assistant")]),
        # Ray Serve LLM may batch several chunks into one packet.
        chunk([delta("Hel")]) + chunk([delta("lo")]),
        chunk([delta("", finish=finish)]),
        chunk([], usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}),
    ]
    if done:
        packets.append("data: [DONE]\n\n")
    return packets


def test_a_finished_stream_assembles_into_a_complete_chat_response() -> None:
    response = assemble(Endpoint.CHAT, chat_stream())
    assert response is not None
    assert response["object"] == "chat.completion"
    assert response["id"] == "chatcmpl-1"
    (choice,) = response["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Hello"}
    assert choice["finish_reason"] == "length"
    assert completion_tokens(response) == 2


def test_unfinished_errored_or_unsupported_streams_are_not_stored() -> None:
    assert assemble(Endpoint.CHAT, chat_stream(done=False)) is None
    assert assemble(Endpoint.CHAT, chat_stream(finish=None)) is None
    assert assemble(Endpoint.CHAT, chat_stream(finish="abort")) is None
    errored = [*chat_stream()[:2], 'data: {"error": {"message": "boom", "code": 500}}\n\n', "data: [DONE]\n\n"]
    assert assemble(Endpoint.CHAT, errored) is None
    tool_call = chunk([{**delta(), "delta": {"tool_calls": [{"index": 0, "function": {"name": "f"}}]}}])
    assert assemble(Endpoint.CHAT, [*chat_stream()[:1], tool_call, *chat_stream()[2:]]) is None
    assert assemble(Endpoint.CHAT, ["data: not json\n\n", "data: [DONE]\n\n"]) is None


def test_is_complete_wants_every_choice_finished() -> None:
    finished = {"object": "chat.completion", "choices": [{"finish_reason": "stop"}, {"finish_reason": "length"}]}
    assert is_complete(finished)
    assert not is_complete({**finished, "choices": [{"finish_reason": "stop"}, {"finish_reason": None}]})
    assert not is_complete({"object": "error", "message": "x"})
    assert not is_complete({"object": "chat.completion", "choices": []})


def test_a_stored_chat_response_replays_as_sse_that_reassembles_to_itself() -> None:
    stored = assemble(Endpoint.CHAT, chat_stream())
    assert stored is not None
    packets = replay(Endpoint.CHAT, stored, include_usage=True)
    events = sse_events(packets)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 2
    assert assemble(Endpoint.CHAT, packets) == stored
    without_usage = sse_events(replay(Endpoint.CHAT, stored, include_usage=False))
    assert not any("usage" in json.loads(e) for e in without_usage[:-1])


def test_a_completions_response_replays_as_text_completion_chunks() -> None:
    stored = {
        **BASE,
        "object": "text_completion",
        "choices": [{"index": 0, "text": "abc", "logprobs": None, "finish_reason": "stop", "stop_reason": None}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
    }
    packets = replay(Endpoint.COMPLETIONS, stored, include_usage=False)
    chunks = [json.loads(e) for e in sse_events(packets)[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "abc"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    reassembled = assemble(Endpoint.COMPLETIONS, packets)
    assert reassembled is not None
    assert reassembled["choices"][0]["text"] == "abc"
