"""Prefix-aware routing on simulated GPU replicas: ours vs round-robin, power-of-two and Ray's router.

A seeded, deterministic replay of five request traces (token ids, no tokenizer) against N
simulated vLLM replicas of a Llama-3-8B-shaped model on one H100 each. What is real:

- **Ours** is the code the Ray Serve router runs: `llmdeploy.serving.routing.index`
  (`block_hashes`, `PrefixIndex`) and `llmdeploy.serving.routing.policy` (`choose`,
  `PrefillBacklog`), called as `routing.view.RoutingView` calls them: match the prompt's
  blocks, choose with each replica's ongoing requests and prefill backlog, then insert the
  prompt's blocks for the replica it went to and add its uncached tokens to that replica's
  backlog. The index is filled to its limit (`--index-blocks`, 100k (block, replica) entries)
  before each trace, so every decision is timed against a full index; `match` + `choose` +
  `insert` (and the backlog) are timed with `time.perf_counter_ns`. If the chosen replica is
  full (`max_ongoing_requests`), the request goes to the least loaded one with room, as Ray
  does with the router's second rank. The index keeps every fourth 16-token block, as the
  router does (`RoutingView`: one entry per 64 prompt tokens); `ours-stride4` names that
  stride explicitly and `--index-stride 1` runs the exact index; `--policies
  ours-no-backlog` runs the ablation without the backlog term.
- **Ray's `PrefixCacheAffinityRouter`** is its logic with Ray's own `PrefixTree` (the class
  inside its tree actor, `ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree`),
  with the kwargs Ray Serve LLM uses when it is named without any (its `initialize_state`
  defaults: `imbalanced_threshold=inf`, `match_rate_threshold=0.1`, no eviction): a prompt is
  text, one character per token; if the longest match covers >= 10 % of it, the replicas
  owning the matched node form the only tier, else the replicas with the fewest characters in
  the tree; Ray then takes the one with the shortest queue that has room, and otherwise waits
  and asks again (it never falls back while the tier is full). After placement it inserts the
  prompt text. `ray-prefix-t20` is the same router with `imbalanced_threshold=20`, the value
  in Ray's documented example (`--ray-imbalanced-threshold` picks others).
- **Power of two** is Ray Serve's default router: the less loaded of two random replicas with
  room. **Round-robin** takes the next replica with room.
- **Ceiling**: one infinite cache that every request can hit (in arrival order): every
  reusable prefix token. Hit rates are also reported as a fraction of it.

Replicas (per replica, `--replicas` of them): vLLM's scheduler in miniature: FCFS waiting
queue, continuous batching of up to 128 sequences and 4,096 tokens per step with chunked
prefill (the `balanced` preset), `max_ongoing_requests` 256 (what `render` sets: 2 x
max_num_seqs). Each replica's prefix cache is an LRU of full 16-token blocks keyed by the
chained hashes of `block_hashes` (vLLM's structure: a block is reused only after the same
whole prefix), of `--cache-blocks` blocks (16,384 = 262k tokens: what an 80 GB H100 leaves for
reusable blocks of an 8B bf16 model once running sequences hold their own KV); a request's
prompt blocks are looked up and touched when it is admitted, and all its full blocks (prompt
and output) again when it finishes, the way vLLM returns a finished request's blocks to the
tail of its free queue. A hit never covers a prompt's last token (vLLM recomputes it).

Service times come from the H100 cost model measured for this project
(`benchmarks/h100.py`, Llama-3-8B-shaped bf16): prefill of
n tokens 20.2 ms (n <= 512) rising to 62.3 ms at 2,048 and 264 ms at 8,192 (linear between);
decode step 17.9 ms at batch 1, 18.6 at 8, 25.7 at 32, 40.5 at 64, extrapolated linearly
beyond (eager PyTorch: an upper bound for vLLM; used as measured). A step that mixes prefill
chunks and decodes takes max(decode step, prefill of its prefill tokens plus one per decode).

Traces (seeded; arrivals Poisson unless said):
- `shared-prompts`: 200 tenants with long system prompts (median 2k tokens), Zipf popularity,
  a unique user message (median 150) each.
- `multi-turn`: chats of 3-10 turns whose history grows (each turn's prompt is the whole
  conversation so far, the model's earlier answers included), 20-50 s between turns.
- `few-shot`: 12 tasks x 6 example sets (a 300-token task instruction, then ~2k tokens of
  examples), a short unique question each.
- `hot-prompt`: one 2,048-token system prompt in front of every request.
- `unique`: no reuse at all.

Reported per trace and policy: prefix-token hit rate (cached prompt tokens / prompt tokens, as
vLLM's `prefix_cache_hits / prefix_cache_queries`), as a fraction of the ceiling, max/mean
requests per replica (and max/mean engine-busy seconds), TTFT p50/p99 (arrival to the end of
the step that finishes its prefill, router queueing included), and ours' decision latency p50/p99.

    .venv/bin/python benchmarks/routing.py [--quick] [--seeds 11,12,13] [--traces hot-prompt,unique]

Writes benchmarks/results/routing.json and benchmarks/results/routing.png.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import heapq
import math
import random
import statistics
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import h100
from results import RESULTS, shown, table, write

from llmdeploy.serving.routing.index import PrefixIndex, block_hashes
from llmdeploy.serving.routing.policy import PrefillBacklog, ReplicaLoad, RoutingParams, choose
from llmdeploy.serving.routing.view import INDEX_GRANULARITY_TOKENS

REPO = Path(__file__).resolve().parents[1]

VOCAB = 128_000


@dataclass(frozen=True)
class Setup:
    replicas: int = 4
    block_size: int = 16
    cache_blocks: int = 16_384
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 4_096
    max_ongoing_requests: int = 256
    index_blocks: int = 100_000
    # The router's rule (`RoutingView`): one index entry per 64 prompt tokens, so every
    # fourth 16-token block.
    index_stride: int = max(1, INDEX_GRANULARITY_TOKENS // 16)
    max_load_ratio: float = 1.5


class CostModel:
    """Step times of one replica, linear between the measured points."""

    def __init__(self) -> None:
        self._px = [float(k) for k in sorted(h100.PREFILL_MS)]
        self._py = [h100.PREFILL_MS[k] / 1000 for k in sorted(h100.PREFILL_MS)]
        self._dx = [float(k) for k in sorted(h100.DECODE_STEP_MS)]
        self._dy = [h100.DECODE_STEP_MS[k] / 1000 for k in sorted(h100.DECODE_STEP_MS)]

    @staticmethod
    def _interp(x: float, xs: list[float], ys: list[float]) -> float:
        if x <= xs[0]:
            return ys[0]
        if x >= xs[-1]:
            return ys[-1] + (x - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        i = bisect.bisect_right(xs, x)
        return ys[i - 1] + (x - xs[i - 1]) * (ys[i] - ys[i - 1]) / (xs[i] - xs[i - 1])

    def step_s(self, prefill_tokens: int, decodes: int) -> float:
        decode = self._interp(decodes, self._dx, self._dy) if decodes else 0.0
        if not prefill_tokens:
            return decode
        # Prompts of 128-512 tokens take the same ~20 ms: the floor holds below 128 too.
        prefill = self._interp(max(prefill_tokens + decodes, 128), self._px, self._py)
        return max(decode, prefill)


# --- traces -----------------------------------------------------------------------------------


@dataclass
class Request:
    arrival_s: float
    prompt_len: int
    output_len: int
    # Chained block hashes of prompt + output (the prompt's blocks are the first `prompt_blocks`).
    seq_hashes: list[int]
    prompt_blocks: int
    # Blocks a cache can serve: never the block holding the prompt's last token.
    hit_cap: int
    prompt: tuple[int, ...]
    _text: str | None = None

    @property
    def text(self) -> str:
        """The prompt as Ray's router sees it: one character per token."""
        if self._text is None:
            self._text = "".join(map(chr, self.prompt))
        return self._text


