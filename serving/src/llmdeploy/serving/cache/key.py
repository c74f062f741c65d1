"""The response cache's key: which requests may share a stored response. Pure: no Ray, no I/O.

A key is a SHA-256 over four things, so that two requests share an entry only when the engine
would give them the same text:

- the model identity (`ServingArgs.model_identity`: source, revision, quantization and the
  engine settings that change outputs), so a new model never serves old entries;
- the tenant scope (the tenant header's value and a hash of the API key, see `tenant_scope`),
  so one tenant never receives another's cached text;
- the endpoint (chat or completions);
- the request as the engine sees it: `model_dump()` of the OpenAI request model, so a field left
  out and the same field given its default are one request, minus `IGNORED_FIELDS`.

The request side is a deny-list on purpose: a field this module does not know (a new vLLM
sampling option) stays in the key, which can only split entries, never merge two requests
whose outputs differ.

Which requests are cacheable (`cacheability`):

- Deterministic ones: `temperature == 0` (greedy) or a fixed `seed`. Sampled requests are
  cached only when the deployment opts in (`cache_nondeterministic`), since repeats then get
  the first sample instead of fresh ones.
- `n > 1` and `logprobs`: cached; both are deterministic under the rules above and are part of
  the key, so a request with other `n` or `logprobs` settings gets its own entry.
- `tools`: cached. The server executes no tool; a cached tool call is the one the engine would
  have produced again, and tool results come back in later messages, which make a new key.
- Beam search (`use_beam_search`) is deterministic and cached like greedy decoding.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

# Bump when the key derivation or the stored value changes, so old entries are never read.
KEY_VERSION: Final = 1

# Request fields that do not change the text the engine returns: transport (`stream`,
# `stream_options`), bookkeeping (`user`, `request_id`, `session_id`), scheduling (`priority`,
# `stream_interval`), prefix-cache salting and disaggregated-serving transfer parameters.
IGNORED_FIELDS: Final = frozenset(
    {
        "stream",
        "stream_options",
        "stream_interval",
        "user",
        "request_id",
        "session_id",
        "priority",
        "cache_salt",
        "kv_transfer_params",
        "ec_transfer_params",
    }
)


class Endpoint(StrEnum):
    CHAT = "chat"
    COMPLETIONS = "completions"


class Cacheability(StrEnum):
    CACHEABLE = "cacheable"
    NONDETERMINISTIC = "nondeterministic"


def is_deterministic(request: dict[str, Any]) -> bool:
    """Greedy decoding (temperature 0), a fixed seed, or beam search.

    vLLM's default temperature (a missing field) comes from the model's generation config,
    usually 1.0, so an unset temperature without a seed is sampled.
    """
    temperature = request.get("temperature")
    if temperature is not None and float(temperature) == 0.0:
        return True
    return request.get("seed") is not None or bool(request.get("use_beam_search"))


def cacheability(request: dict[str, Any], *, cache_nondeterministic: bool) -> Cacheability:
    if cache_nondeterministic or is_deterministic(request):
        return Cacheability.CACHEABLE
    return Cacheability.NONDETERMINISTIC


def normalize(request: dict[str, Any]) -> dict[str, Any]:
    """The part of a dumped OpenAI request that decides its output."""
    return {name: value for name, value in request.items() if name not in IGNORED_FIELDS}


@dataclass(frozen=True)
class TenantScope:
    """Who may read an entry: the tenant header's value and the API key's hash (or None)."""

    tenant: str | None
    api_key_id: str | None


def api_key_id(api_key: str | None) -> str | None:
    """A stable identity for an API key that cannot be turned back into the key."""
    if not api_key:
        return None
    return hashlib.sha256(b"llmdeploy-api-key\0" + api_key.encode()).hexdigest()[:32]


def tenant_scope(*, tenant: str | None, api_key: str | None) -> TenantScope:
    return TenantScope(tenant=tenant or None, api_key_id=api_key_id(api_key))


def cache_key(*, model_identity: str, scope: TenantScope, endpoint: Endpoint, request: dict[str, Any]) -> str:
    """The hex SHA-256 key of a request (see the module docstring for what it covers)."""
    material = {
        "v": KEY_VERSION,
        "model_identity": model_identity,
        "tenant": scope.tenant,
        "api_key": scope.api_key_id,
        "endpoint": endpoint.value,
        "request": normalize(request),
    }
    encoded = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()
