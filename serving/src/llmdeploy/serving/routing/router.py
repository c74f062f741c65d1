"""Ray Serve request router of the engine deployment: prefix-cache affinity within a load bound.

Glue only: tokenization is `prompt.PromptTokenizer`, the decision `view.RoutingView` (the
index and the policy are pure), the shared state `shared.PrefixLog`. Ray Serve builds one
router per handle to the engine deployment (each ingress replica has one) from
`request_router_config`, and calls:

- `choose_replicas` for a request: the preferred replica first, then the rest by queue length.
  Ray still probes the first rank and moves on when its queue is full, so affinity never
  sends a request to a replica that refuses it.
- `on_request_routed` once it is placed: the index learns that the replica holds its blocks.
- `update_replicas` / `on_replica_actor_died`: gone replicas are forgotten.

Nothing on the request path waits for another process: the shared log is exchanged by a
background task every `sync_interval_s`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

import ray
from cachetools import LRUCache
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica
from ray.util import metrics

from llmdeploy.serving.routing.index import block_hashes
from llmdeploy.serving.routing.policy import Decision, RoutingParams
from llmdeploy.serving.routing.prompt import PromptTokenizer
from llmdeploy.serving.routing.shared import DEFAULT_LOG_CAPACITY, Exchange, PrefixLogActor
from llmdeploy.serving.routing.view import RoutingView

_logger = logging.getLogger("ray.serve")

# Requests between choice and placement; entries of requests never placed age out.
MAX_IN_FLIGHT_DECISIONS: Final = 8_192
# Prompt-token histogram buckets (tokens) and decision-latency buckets (seconds).
MATCHED_TOKEN_BUCKETS: Final = [16.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0]
DECISION_SECONDS_BUCKETS: Final = [1e-5, 2.5e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3, 2e-2]


@dataclass(frozen=True)
class _Pending:
    hashes: list[int]
    prompt_tokens: int
    decision: Decision | None = None


class _Metrics:
    """The router's metrics, labelled `deployment` with the engine deployment's name (`LLMServer:<name>`),
    as the engine's own Ray Serve series are, so dashboards select one LLMDeployment the same way."""

    def __init__(self, deployment: str) -> None:
        tags = {"deployment": deployment}
        self.decisions = metrics.Counter(
            "llmdeploy_router_decisions",
            description="Requests routed to the engine replicas, by outcome: affinity (the replica "
            "holding the longest prefix), fallback (load decided), no_prompt (nothing to match).",
            tag_keys=("deployment", "outcome"),
        ).set_default_tags(tags)
        self.matched_tokens = metrics.Histogram(
            "llmdeploy_router_matched_prefix_tokens",
            description="Prompt tokens the chosen replica was expected to hold in its prefix cache.",
            boundaries=MATCHED_TOKEN_BUCKETS,
            tag_keys=("deployment",),
        ).set_default_tags(tags)
        self.index_blocks = metrics.Gauge(
            "llmdeploy_router_index_blocks",
            description="(block, replica) entries in this router's prefix index.",
            tag_keys=("deployment",),
        ).set_default_tags(tags)
        self.decision_seconds = metrics.Histogram(
            "llmdeploy_router_decision_seconds",
            description="Time to match a prompt's blocks and choose a replica (tokenization excluded).",
            boundaries=DECISION_SECONDS_BUCKETS,
            tag_keys=("deployment",),
        ).set_default_tags(tags)