@dataclass
class Trace:
    name: str
    description: str
    requests: list[Request]


def _lognormal(rng: np.random.Generator, median: float, sigma: float, lo: int, hi: int) -> int:
    return int(np.clip(round(rng.lognormal(math.log(median), sigma)), lo, hi))


def _tokens(rng: np.random.Generator, n: int) -> tuple[int, ...]:
    return tuple(int(t) for t in rng.integers(0, VOCAB, n))


def _request(arrival: float, prompt: tuple[int, ...], output: tuple[int, ...], block_size: int) -> Request:
    seq = prompt + output
    return Request(
        arrival_s=arrival,
        prompt_len=len(prompt),
        output_len=max(1, len(output)),
        seq_hashes=block_hashes(seq, block_size),
        prompt_blocks=len(prompt) // block_size,
        hit_cap=(len(prompt) - 1) // block_size,
        prompt=prompt,
    )


def _poisson(rng: np.random.Generator, rate: float, n: int) -> np.ndarray:
    return np.cumsum(rng.exponential(1 / rate, n))


def make_traces(seed: int, scale: float, block_size: int) -> list[Trace]:
    """The five traces; `scale` shrinks request counts and working sets together (--quick)."""
    traces = []

    rng = np.random.default_rng(seed)
    n_tenants = max(8, int(200 * scale))
    systems = [_tokens(rng, _lognormal(rng, 2000, 0.5, 600, 6000)) for _ in range(n_tenants)]
    weights = 1 / np.arange(1, n_tenants + 1) ** 1.0
    weights /= weights.sum()
    n = max(200, int(3000 * scale))
    arrivals = _poisson(rng, 10.0, n)
    reqs = []
    for t in arrivals:
        tenant = int(rng.choice(n_tenants, p=weights))
        user = _tokens(rng, _lognormal(rng, 150, 0.7, 10, 1000))
        reqs.append(
            _request(float(t), systems[tenant] + user, _tokens(rng, _lognormal(rng, 150, 0.6, 8, 600)), block_size)
        )
    traces.append(
        Trace(
            "shared-prompts",
            f"{n_tenants} tenants' system prompts (median 2k tokens), Zipf(1) popularity, unique user messages",
            reqs,
        )
    )

    rng = np.random.default_rng(seed + 1)
    apps = [_tokens(rng, 400) for _ in range(8)]
    n_chats = max(40, int(700 * scale))
    starts = _poisson(rng, 1.4, n_chats)
    reqs = []
    for start in starts:
        history = apps[int(rng.integers(0, len(apps)))]
        t = float(start)
        for _ in range(int(rng.integers(3, 11))):
            prompt = history + _tokens(rng, _lognormal(rng, 120, 0.7, 8, 800))
            answer = _tokens(rng, _lognormal(rng, 220, 0.6, 8, 800))
            reqs.append(_request(t, prompt, answer, block_size))
            history = prompt + answer
            t += float(rng.uniform(20.0, 50.0))
    reqs.sort(key=lambda r: r.arrival_s)
    traces.append(
        Trace(
            "multi-turn",
            f"{n_chats} chats of 3-10 turns, history (answers included) grows each turn, 20-50 s apart",
            reqs,
        )
    )

    rng = np.random.default_rng(seed + 2)
    tasks = [_tokens(rng, 300) for _ in range(12)]
    templates = [task + _tokens(rng, _lognormal(rng, 2000, 0.3, 800, 4000)) for task in tasks for _ in range(6)]
    weights = 1 / np.arange(1, len(templates) + 1) ** 0.6
    weights /= weights.sum()
    order = rng.permutation(len(templates))
    n = max(200, int(3000 * scale))
    reqs = []
    for t in _poisson(rng, 12.0, n):
        template = templates[int(order[int(rng.choice(len(templates), p=weights))])]
        question = _tokens(rng, _lognormal(rng, 80, 0.6, 8, 400))
        reqs.append(_request(float(t), template + question, _tokens(rng, _lognormal(rng, 60, 0.6, 4, 300)), block_size))
    traces.append(
        Trace(
            "few-shot",
            "12 tasks x 6 example sets (300-token instruction + ~2k tokens of examples), short questions",
            reqs,
        )
    )

    rng = np.random.default_rng(seed + 3)
    system = _tokens(rng, 2048)
    n = max(200, int(3000 * scale))
    reqs = []
    for t in _poisson(rng, 14.0, n):
        user = _tokens(rng, _lognormal(rng, 300, 0.7, 10, 2000))
        reqs.append(_request(float(t), system + user, _tokens(rng, _lognormal(rng, 150, 0.6, 8, 600)), block_size))
    traces.append(Trace("hot-prompt", "one 2,048-token system prompt before every request, unique user messages", reqs))

    rng = np.random.default_rng(seed + 4)
    n = max(200, int(2500 * scale))
    reqs = []
    for t in _poisson(rng, 7.0, n):
        prompt = _tokens(rng, _lognormal(rng, 1500, 0.6, 50, 6000))
        reqs.append(_request(float(t), prompt, _tokens(rng, _lognormal(rng, 150, 0.6, 8, 600)), block_size))
    traces.append(Trace("unique", "unique prompts (median 1.5k tokens), no reuse", reqs))
    return traces


