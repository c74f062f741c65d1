"""Which requests share a response-cache entry, and which are cacheable at all."""

from __future__ import annotations

from typing import Any

import pytest

from llmdeploy.serving.cache.key import (
    IGNORED_FIELDS,
    Cacheability,
    Endpoint,
    api_key_id,
    cache_key,
    cacheability,
    tenant_scope,
)

IDENTITY = "0123456789abcdef"
NOBODY = tenant_scope(tenant=None, api_key=None)


def chat(**fields: Any) -> dict[str, Any]:
    """A dumped chat request: every field present, as `model_dump()` gives it."""
    request: dict[str, Any] = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Hello"}],
        "temperature": 0.0,
        "top_p": None,
        "max_tokens": 16,
        "seed": None,
        "n": 1,
        "logprobs": False,
        "stop": [],
        "stream": False,
        "stream_options": None,
        "user": None,
        "request_id": "abc",
        "tools": None,
    }
    request.update(fields)
    return request


def key(request: dict[str, Any], **overrides: Any) -> str:
    args: dict[str, Any] = {
        "model_identity": IDENTITY,
        "scope": NOBODY,
        "endpoint": Endpoint.CHAT,
        "request": request,
    }
    args.update(overrides)
    return cache_key(**args)


def test_the_same_request_gets_the_same_key() -> None:
    assert key(chat()) == key(chat())
    assert len(key(chat())) == 64


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("messages", [{"role": "user", "content": "Hello!"}]),
        ("messages", [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hello"}]),
        ("model", "tiny-lora"),
        ("max_tokens", 17),
        ("temperature", 0.5),
        ("top_p", 0.9),
        ("seed", 7),
        ("n", 2),
        ("logprobs", True),
        ("stop", ["\n"]),
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ("frequency_penalty", 0.1),
    ],
)
def test_any_output_changing_field_changes_the_key(field: str, value: Any) -> None:
    assert key(chat(**{field: value})) != key(chat())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stream", True),
        ("stream_options", {"include_usage": True}),
        ("user", "alice"),
        ("request_id", "other"),
        ("priority", 5),
    ],
)
def test_transport_and_bookkeeping_fields_do_not_change_the_key(field: str, value: Any) -> None:
    assert field in IGNORED_FIELDS
    assert key(chat(**{field: value})) == key(chat())


def test_an_unknown_field_splits_entries_rather_than_merging_them() -> None:
    assert key(chat(new_sampling_knob=3)) != key(chat())


def test_endpoint_and_model_identity_are_part_of_the_key() -> None:
    assert key(chat(), endpoint=Endpoint.COMPLETIONS) != key(chat())
    assert key(chat(), model_identity="fedcba9876543210") != key(chat())


def test_tenants_and_api_keys_never_share_entries() -> None:
    base = key(chat())
    tenant_a = key(chat(), scope=tenant_scope(tenant="a", api_key=None))
    tenant_b = key(chat(), scope=tenant_scope(tenant="b", api_key=None))
    key_1 = key(chat(), scope=tenant_scope(tenant="a", api_key="sk-one"))
    key_2 = key(chat(), scope=tenant_scope(tenant="a", api_key="sk-two"))
    assert len({base, tenant_a, tenant_b, key_1, key_2}) == 5
    assert key(chat(), scope=tenant_scope(tenant="a", api_key="sk-one")) == key_1
    # An empty header is no tenant.
    assert tenant_scope(tenant="", api_key="") == NOBODY


def test_the_api_key_identity_is_a_hash_not_the_key() -> None:
    identity = api_key_id("sk-secret-value")
    assert identity is not None
    assert "sk-secret-value" not in identity
    assert identity == api_key_id("sk-secret-value") != api_key_id("sk-secret-valuf")
    assert api_key_id(None) is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"temperature": 0.0}, Cacheability.CACHEABLE),
        ({"temperature": 0}, Cacheability.CACHEABLE),
        ({"temperature": 0.7, "seed": 3}, Cacheability.CACHEABLE),
        ({"temperature": None, "seed": 0}, Cacheability.CACHEABLE),
        ({"temperature": 0.7, "use_beam_search": True}, Cacheability.CACHEABLE),
        ({"temperature": 0.7}, Cacheability.NONDETERMINISTIC),
        # An unset temperature is the model's default (sampled).
        ({"temperature": None}, Cacheability.NONDETERMINISTIC),
    ],
)
def test_only_deterministic_requests_are_cacheable(fields: dict[str, Any], expected: Cacheability) -> None:
    assert cacheability(chat(**fields), cache_nondeterministic=False) is expected


def test_sampled_requests_are_cacheable_when_the_deployment_opts_in() -> None:
    request = chat(temperature=1.0)
    assert cacheability(request, cache_nondeterministic=True) is Cacheability.CACHEABLE
