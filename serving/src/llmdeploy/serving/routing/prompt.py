"""The prompt tokens a request will put in front of vLLM's prefix cache, as the router sees them.

vLLM caches KV blocks of the rendered, tokenized prompt: for a chat request the chat template
applied to the messages (with the generation prompt), for a completion the prompt's tokens.
The router hashes the same tokens, so chat requests and completions that render to the same
prefix match each other, and a system prompt shared by many conversations matches block by
block.

`PromptTokenizer` loads the model's own tokenizer (Hugging Face files next to the weights or on
the hub, with `HF_TOKEN` from the environment). Where the tokenizer cannot be loaded in the
router's process (a model volume mounted only on the engine pods), it falls back to a
byte-level stand-in: four UTF-8 bytes per token over a plain rendering of the messages. Its
blocks do not line up with vLLM's, but equal prefixes still give equal leading blocks, which is
all affinity needs; the fallback is logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

_logger = logging.getLogger("ray.serve")

# Bytes per token of the fallback tokenizer: about the mean of English BPE vocabularies.
FALLBACK_BYTES_PER_TOKEN: Final = 4


class Tokenizer(Protocol):
    """The slice of a Hugging Face tokenizer the router uses."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


def _field(request: Any, name: str) -> Any:
    if isinstance(request, Mapping):
        return request.get(name)
    return getattr(request, name, None)


def _plain(value: Any) -> Any:
    """Pydantic models and TypedDict-like mappings as plain JSON-able values."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(exclude_none=True)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_content_text(part) for part in content)
    if isinstance(content, Mapping):
        text = content.get("text")
        return text if isinstance(text, str) else ""
    return ""


def render_messages_plain(messages: Sequence[Mapping[str, Any]]) -> str:
    """A deterministic rendering of chat messages for the fallback tokenizer."""
    return "".join(f"<{m.get('role', '')}>{_content_text(m.get('content'))}\n" for m in messages)


def fallback_tokens(text: str) -> list[int]:
    data = text.encode("utf-8", errors="surrogatepass")
    step = FALLBACK_BYTES_PER_TOKEN
    return [int.from_bytes(data[i : i + step], "little") for i in range(0, len(data), step)]


class PromptTokenizer:
    """Request → prompt token ids, with the model's tokenizer or the byte-level fallback."""

    def __init__(self, tokenizer: Tokenizer | None) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, source: str | None, *, trust_remote_code: bool = False) -> PromptTokenizer:
        """Load the tokenizer of `source` (a folder or hub id); the fallback where that fails."""
        if source:
            try:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
            except Exception as err:  # any loader failure: the fallback still routes by prefix
                _logger.warning(
                    "prefix-aware routing: tokenizer of %s not loadable here (%s: %s); "
                    "using byte blocks, which match prefixes but not vLLM's block boundaries",
                    source,
                    type(err).__name__,
                    str(err).splitlines()[0] if str(err) else "",
                )
            else:
                return cls(tokenizer)
        return cls(None)

    @property
    def exact(self) -> bool:
        """Whether tokens are the model's own (blocks line up with vLLM's)."""
        return self.tokenizer is not None

    def tokens(self, request: Any) -> list[int] | None:
        """The prompt tokens of a chat or completion request; None when it has no prompt."""
        messages = _field(request, "messages")
        if messages is not None:
            return self._chat_tokens(request, [_plain(m) for m in messages])
        prompt = _field(request, "prompt")
        if prompt is None:
            return None
        if isinstance(prompt, list):
            if not prompt:
                return None
            if all(isinstance(t, int) for t in prompt):
                return list(prompt)
            # A batch of prompts goes to one replica: the first one decides.
            prompt = prompt[0]
            if isinstance(prompt, list):
                return [int(t) for t in prompt]
        if not isinstance(prompt, str):
            return None
        if self.tokenizer is None:
            return fallback_tokens(prompt)
        return list(self.tokenizer.encode(prompt))

    def _chat_tokens(self, request: Any, messages: list[Any]) -> list[int]:
        if self.tokenizer is None:
            return fallback_tokens(render_messages_plain(messages))
        kwargs: dict[str, Any] = {
            "tokenize": False,
            "add_generation_prompt": bool(_field(request, "add_generation_prompt") is not False),
        }
        if _field(request, "continue_final_message"):
            kwargs["continue_final_message"] = True
            kwargs["add_generation_prompt"] = False
        tools = _field(request, "tools")
        if tools:
            kwargs["tools"] = _plain(tools)
        extra = _field(request, "chat_template_kwargs")
        if isinstance(extra, Mapping):
            kwargs.update(extra)
        try:
            text = self.tokenizer.apply_chat_template(messages, **kwargs)
        except Exception:  # a template that refuses these messages: vLLM answers the error
            return fallback_tokens(render_messages_plain(messages))
        # vLLM encodes a rendered chat without adding special tokens again.
        return list(self.tokenizer.encode(str(text), add_special_tokens=False))