def ceiling_hits(trace: Trace) -> list[int]:
    """Cached prompt tokens per request with one infinite cache, in arrival order."""
    seen: set[int] = set()
    hits = []
    for req in trace.requests:
        depth = 0
        for h in req.seq_hashes[: req.hit_cap]:
            if h not in seen:
                break
            depth += 1
        hits.append(depth)
        seen.update(req.seq_hashes)
    return hits


# --- replicas ---------------------------------------------------------------------------------


class Replica:
    """One vLLM engine: FCFS admission, chunked prefill, continuous batching, LRU prefix cache."""

    def __init__(self, rid: int, setup: Setup, cost: CostModel) -> None:
        self.rid = rid
        self.name = f"replica-{rid}"
        self.setup = setup
        self.cost = cost
        self.cache: OrderedDict[int, None] = OrderedDict()
        self.waiting: deque[int] = deque()
        self.prefilling: list[list[int]] = []  # [request, tokens left]
        self.finishing: list[tuple[int, int]] = []  # heap of (finish step, request)
        self.decoding = 0
        self.steps = 0
        self.busy = False
        self.routed = 0
        self.busy_s = 0.0
        self._step_prefills: list[int] = []

    @property
    def ongoing(self) -> int:
        return len(self.waiting) + len(self.prefilling) + self.decoding

    def _touch(self, hashes: Sequence[int]) -> None:
        cache = self.cache
        touch = cache.move_to_end
        for h in reversed(hashes):
            try:
                touch(h)
            except KeyError:
                cache[h] = None
        while len(cache) > self.setup.cache_blocks:
            cache.popitem(last=False)

    def _admit(self, req: Request) -> int:
        """Prefix-cache lookup at admission; returns the cached prompt tokens."""
        depth = 0
        cache = self.cache
        for h in req.seq_hashes[: req.hit_cap]:
            if h not in cache:
                break
            depth += 1
        self._touch(req.seq_hashes[: req.prompt_blocks])
        return depth * self.setup.block_size

    def start_step(self, reqs: list[Request], hit_tokens: np.ndarray) -> float:
        """Schedule one step; returns its duration."""
        setup = self.setup
        budget = setup.max_num_batched_tokens - self.decoding
        prefill = 0
        done: list[int] = []
        for entry in self.prefilling:
            if budget <= 0:
                break
            chunk = min(entry[1], budget)
            entry[1] -= chunk
            budget -= chunk
            prefill += chunk
            if entry[1] == 0:
                done.append(entry[0])
        while self.waiting and budget > 0 and len(self.prefilling) + self.decoding < setup.max_num_seqs:
            i = self.waiting.popleft()
            cached = self._admit(reqs[i])
            hit_tokens[i] = cached
            left = reqs[i].prompt_len - cached
            chunk = min(left, budget)
            budget -= chunk
            prefill += chunk
            self.prefilling.append([i, left - chunk])
            if left == chunk:
                done.append(i)
        self._step_prefills = done
        if done:
            finished = set(done)
            self.prefilling = [e for e in self.prefilling if e[0] not in finished]
        dt = self.cost.step_s(prefill, self.decoding)
        self.busy_s += dt
        return dt

    def end_step(self, t: float, reqs: list[Request], ttft: np.ndarray) -> list[int]:
        """Finish the step at time t; returns the requests that completed."""
        self.steps += 1
        completed = []
        while self.finishing and self.finishing[0][0] <= self.steps:
            _, i = heapq.heappop(self.finishing)
            self.decoding -= 1
            completed.append(i)
        for i in self._step_prefills:
            ttft[i] = t - reqs[i].arrival_s
            if reqs[i].output_len <= 1:
                completed.append(i)
            else:
                heapq.heappush(self.finishing, (self.steps + reqs[i].output_len - 1, i))
                self.decoding += 1
        self._step_prefills = []
        for i in completed:
            req = reqs[i]
            self._touch(req.seq_hashes)
        return completed

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.decoding)