class PrefixAwareRouter(RequestRouter):
    """Routes each request to the replica that holds most of its prompt prefix, within a load bound."""

    def initialize_state(
        self,
        *,
        block_size: int = 16,
        max_load_ratio: float = 1.5,
        index_max_blocks: int = 1_000_000,
        tokenizer_source: str | None = None,
        trust_remote_code: bool = False,
        prefill_s_per_token: float | None = None,
        prefill_floor_s: float | None = None,
        queue_s_per_request: float | None = None,
        sync_interval_s: float = 0.25,
        log_capacity: int = DEFAULT_LOG_CAPACITY,
        **_: Any,
    ) -> None:
        """Called by Ray Serve with `request_router_kwargs`."""
        costs = {
            name: value
            for name, value in (
                ("prefill_s_per_token", prefill_s_per_token),
                ("prefill_floor_s", prefill_floor_s),
                ("queue_s_per_request", queue_s_per_request),
            )
            if value is not None
        }
        params = RoutingParams(block_size=block_size, max_load_ratio=max_load_ratio, **costs)
        self._view = RoutingView(params, index_max_blocks)
        self._sync_interval_s = sync_interval_s
        self._log_capacity = log_capacity
        self._pending: LRUCache[str, _Pending] = LRUCache(maxsize=MAX_IN_FLIGHT_DECISIONS)
        self._source = uuid.uuid4().hex
        self._seq = 0
        self._log: Any = None
        self._sync_task: asyncio.Task[None] | None = None
        self._metrics = _Metrics(self._deployment_id.name if self._deployment_id else "")
        # The tokenizer loads in the background; the first decision waits for it.
        self._tokenizer_future = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="llmdeploy-tokenizer"
        ).submit(PromptTokenizer.load, tokenizer_source, trust_remote_code=trust_remote_code)

    # -- decisions ------------------------------------------------------------------------

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        self._ensure_sync_task()
        if not candidate_replicas:
            return []
        prompt = await self._prompt(pending_request)
        by_load = sorted(candidate_replicas, key=self._queued)
        if prompt is None or not prompt.hashes or pending_request is None:
            return [by_load]
        started = time.perf_counter()
        candidates = {str(r.replica_id.to_full_id_str()): r for r in candidate_replicas}
        queued = {rid: self._queued(r) for rid, r in candidates.items()}
        decision = self._view.decide(prompt.hashes, queued, time.monotonic())
        self._metrics.decision_seconds.observe(time.perf_counter() - started)
        self._pending[pending_request.metadata.internal_request_id] = _Pending(
            prompt.hashes, prompt.prompt_tokens, decision
        )
        chosen = candidates[decision.replica]
        rest = [r for r in by_load if r is not chosen]
        return [[chosen], rest] if rest else [[chosen]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        if pending_request is None:
            return
        pending = self._pending.pop(pending_request.metadata.internal_request_id, None)
        if pending is None or pending.decision is None:
            self._metrics.decisions.inc(tags={"outcome": "no_prompt"})
            return
        replica = str(replica_id.to_full_id_str())
        decision = pending.decision
        kept = decision.replica == replica
        outcome = "affinity" if decision.affinity and kept else "fallback"
        self._metrics.decisions.inc(tags={"outcome": outcome})
        matched = decision.matched_blocks if kept else self._view.index.match(pending.hashes, [replica]).get(replica, 0)
        self._metrics.matched_tokens.observe(float(matched * self._view.params.block_size))
        self._view.placed(
            replica, pending.hashes, matched_blocks=matched, prompt_tokens=pending.prompt_tokens, now=time.monotonic()
        )
        self._metrics.index_blocks.set(float(len(self._view.index)))

    async def _prompt(self, pending_request: PendingRequest | None) -> _Pending | None:
        if pending_request is None or not pending_request.args:
            return None
        known = self._pending.get(pending_request.metadata.internal_request_id)
        if known is not None:  # a retry of the same request (its first choice was full)
            return known
        tokenizer = await asyncio.wrap_future(self._tokenizer_future)
        # Long prompts take milliseconds to render and tokenize: off the event loop.
        tokens = await asyncio.to_thread(tokenizer.tokens, pending_request.args[0])
        if not tokens:
            return None
        return _Pending(block_hashes(tokens, self._view.params.block_size), len(tokens))

    def _queued(self, replica: RunningReplica) -> int:
        queued = self._replica_queue_len_cache.get(replica.replica_id)
        return int(queued) if queued is not None else 0

    # -- replica set ----------------------------------------------------------------------

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        before = set(self._replica_id_set)
        super().update_replicas(replicas)
        gone = before - set(self._replica_id_set)
        if gone:
            self._view.forget(str(r.to_full_id_str()) for r in gone)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._view.forget([str(replica_id.to_full_id_str())])

    # -- shared state ---------------------------------------------------------------------

    def _ensure_sync_task(self) -> None:
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = self._event_loop.create_task(self._sync_forever())

    async def _sync_forever(self) -> None:
        # A router also lives in every driver that holds a handle to the engine deployment,
        # on Ray Serve's router thread, which outlives `ray.shutdown()`. Any Ray call after that
        # would start a fresh local cluster in the driver, so the loop ends with the connection.
        while True:
            await asyncio.sleep(self._sync_interval_s)
            if not ray.is_initialized():
                return
            await self.sync_once()

    async def sync_once(self) -> None:
        """Send this router's placements to the shared log and learn everyone else's."""
        outbox = self._view.take_outbox()
        try:
            if self._log is None:
                self._log = await asyncio.to_thread(self._log_actor)
            exchange: Exchange = await self._log.exchange.remote(self._source, self._seq, outbox)
        except Exception as err:  # the log actor died or is unreachable: retry next interval
            _logger.warning("prefix-aware routing: shared log unreachable (%s); routing on the local view", err)
            self._log = None
            self._view.return_outbox(outbox)
            return
        if exchange.lagged:
            _logger.info("prefix-aware routing: missed some placements of other routers (shared log rolled over)")
        self._seq = exchange.seq
        self._view.learn(exchange.placements)
        self._metrics.index_blocks.set(float(len(self._view.index)))

    def _log_actor(self) -> Any:
        """The deployment's shared log actor, created by the first router that asks.

        Not detached: it lives in the Serve namespace with the routers of this deployment
        and goes away with the application; a router that finds it gone makes a new one.
        """
        deployment = self._deployment_id
        name = f"llmdeploy-prefix-log:{deployment.app_name}:{deployment.name}"
        actor_cls = ray.remote(PrefixLogActor)
        return actor_cls.options(name=name, get_if_exists=True, num_cpus=0, max_concurrency=1).remote(
            self._log_capacity
        )
