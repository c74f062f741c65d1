"""The operator's copy of vLLM's quantization facts must match the pinned engine."""

from __future__ import annotations

import pytest

from llmdeploy.operator import quantization as q

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (the [serving] set-up installs it)")


def test_pinned_version_is_installed() -> None:
    assert vllm.__version__ == q.PINNED_VLLM_VERSION


def test_min_capabilities_are_vllms() -> None:
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, get_quantization_config

    declared = {m: get_quantization_config(m).get_min_capability() for m in QUANTIZATION_METHODS}
    assert declared == q.MIN_CAPABILITY


def test_enum_lists_every_method() -> None:
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    assert {m.value for m in q.QuantizationMethod} - {"none"} == set(QUANTIZATION_METHODS)


def test_kv_cache_dtypes_exist_in_vllm() -> None:
    import typing

    from vllm.config.cache import CacheDType

    assert {d.value for d in q.KVCacheDtype} <= set(typing.get_args(CacheDType))