# --- policies ---------------------------------------------------------------------------------


class Policy(Protocol):
    name: str

    def route(self, i: int, req: Request, t: float, replicas: list[Replica]) -> Replica | None: ...


def _room(replica: Replica) -> bool:
    return replica.ongoing < replica.setup.max_ongoing_requests


class RoundRobin:
    name = "round-robin"

    def __init__(self, seed: int) -> None:
        self._next = 0

    def route(self, i: int, req: Request, t: float, replicas: list[Replica]) -> Replica | None:
        for k in range(len(replicas)):
            r = replicas[(self._next + k) % len(replicas)]
            if _room(r):
                self._next = (self._next + k + 1) % len(replicas)
                return r
        return None


def _shortest(candidates: Sequence[Replica]) -> Replica | None:
    """Ray's `_select_from_candidate_replicas`: the shortest queue with room."""
    best = None
    for r in candidates:
        if _room(r) and (best is None or r.ongoing < best.ongoing):
            best = r
    return best


class PowerOfTwo:
    """Ray Serve's default router."""

    name = "power-of-two"

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def route(self, i: int, req: Request, t: float, replicas: list[Replica]) -> Replica | None:
        pair = self._rng.sample(replicas, 2) if len(replicas) > 1 else replicas
        return _shortest(pair)


