"""The router's prompt tokenization (with the byte fallback) and the shared placement log."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmdeploy.serving.routing.prompt import PromptTokenizer, fallback_tokens, render_messages_plain
from llmdeploy.serving.routing.shared import PrefixLog


class CharTokenizer:
    """One token per character; a chat template that tags roles (as ChatML does)."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([1] if add_special_tokens else []) + [ord(c) for c in text]

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> str:
        rendered = "".join(f"<{m['role']}>{m['content']}" for m in conversation)
        return rendered + ("<assistant>" if kwargs.get("add_generation_prompt") else "")


def test_a_chat_is_rendered_with_the_template_and_not_given_special_tokens_twice() -> None:
    tokenizer = PromptTokenizer(CharTokenizer())

    tokens = tokenizer.tokens({"messages": [{"role": "user", "content": "hi"}]})

    assert tokens == [ord(c) for c in "<user>hi<assistant>"]


def test_a_chat_and_a_completion_of_the_same_rendered_text_share_their_tokens() -> None:
    tokenizer = PromptTokenizer(CharTokenizer())
    chat = tokenizer.tokens({"messages": [{"role": "system", "content": "S"}], "add_generation_prompt": False})
    completion = tokenizer.tokens({"prompt": "<system>S"})

    assert chat is not None and completion is not None
    assert completion[1:] == chat  # the completion adds the tokenizer's BOS, as vLLM does


@pytest.mark.parametrize(
    ("request_body", "expected"),
    [
        ({"prompt": [5, 6, 7]}, [5, 6, 7]),
        ({"prompt": [[5, 6], [8]]}, [5, 6]),
        ({"prompt": ["ab", "cd"]}, [1, ord("a"), ord("b")]),
        ({"prompt": []}, None),
        ({"input": "embeddings have no prompt"}, None),
    ],
)
def test_completion_prompt_forms(request_body: dict[str, Any], expected: list[int] | None) -> None:
    assert PromptTokenizer(CharTokenizer()).tokens(request_body) == expected


def test_pydantic_requests_are_read_like_dicts() -> None:
    from pydantic import BaseModel

    class Chat(BaseModel):
        messages: list[dict[str, str]]
        add_generation_prompt: bool = True

    tokenizer = PromptTokenizer(CharTokenizer())

    assert tokenizer.tokens(Chat(messages=[{"role": "user", "content": "x"}])) == tokenizer.tokens(
        {"messages": [{"role": "user", "content": "x"}]}
    )


def test_a_missing_tokenizer_falls_back_to_byte_blocks() -> None:
    tokenizer = PromptTokenizer.load(None)

    assert not tokenizer.exact
    assert tokenizer.tokens({"prompt": "abcdefgh"}) == fallback_tokens("abcdefgh")
    assert len(fallback_tokens("abcdefgh")) == 2


@given(st.text(), st.text(min_size=1))
def test_fallback_tokens_keep_prefixes_of_four_byte_multiples(head: str, tail: str) -> None:
    data = head.encode("utf-8", errors="surrogatepass")
    whole = len(data) // 4
    assert fallback_tokens(head + tail)[:whole] == fallback_tokens(head)[:whole]


def test_plain_rendering_keeps_roles_apart() -> None:
    assert render_messages_plain([{"role": "user", "content": "a"}]) != render_messages_plain(
        [{"role": "system", "content": "a"}]
    )
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert render_messages_plain(parts) == "<user>ab\n"


def test_the_log_returns_only_other_routers_placements_newer_than_asked() -> None:
    log = PrefixLog(capacity=100)

    assert log.exchange("a", 0, [("r1", (1, 2))]).placements == []
    first = log.exchange("b", 0, [("r2", (3,))])
    assert first.placements == [("r1", (1, 2))]
    again = log.exchange("b", first.seq, [])
    assert again.placements == []
    assert log.exchange("a", 1, []).placements == [("r2", (3,))]


def test_the_log_is_bounded_and_says_when_a_router_fell_behind() -> None:
    log = PrefixLog(capacity=3)
    log.exchange("a", 0, [("r", (i,)) for i in range(10)])

    late = log.exchange("b", 0, [])

    assert len(log) == 3
    assert late.lagged
    assert late.placements == [("r", (7,)), ("r", (8,)), ("r", (9,))]
    assert not log.exchange("b", late.seq, []).lagged


def test_a_log_needs_room() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PrefixLog(capacity=0)
