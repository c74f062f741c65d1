"""The response cache: exact-match answers to repeated deterministic requests.

`key` decides which requests share an entry (model identity, tenant scope, the normalized
request), `backends` stores entries (in memory, in a shared Ray actor, or in Redis), `service`
keeps a failing backend from ever failing a request, and `sse` turns streams into entries and
entries back into streams. The ingress (`llmdeploy.serving.ingress`) wires them into Ray Serve
LLM's OpenAI endpoints.
"""