class RayPrefix:
    """Ray's PrefixCacheAffinityRouter logic around Ray's own PrefixTree."""

    def __init__(self, seed: int, imbalanced_threshold: float = math.inf, match_rate_threshold: float = 0.1) -> None:
        from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import PrefixTree

        self.name = "ray-prefix" if math.isinf(imbalanced_threshold) else f"ray-prefix-t{imbalanced_threshold:g}"
        self._tree = PrefixTree()
        self._rng = random.Random(seed)
        self._imbalanced = imbalanced_threshold
        self._match_rate = match_rate_threshold
        self._started = False

    def route(self, i: int, req: Request, t: float, replicas: list[Replica]) -> Replica | None:
        if not self._started:
            self._tree.add_tenants([r.name for r in replicas], t)
            self._started = True
        by_name = {r.name: r for r in replicas}
        queues = [r.ongoing for r in replicas]
        tier: list[str] = []
        if max(queues) - min(queues) <= self._imbalanced:
            text = req.text
            matched, tenants = self._tree.prefix_match(text, list(by_name))
            if len(matched) / len(text) < self._match_rate:
                tier = self._tree.get_smallest_tenants() or []
            else:
                tier = tenants or []
        if tier:
            chosen = _shortest([by_name[name] for name in tier])
        else:
            pair = self._rng.sample(replicas, 2) if len(replicas) > 1 else replicas
            chosen = _shortest(pair)
        if chosen is not None:
            self._tree.insert(req.text, chosen.name, t)
        return chosen


class Ours:
    """The project's router: PrefixIndex + choose, as RoutingView calls them."""

    def __init__(
        self, name: str, seed: int, setup: Setup, replicas: list[Replica], *, backlog: bool = True, stride: int = 0
    ) -> None:
        self.name = name
        stride = stride or setup.index_stride
        self._rng = random.Random(seed)
        self._params = RoutingParams(block_size=setup.block_size, max_load_ratio=setup.max_load_ratio)
        self.index = PrefixIndex(setup.index_blocks, stride=stride)
        self.backlog = PrefillBacklog(self._params) if backlog else None
        self.latency_ns: list[int] = []
        self.affinity = 0
        # Fill the index to its limit with other prompts' blocks, spread over the replicas.
        fill = random.Random(seed + 1)
        names = [r.name for r in replicas]
        k = 0
        while len(self.index) < setup.index_blocks:
            self.index.insert(names[k % len(names)], [fill.getrandbits(63) for _ in range(256 * stride)])
            k += 1

    def route(self, i: int, req: Request, t: float, replicas: list[Replica]) -> Replica | None:
        hashes = req.seq_hashes[: req.prompt_blocks]
        started = time.perf_counter_ns()
        matches = self.index.match(hashes, [r.name for r in replicas])
        backlog = self.backlog
        ongoing = {r.name: r.ongoing for r in replicas}
        loads = backlog.loads(ongoing, t) if backlog else [ReplicaLoad(name, n) for name, n in ongoing.items()]
        decision = choose(len(hashes), matches, loads, self._params, self._rng)
        chosen = next(r for r in replicas if r.name == decision.replica)
        if not _room(chosen):
            chosen = _shortest(sorted(replicas, key=lambda r: r.ongoing))
        if chosen is not None:
            self.index.insert(chosen.name, hashes)
            if backlog is not None:
                backlog.add(chosen.name, req.prompt_len - matches.get(chosen.name, 0) * self._params.block_size, t)
        self.latency_ns.append(time.perf_counter_ns() - started)
        if chosen is not None and decision.affinity and chosen.name == decision.replica:
            self.affinity += 1
        return chosen


# --- simulation -------------------------------------------------------------------------------


@dataclass
class RunResult:
    trace: str
    policy: str
    hit_rate: float
    hit_of_ceiling: float | None
    load_max_mean: float
    busy_max_mean: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    requests: int
    decision_p50_us: float | None = None
    decision_p99_us: float | None = None
    affinity_share: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "extra"}
        return {k: ("-" if v is None else v) for k, v in out.items()}


