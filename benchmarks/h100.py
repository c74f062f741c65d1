"""The measured cost model the simulations share: a Llama-3-8B-shaped model, bf16, one H100.

Milliseconds measured with vLLM on one H100: prefill of a single prompt by its length in
tokens, and one decode step by batch size at 1,024 tokens of context (eager mode, so an upper
bound for vLLM with CUDA graphs). Kept in the checkout, so that every benchmark runs from it
alone.
"""

from __future__ import annotations

from typing import Final

PREFILL_MS: Final = {128: 20.17, 512: 19.67, 2048: 62.33, 8192: 264.2}
DECODE_STEP_MS: Final = {1: 17.94, 8: 18.63, 32: 25.74, 64: 40.48}
SOURCE: Final = "Llama-3-8B-shaped bf16 on one H100 per replica (measured cost model: benchmarks/h100.py)"
