"""The serving application that runs inside Ray: vLLM behind an OpenAI-compatible API."""