def simulate(trace: Trace, policy: Policy, replicas: list[Replica]) -> tuple[np.ndarray, np.ndarray]:
    """Event loop: arrivals and engine steps in time order. Returns (hit tokens, TTFT) per request."""
    reqs = trace.requests
    n = len(reqs)
    hit_tokens = np.zeros(n, dtype=np.int64)
    ttft = np.full(n, np.nan)
    events: list[tuple[float, int, int, int]] = []  # (time, order, kind, payload)
    seq = 0
    for i, req in enumerate(reqs):
        events.append((req.arrival_s, seq, 0, i))
        seq += 1
    heapq.heapify(events)
    pending: deque[int] = deque()  # waiting at the router (every candidate full)

    def start(replica: Replica, t: float) -> None:
        nonlocal seq
        if not replica.busy and replica.has_work:
            replica.busy = True
            dt = replica.start_step(reqs, hit_tokens)
            seq += 1
            heapq.heappush(events, (t + dt, seq, 1, replica.rid))

    def place(i: int, t: float) -> bool:
        chosen = policy.route(i, reqs[i], t, replicas)
        if chosen is None:
            return False
        chosen.waiting.append(i)
        chosen.routed += 1
        start(chosen, t)
        return True

    while events:
        t, _, kind, payload = heapq.heappop(events)
        if kind == 0:
            if pending or not place(payload, t):
                pending.append(payload)
            continue
        replica = replicas[payload]
        replica.busy = False
        completed = replica.end_step(t, reqs, ttft)
        start(replica, t)
        if completed:
            while pending and place(pending[0], t):
                pending.popleft()
    return hit_tokens, ttft


def run(trace: Trace, make: Callable[[list[Replica]], Policy], setup: Setup, ceiling: int) -> RunResult:
    cost = CostModel()
    replicas = [Replica(k, setup, cost) for k in range(setup.replicas)]
    policy = make(replicas)
    gc.collect()
    hit_tokens, ttft = simulate(trace, policy, replicas)
    prompt_tokens = sum(r.prompt_len for r in trace.requests)
    hits = int(hit_tokens.sum())
    routed = np.array([r.routed for r in replicas], dtype=float)
    busy = np.array([r.busy_s for r in replicas])
    result = RunResult(
        trace=trace.name,
        policy=policy.name,
        hit_rate=round(hits / prompt_tokens, 4),
        hit_of_ceiling=round(hits / ceiling, 4) if ceiling else None,
        load_max_mean=round(float(routed.max() / routed.mean()), 3),
        busy_max_mean=round(float(busy.max() / busy.mean()), 3),
        ttft_p50_ms=round(float(np.nanpercentile(ttft, 50)) * 1000, 1),
        ttft_p99_ms=round(float(np.nanpercentile(ttft, 99)) * 1000, 1),
        requests=len(trace.requests),
        extra={"routed": [r.routed for r in replicas], "busy_s": [round(float(b), 1) for b in busy]},
    )
    if isinstance(policy, Ours):
        lat = np.array(policy.latency_ns) / 1000
        result.decision_p50_us = round(float(np.percentile(lat, 50)), 1)
        result.decision_p99_us = round(float(np.percentile(lat, 99)), 1)
        result.affinity_share = round(policy.affinity / len(trace.requests), 3)
        result.extra["index_entries"] = len(policy.index)
    return result


# "ours-no-backlog" (ours without `PrefillBacklog`, queue counts only) is an ablation: --policies.
EXTRA_POLICIES = ("ours-no-backlog",)


def median_result(runs: list[RunResult], seeds: Sequence[int]) -> RunResult:
    """Each figure's median over seeds; per-seed details stay in `extra`."""

    def med(values: list[Any]) -> Any:
        present = [v for v in values if v is not None]
        return round(float(statistics.median(present)), 4) if present else None

    first = runs[0]
    numeric = {
        k: med([getattr(r, k) for r in runs])
        for k in asdict(first)
        if k not in ("trace", "policy", "extra", "requests")
    }
    return RunResult(
        trace=first.trace,
        policy=first.policy,
        requests=int(statistics.median(r.requests for r in runs)),
        extra={"seeds": {str(s): r.extra for s, r in zip(seeds, runs, strict=True)}},
        **numeric,
    )


def policies(setup: Setup, seed: int, ray_thresholds: Sequence[float]) -> dict[str, Callable[[list[Replica]], Policy]]:
    out: dict[str, Callable[[list[Replica]], Policy]] = {
        "round-robin": lambda _: RoundRobin(seed),
        "power-of-two": lambda _: PowerOfTwo(seed),
    }
    for threshold in ray_thresholds:
        name = "ray-prefix" if math.isinf(threshold) else f"ray-prefix-t{threshold:g}"
        out[name] = lambda _, th=threshold: RayPrefix(seed, imbalanced_threshold=th)
    out["ours"] = lambda replicas: Ours("ours", seed, setup, replicas)
    out["ours-stride4"] = lambda replicas: Ours("ours-stride4", seed, setup, replicas, stride=4)
    out["ours-no-backlog"] = lambda replicas: Ours("ours-no-backlog", seed, setup, replicas, backlog=False)
    return out


# --- goals, chart, main -----------------------------------------------------------------------


