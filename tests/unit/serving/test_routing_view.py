"""One router's view: decisions from the index and loads, placements shared, gone replicas forgotten."""

from __future__ import annotations

from llmdeploy.serving.routing.index import block_hashes
from llmdeploy.serving.routing.policy import RoutingParams
from llmdeploy.serving.routing.view import MAX_OUTBOX, RoutingView

BLOCK = 16
PROMPT = list(range(10 * BLOCK))
HASHES = block_hashes(PROMPT, BLOCK)


def view(seed: int = 0) -> RoutingView:
    return RoutingView(RoutingParams(block_size=BLOCK, max_load_ratio=1.5), max_blocks=10_000, seed=seed)


def place(v: RoutingView, replica: str, now: float = 0.0) -> None:
    v.placed(replica, HASHES, matched_blocks=0, prompt_tokens=len(PROMPT), now=now)


def test_a_repeat_goes_where_its_prefix_was_placed() -> None:
    v = view()
    place(v, "b")

    decision = v.decide(HASHES, {"a": 0, "b": 0, "c": 0}, now=100.0)

    # The index keeps every fourth 16-token block: matches are known to within 64 tokens.
    assert v.index.stride == 4
    assert (decision.replica, decision.affinity, decision.matched_blocks) == ("b", True, 8)


def test_an_overloaded_holder_loses_the_request_to_an_idle_replica() -> None:
    v = view()
    place(v, "b")

    decision = v.decide(HASHES, {"a": 0, "b": 50}, now=100.0)

    assert (decision.replica, decision.affinity) == ("a", False)


def test_fresh_prefill_work_counts_as_load_until_it_drains() -> None:
    v = view()
    long_prompt = list(range(100_000, 100_000 + 4096 * 4))
    v.placed("a", block_hashes(long_prompt, BLOCK), matched_blocks=0, prompt_tokens=len(long_prompt), now=0.0)
    unrelated = block_hashes(list(range(50 * BLOCK)), BLOCK)

    assert v.decide(unrelated, {"a": 1, "b": 1}, now=0.0).replica == "b"
    assert v.backlog.backlog_s("a", now=60.0) == 0.0


def test_with_nothing_in_flight_a_holder_keeps_its_repeats_however_much_prefill_was_estimated() -> None:
    """The prefill estimate is one figure per accelerator; a replica faster than it finishes early.

    Sequential requests on a fast replica: every earlier request is done (nothing ongoing
    anywhere), but the estimated backlog of the long prompts it was sent has not drained yet.
    """
    v = view()
    for seed in range(20):
        prompt = list(range(seed * 100_000, seed * 100_000 + 4096))
        v.placed("b", block_hashes(prompt, BLOCK), matched_blocks=0, prompt_tokens=len(prompt), now=0.0)
    place(v, "b")
    assert v.backlog.backlog_s("b", now=0.1) > 1.0

    assert v.decide(HASHES, {"a": 1, "b": 1}, now=0.1).affinity is False, "while busy, the estimate counts"
    assert v.decide(HASHES, {"a": 1, "b": 0}, now=0.1).affinity is False, "and while anything is in flight"
    decision = v.decide(HASHES, {"a": 0, "b": 0}, now=0.1)

    assert (decision.replica, decision.affinity) == ("b", True)
    assert v.backlog.backlog_s("b", now=0.1) == 0.0, "dropped, not carried into the next placement"


def test_placements_go_to_the_outbox_and_back_after_a_failed_exchange() -> None:
    v = view()
    place(v, "a")
    sent = v.take_outbox()
    place(v, "b")

    v.return_outbox(sent)

    assert [replica for replica, _ in v.take_outbox()] == ["a", "b"]
    assert v.take_outbox() == []


def test_cpu_sized_blocks_are_all_indexed() -> None:
    assert RoutingView(RoutingParams(block_size=128), max_blocks=1024).index.stride == 1


def test_the_outbox_is_bounded() -> None:
    v = view()
    for i in range(MAX_OUTBOX + 10):
        v.placed("a", [i], matched_blocks=0, prompt_tokens=BLOCK, now=0.0)

    assert len(v.take_outbox()) == MAX_OUTBOX


def test_other_routers_placements_steer_decisions() -> None:
    v = view()
    v.learn([("c", tuple(HASHES))])

    assert v.decide(HASHES, {"a": 0, "c": 0}, now=0.0).replica == "c"
    assert v.take_outbox() == [], "learned placements are not sent back"


def test_a_forgotten_replica_is_not_revived_by_a_late_placement() -> None:
    v = view()
    place(v, "a")

    v.forget(["a"])
    v.learn([("a", tuple(HASHES))])

    assert "a" not in v.index.replicas()
    assert len(v.index) == 0