def check_goals(results: dict[str, dict[str, RunResult]]) -> list[tuple[str, bool, str]]:
    goals: list[tuple[str, bool, str]] = []

    def get(trace: str, policy: str) -> RunResult | None:
        return results.get(trace, {}).get(policy)

    for trace in ("shared-prompts", "multi-turn"):
        ours, p2 = get(trace, "ours"), get(trace, "power-of-two")
        if ours is None or p2 is None or ours.hit_of_ceiling is None:
            continue
        goals.append(
            (
                f"{trace}: hit rate >= 90 % of the ceiling",
                ours.hit_of_ceiling >= 0.9,
                f"{100 * ours.hit_of_ceiling:.1f} %",
            )
        )
        ratio = ours.hit_rate / p2.hit_rate if p2.hit_rate else math.inf
        goals.append((f"{trace}: hit rate >= 1.3x power-of-two", ratio >= 1.3, f"{ratio:.2f}x"))
    ours, ray = get("hot-prompt", "ours"), get("hot-prompt", "ray-prefix")
    if ours is not None and ray is not None:
        # Spreading the prompt costs one first prefill of it per extra replica: within 0.5 pt.
        ok = ours.hit_rate >= ray.hit_rate - 0.005 and ours.ttft_p99_ms < ray.ttft_p99_ms
        goals.append(
            (
                "hot-prompt: hit rate >= ray-prefix (within 0.5 pt) with lower TTFT p99",
                ok,
                f"hit {ours.hit_rate:.3f} vs {ray.hit_rate:.3f}, "
                f"p99 {ours.ttft_p99_ms:.0f} vs {ray.ttft_p99_ms:.0f} ms",
            )
        )
    worst = max((r["ours"].load_max_mean for r in results.values() if "ours" in r), default=None)
    if worst is not None:
        goals.append(("every trace: max/mean requests per replica <= 1.25", worst <= 1.25, f"worst {worst:.2f}"))
    for name, label in (("ours", ""), ("ours-stride4", " (index stride 4)")):
        p99s = [r[name].decision_p99_us for r in results.values() if name in r and r[name].decision_p99_us is not None]
        if p99s:
            goals.append(
                (f"decision p99 <= 200 us with a full 100k index{label}", max(p99s) <= 200, f"worst {max(p99s):.0f} us")
            )
    ours, p2 = get("unique", "ours"), get("unique", "power-of-two")
    if ours is not None and p2 is not None:
        ok = ours.ttft_p99_ms <= 1.05 * p2.ttft_p99_ms and ours.ttft_p50_ms <= 1.05 * p2.ttft_p50_ms
        goals.append(
            (
                "unique: no loss vs power-of-two (TTFT p50 and p99 within 5 %)",
                ok,
                f"p50 {ours.ttft_p50_ms:.0f} vs {p2.ttft_p50_ms:.0f} ms, "
                f"p99 {ours.ttft_p99_ms:.0f} vs {p2.ttft_p99_ms:.0f} ms",
            )
        )
    return goals


def plot(results: dict[str, dict[str, RunResult]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(results)
    names = list(next(iter(results.values())))
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        values = [results[t][name].hit_of_ceiling or 0.0 for t in traces]
        bars = ax.bar([x + k * width for x in range(len(traces))], values, width, label=name)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=6, padding=1)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(traces))], traces)
    ax.set_ylabel("prefix-token hit rate / ceiling")
    ax.set_ylim(0, 1.1)
    ax.axhline(0.9, color="grey", linewidth=0.6, linestyle="--")
    ax.set_title("Prefix-cache hits as a fraction of the reuse ceiling (unique: no reuse, ceiling 0)")
    ax.legend(fontsize=8, ncol=len(names), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small traces (a few seconds; for tests)")
    parser.add_argument("--seeds", default="11", help="comma-separated seeds; figures are medians over them")
    parser.add_argument("--traces", default="", help="comma-separated trace names (default: all)")
    parser.add_argument("--replicas", type=int, default=Setup.replicas)
    parser.add_argument("--cache-blocks", type=int, default=Setup.cache_blocks, help="prefix-cache blocks per replica")
    parser.add_argument("--index-blocks", type=int, default=Setup.index_blocks, help="our router's index limit")
    parser.add_argument("--index-stride", type=int, default=Setup.index_stride, help="index every k-th block")
    parser.add_argument("--max-load-ratio", type=float, default=Setup.max_load_ratio)
    parser.add_argument(
        "--ray-imbalanced-threshold",
        type=float,
        action="append",
        default=None,
        help="Ray router variants besides Ray LLM's default (inf); default: 20, the value of Ray's documented example",
    )
    parser.add_argument("--policies", default="", help="comma-separated policies (default: all)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    parser.add_argument("--out", default="routing", help="result name under benchmarks/results/")
    opts = parser.parse_args(argv)
    started = time.monotonic()
    scale = 0.12 if opts.quick else 1.0
    setup = Setup(
        replicas=opts.replicas,
        cache_blocks=int(opts.cache_blocks * (scale if opts.quick else 1)),
        index_blocks=opts.index_blocks,
        index_stride=opts.index_stride,
        max_load_ratio=opts.max_load_ratio,
    )
    thresholds = [math.inf, *(opts.ray_imbalanced_threshold if opts.ray_imbalanced_threshold is not None else [20.0])]
    seeds = [int(s) for s in opts.seeds.split(",")]
    default_policies = [p for p in policies(setup, seeds[0], thresholds) if p not in EXTRA_POLICIES]
    wanted = opts.policies.split(",") if opts.policies else default_policies
    per_seed: dict[int, dict[str, dict[str, RunResult]]] = {}
    ceiling_rates: dict[str, list[float]] = {}
    descriptions: dict[str, str] = {}
    for seed in seeds:
        traces = make_traces(seed, scale, setup.block_size)
        if opts.traces:
            traces = [t for t in traces if t.name in set(opts.traces.split(","))]
        per_seed[seed] = {}
        for trace in traces:
            descriptions[trace.name] = trace.description
            ceiling_tokens = sum(ceiling_hits(trace)) * setup.block_size
            prompt_tokens = sum(r.prompt_len for r in trace.requests)
            ceiling_rates.setdefault(trace.name, []).append(ceiling_tokens / prompt_tokens)
            per_seed[seed][trace.name] = {}
            for name, make in policies(setup, seed, thresholds).items():
                if name not in wanted:
                    continue
                t0 = time.monotonic()
                per_seed[seed][trace.name][name] = run(trace, make, setup, ceiling_tokens)
                print(f"  seed {seed} {trace.name:15s} {name:18s} {time.monotonic() - t0:5.1f} s", file=sys.stderr)
    results = {
        trace: {name: median_result([per_seed[s][trace][name] for s in seeds], seeds) for name in by_policy}
        for trace, by_policy in per_seed[seeds[0]].items()
    }
    ceilings = {trace: {"hit_rate": round(statistics.median(v), 4)} for trace, v in ceiling_rates.items()}
    rows = []
    for trace, by_policy in results.items():
        rows += [res.row() for res in by_policy.values()]
        rate = ceilings[trace]["hit_rate"]
        rows.append({"trace": trace, "policy": "ceiling", "hit_rate": rate, "hit_of_ceiling": 1.0 if rate else "-"})
    columns = [
        "trace",
        "policy",
        "hit_rate",
        "hit_of_ceiling",
        "load_max_mean",
        "busy_max_mean",
        "ttft_p50_ms",
        "ttft_p99_ms",
        "decision_p50_us",
        "decision_p99_us",
        "affinity_share",
    ]
    print(table(rows, columns))
    goals = check_goals(results)
    if goals:
        print()
        for text, ok, detail in goals:
            print(f"{'PASS' if ok else 'FAIL'}  {text}: {detail}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = None if opts.no_plot else plot(results, RESULTS / f"{opts.out}.png")
    payload = {
        "benchmark": "routing",
        "seeds": seeds,
        "statistic": "median over seeds" if len(seeds) > 1 else "one seed",
        "quick": opts.quick,
        "wall_s": round(time.monotonic() - started, 1),
        "model": h100.SOURCE,
        "gpu": "simulated nvidia-h100-80gb",
        "setup": asdict(setup),
        "cost_model": {"prefill_ms": h100.PREFILL_MS, "decode_step_ms": h100.DECODE_STEP_MS},
        "ours_params": asdict(RoutingParams(block_size=setup.block_size, max_load_ratio=setup.max_load_ratio)),
        "ray_prefix_kwargs": {
            "imbalanced_threshold": [str(t) for t in thresholds],
            "match_rate_threshold": 0.1,
            "do_eviction": False,
        },
        "traces": {
            name: {
                "description": descriptions[name],
                "requests": next(iter(results[name].values())).requests if results[name] else None,
                "ceiling": ceilings[name],
            }
            for name in results
        },
        "rows": rows,
        "results": {trace: {p: asdict(r) for p, r in by.items()} for trace, by in results.items()},
        "per_seed": {
            str(seed): {trace: {p: r.row() for p, r in by.items()} for trace, by in by_trace.items()}
            for seed, by_trace in per_seed.items()
        },
        "goals": [{"goal": text, "met": ok, "detail": detail} for text, ok, detail in goals],
        "plot": None if png is None else shown(png),
    }
    path = write(opts.out, payload)
    wrote = shown(path) if png is None else f"{shown(path)} and {shown(png)}"
    print(f"\nwrote {wrote} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
