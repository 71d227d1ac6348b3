"""`causalgr.serving.Ranker` for every formulation × backbone: its answers are the model's own
prediction at the appended position (docs/design.md §6), whatever else is ranked beside them, and
its per-user cache of the model's state answers like a ranker that recomputes the history."""

from __future__ import annotations

import itertools
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import torch

from causalgr import Batch
from causalgr.models import BACKBONES, FORMULATIONS, build_model
from causalgr.errors import CausalgrError
from causalgr.serving import InvalidInput, Ranker
from causalgr.serving.compiled import COMPILED_EVENTS
from model_helpers import NUM_ITEMS, NUM_VALUES, LargestTensor, make_model

CASES = list(itertools.product(FORMULATIONS, BACKBONES))
TASKS = 3
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def events(length: int, seed: int, start: int = 1_000) -> dict:
    """A random history: items, non-decreasing timestamps (with ties), labels and action values."""
    rng = np.random.default_rng(seed)
    return dict(
        items=rng.integers(1, NUM_ITEMS + 1, length).tolist(),
        timestamps=(start + np.cumsum(rng.integers(0, 5_000, length))).tolist(),
        labels=rng.integers(0, 2, (length, TASKS)).tolist(),
        action_values=rng.integers(0, NUM_VALUES, length).tolist(),
    )


def model_says(model, history: dict, candidate: int, timestamp: int) -> np.ndarray:
    """sigmoid(model(history + (candidate, timestamp)))[N] straight from the model, one row, with a
    placeholder action of all ones on the candidate (the ranker uses zeros; neither may matter)."""
    n = len(history["items"])
    batch = Batch(
        items=torch.tensor([history["items"] + [candidate]]),
        labels=torch.tensor([history["labels"] + [[1] * TASKS]], dtype=torch.float32).reshape(1, n + 1, TASKS),
        action_values=torch.tensor([history["action_values"] + [NUM_VALUES - 1]]),
        timestamps=torch.tensor([history["timestamps"] + [timestamp]]),
        lengths=torch.tensor([n + 1]),
    )
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.sigmoid(model(batch.to(device))[0, -1]).cpu().numpy()


def last_time(history: dict) -> int:
    return history["timestamps"][-1] if history["timestamps"] else 0


def joined(*histories: dict) -> dict:
    return {key: sum((h[key] for h in histories), []) for key in histories[0]}


@pytest.mark.parametrize("formulation,backbone", CASES)
def test_each_answer_is_the_model_at_the_appended_position(formulation, backbone):
    """The one pass (fast kernels, and the materialised reference engine) equals the model's forward."""
    model = make_model(formulation, backbone, TASKS)
    rankers = [Ranker(model), Ranker(make_model(formulation, backbone, TASKS, attention="reference"))]
    for length, seed in ((0, 1), (1, 2), (12, 3), (model.config.max_len - 1, 4)):
        history = events(length, seed)
        candidates = [5, 17, 5, NUM_ITEMS, 1]  # a repeat included
        timestamp = last_time(history) + 60
        for ranker in rankers:
            probs = ranker.rank(**history, candidates=candidates, timestamp=timestamp)
            assert probs.dtype == np.float32 and probs.shape == (len(candidates), TASKS)
            for k, c in enumerate(candidates):
                np.testing.assert_allclose(probs[k], model_says(model, history, c, timestamp), atol=ATOL, rtol=0)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("formulation,setting", [("mvp", {"mvp_pool_readout": False}), ("mvp", {"pool_heads": 2}),
                                                 ("lfa", {"pool_heads": 2})])
def test_the_one_pass_follows_the_open_settings(formulation, setting, backbone):
    """mvp without its pooling readout, and pooling with two heads, serve like the model too."""
    model = make_model(formulation, backbone, TASKS, **setting)
    history = events(12, 3)
    timestamp = last_time(history) + 5
    probs = Ranker(model).rank(**history, candidates=[2, 9], timestamp=timestamp)
    for k, c in enumerate([2, 9]):
        np.testing.assert_allclose(probs[k], model_says(model, history, c, timestamp), atol=ATOL, rtol=0)


@pytest.mark.parametrize("formulation,backbone", CASES)
def test_an_answer_does_not_depend_on_the_other_candidates(formulation, backbone):
    model = make_model(formulation, backbone, TASKS)
    history, timestamp = events(10, 4), 10**6
    candidates = list(range(1, 21))
    full = Ranker(model).rank(**history, candidates=candidates, timestamp=timestamp)
    small_passes = Ranker(model, candidates_per_pass=3).rank(**history, candidates=candidates, timestamp=timestamp)
    np.testing.assert_allclose(small_passes, full, atol=ATOL, rtol=0)
    order = np.random.default_rng(0).permutation(len(candidates))
    shuffled = Ranker(model).rank(**history, candidates=[candidates[i] for i in order], timestamp=timestamp)
    np.testing.assert_allclose(shuffled, full[order], atol=ATOL, rtol=0)
    few = Ranker(model).rank(**history, candidates=[7, 3], timestamp=timestamp)
    np.testing.assert_allclose(few, full[[6, 2]], atol=ATOL, rtol=0)


@pytest.mark.parametrize("formulation,backbone", CASES)
def test_a_long_history_is_cut_to_max_len_minus_one_events(formulation, backbone):
    model = make_model(formulation, backbone, TASKS)
    keep = model.config.max_len - 1
    history = events(model.config.max_len + 9, 5)
    cut = {k: v[-keep:] for k, v in history.items()}
    timestamp = last_time(history) + 1
    probs = Ranker(model).rank(**history, candidates=[3, 9], timestamp=timestamp)
    for k, c in enumerate([3, 9]):
        np.testing.assert_allclose(probs[k], model_says(model, cut, c, timestamp), atol=ATOL, rtol=0)


@pytest.mark.parametrize("formulation,backbone", CASES)
def test_observed_history_ranks_like_the_same_history_given(formulation, backbone):
    model = make_model(formulation, backbone, TASKS)
    history = events(model.config.max_len + 4, 6)  # longer than the model keeps
    ranker = Ranker(model)
    split, tail = 20, len(history["items"]) - 3
    ranker.observe("u1", **{k: v[:split] for k, v in history.items()})
    ranker.observe("u1", **{k: v[split:tail] for k, v in history.items()})
    timestamp = last_time(history) + 5
    expected = Ranker(model).rank(**history, candidates=[2, 8, 30], timestamp=timestamp)
    with_request_events = ranker.rank(**{k: v[tail:] for k, v in history.items()}, user="u1",
                                      candidates=[2, 8, 30], timestamp=timestamp)
    np.testing.assert_allclose(with_request_events, expected, atol=ATOL, rtol=0)
    ranker.observe("u1", **{k: v[tail:] for k, v in history.items()})
    np.testing.assert_allclose(ranker.rank(user="u1", candidates=[2, 8, 30], timestamp=timestamp), expected,
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("formulation,backbone", CASES)
def test_the_last_history_action_reaches_the_answer(formulation, backbone):
    """Given in the call or cached by `observe`, the last history action reaches every candidate."""
    model = make_model(formulation, backbone, TASKS)
    history = events(8, 7)
    flipped = {**history, "labels": history["labels"][:-1] + [[1 - a for a in history["labels"][-1]]]}
    ranker = Ranker(model)
    timestamp = last_time(history) + 1
    before = ranker.rank(**history, candidates=[4, 11], timestamp=timestamp)
    after = ranker.rank(**flipped, candidates=[4, 11], timestamp=timestamp)
    assert np.abs(after - before).min() > 1e-6
    ranker.observe("before", **history)
    ranker.observe("after", **flipped)
    cached = [ranker.rank(user=user, candidates=[4, 11], timestamp=timestamp) for user in ("before", "after")]
    assert np.abs(cached[1] - cached[0]).min() > 1e-6


@pytest.mark.parametrize("formulation,backbone", CASES)
def test_unknown_items_get_a_finite_answer_and_are_listed(formulation, backbone):
    model = make_model(formulation, backbone, TASKS)
    table = model.items.weight.detach().clone()
    ranker = Ranker(model)
    history = events(6, 8)
    history["items"][2] = 10_000
    result = ranker.rank_with_details(**history, candidates=[0, 3, NUM_ITEMS + 1, -2, "x", 0],
                                      timestamp=last_time(history))
    assert np.isfinite(result.probabilities).all()
    assert result.unknown_items == [10_000, 0, NUM_ITEMS + 1, -2, "x"]
    unknown_rows = result.probabilities[[0, 2, 3, 4, 5]]
    np.testing.assert_array_equal(unknown_rows, np.broadcast_to(unknown_rows[0], unknown_rows.shape))
    assert torch.equal(model.items.weight, table)  # the caller's model is left as it was


def bad_requests():
    ok = dict(items=[1, 2, 3], timestamps=[10, 20, 30], labels=[[0, 1, 0]] * 3, action_values=[1, 2, 3],
              candidates=[4], timestamp=40)
    return [
        ("timestamps", {**ok, "timestamps": [10, 20]}),
        ("labels", {**ok, "labels": [[0, 1]] * 3}),
        ("labels[1]", {**ok, "labels": [[0, 1, 0], [0, 2, 0], [1, 1, 1]]}),
        ("action_values", {**ok, "action_values": [1, 2]}),
        ("action_values[2]", {**ok, "action_values": [1, 2, NUM_VALUES]}),
        ("timestamps[2]", {**ok, "timestamps": [10, 30, 20]}),
        ("timestamps[1]", {**ok, "timestamps": [10.0, float("nan"), 30.0]}),
        ("timestamps[0]", {**ok, "timestamps": [-1, 20, 30]}),
        ("timestamps", {**ok, "timestamps": ["10", "20", "30"]}),
        ("timestamps", {**ok, "timestamps": None}),
        ("items", {**ok, "items": None}),
        ("timestamp", {**ok, "timestamp": 29}),
        ("timestamp", {**ok, "timestamp": float("nan")}),
        ("candidates", {**ok, "candidates": []}),
        ("candidates", {**ok, "candidates": "4"}),
        ("user", {**ok, "user": ""}),
    ]


@pytest.mark.parametrize("field,request_", bad_requests(), ids=lambda x: x if isinstance(x, str) else "")
def test_a_bad_request_is_a_value_error_naming_the_field(field, request_):
    ranker = Ranker(make_model("lfa", "hstu", TASKS))
    with pytest.raises(ValueError, match=f"^{re.escape(field)}: "):
        ranker.rank(**request_)
    with pytest.raises(InvalidInput) as refused:
        ranker.rank(**request_)
    assert refused.value.field == field.split("[")[0]


def test_a_refused_observe_caches_nothing():
    model = make_model("interleaved", "softmax", TASKS)
    ranker = Ranker(model)
    ranker.observe("u1", items=[1, 2], timestamps=[100, 200], labels=[[1, 0, 0], [0, 1, 0]])
    before = ranker.rank(user="u1", candidates=[5], timestamp=300)
    with pytest.raises(InvalidInput, match=r"^timestamps\[0\]: 150 is earlier than the last event"):
        ranker.observe("u1", items=[3], timestamps=[150], labels=[[0, 0, 1]])
    with pytest.raises(InvalidInput, match=r"^labels"):
        ranker.observe("u2", items=[3], timestamps=[150], labels=[[0, 0]])
    np.testing.assert_array_equal(ranker.rank(user="u1", candidates=[5], timestamp=300), before)
    assert len(ranker.cache) == 1 and ranker.cache.get("u2") is None


def test_the_history_cache_is_bounded_in_bytes_least_recently_used_first():
    model = make_model("lagged", "hstu", TASKS)
    # Ten events (item, timestamp, labels, action value) and the model's state of them: two layers'
    # keys and values (10 tokens × dim 16, float32), the tokens' times, and lagged's b(a_N).
    one_user = 10 * (8 + 8 + 4 * TASKS + 8) + 2 * 2 * 10 * 16 * 4 + 10 * 8 + 16 * 4
    ranker = Ranker(model, cache_bytes=3 * one_user)
    for user in ("a", "b", "c"):
        ranker.observe(user, **events(10, 9))
    ranker.rank(user="a", candidates=[1], timestamp=10**7)  # "a" is now the most recent
    ranker.observe("d", **events(10, 10))
    assert ranker.cache.nbytes <= 3 * one_user and len(ranker.cache) == 3
    assert ranker.cache.get("b") is None and ranker.cache.get("a") is not None


@pytest.mark.parametrize("formulation,backbone", CASES)
def test_two_thousand_candidates_go_through_one_history_pass_without_a_k_by_n_by_n_tensor(formulation, backbone):
    """K = 2,000 in one call: the history is encoded once, the candidates go in passes of at most
    `candidates_per_pass`, the model's K-row forward never runs, and no tensor reaches heads ×
    K × (history tokens + 1) elements — O(K·N); a K × N × N tensor would be 30 times more."""
    model = build_model(replace(make_model(formulation, backbone, TASKS).config, num_items=2_500, max_len=128)).eval()
    K, N = 2_000, model.config.max_len - 1
    tokens = 2 * N if formulation == "interleaved" else N
    ranker = Ranker(model, candidates_per_pass=K)
    calls, forwards = [], []  # (events, candidates) of each `serve` call
    served = ranker.model
    serve = served.serve
    served.serve = lambda state, events, candidates=None, timestamp=None: calls.append(
        (events.items.shape[1], None if candidates is None else len(candidates))) or serve(state, events, candidates, timestamp)
    served.register_forward_pre_hook(lambda module, args: forwards.append(args))
    history, candidates = events(N, 11), list(range(1, K + 1))
    with LargestTensor() as seen:
        probs = ranker.rank(**history, candidates=candidates, timestamp=last_time(history))
    assert probs.shape == (K, TASKS)
    assert calls == [(N, K)] and not forwards  # the history and the candidates, in one call
    assert seen.largest <= model.config.heads * K * (tokens + 1) < K * N * N / 30, seen.largest
    for k in (0, 1_234, 1_999):
        np.testing.assert_allclose(probs[k], model_says(model, history, candidates[k], last_time(history)), atol=ATOL, rtol=0)
    ranker.candidates_per_pass = 256
    calls.clear()
    in_passes = ranker.rank(**history, candidates=candidates, timestamp=last_time(history))
    assert calls == [(N, None)] + [(0, 256)] * 7 + [(0, 208)]  # the history once, then the passes
    np.testing.assert_allclose(in_passes, probs, atol=ATOL, rtol=0)


def test_concurrent_observes_and_ranks_equal_sequential_ones():
    model = make_model("mvp", "hstu", TASKS)
    ranker, reference = Ranker(model), Ranker(model)
    history = events(24, 12)
    pieces = [{k: v[i : i + 6] for k, v in history.items()} for i in range(0, 24, 6)]
    for piece in pieces:
        reference.observe("u", **piece)
    expected = reference.rank(user="u", candidates=[1, 2, 3], timestamp=last_time(history))

    def user(name: str) -> np.ndarray:
        for piece in pieces:
            ranker.observe(name, **piece)
            ranker.rank(user=name, candidates=[5], timestamp=last_time(history))
        return ranker.rank(user=name, candidates=[1, 2, 3], timestamp=last_time(history))

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(user, [f"u{i}" for i in range(8)]))
    for answer in answers:
        np.testing.assert_allclose(answer, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("formulation,backbone", CASES)
def test_the_cache_answers_like_a_ranker_without_one_through_appends_slides_and_evictions(formulation, backbone):
    """Random observes and ranks over four users with room for about three: after every
    step, a cached user answers like an uncached ranker given the user's events since they were
    last evicted (cut to max_len − 1), with or without extra events in the call."""
    model = make_model(formulation, backbone, TASKS)
    rng = np.random.default_rng(13)
    sizing = Ranker(model)
    sizing.observe("x", **events(20, 0))
    ranker, uncached = Ranker(model, cache_bytes=3 * sizing.cache.nbytes), Ranker(model)
    users = ["a", "b", "c", "d"]
    observed, clock, evictions, slides = {u: events(0, 0) for u in users}, dict.fromkeys(users, 1_000), 0, 0
    for step in range(60):
        user = users[rng.integers(len(users))]
        new = events(int(rng.integers(1, 14)), seed=100 + step, start=clock[user])
        clock[user] = last_time(new) or clock[user]
        if rng.random() < 0.5:
            ranker.observe(user, **new)
            observed[user] = joined(observed[user], new)
            slides += len(observed[user]["items"]) > model.config.max_len - 1
            for other in users:
                if other not in ranker.cache and observed[other]["items"]:
                    observed[other], evictions = events(0, 0), evictions + 1
            assert ranker.cache.nbytes <= ranker.cache.max_bytes or len(ranker.cache) == 1
        else:
            count = int(rng.integers(0, 3))
            extra = {k: v[:count] for k, v in new.items()}
            candidates = rng.integers(1, NUM_ITEMS + 1, 6).tolist()
            timestamp = clock[user] + 10
            got = ranker.rank(user=user, **(extra if extra["items"] else {}), candidates=candidates, timestamp=timestamp)
            expected = uncached.rank(**joined(observed[user], extra), candidates=candidates, timestamp=timestamp)
            np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0, err_msg=f"step {step}, user {user}")
    assert evictions > 0 and slides > 0


def test_concurrent_appends_to_one_user_leave_a_state_equal_to_its_events():
    """Threads appending to (and ranking for) one user: every call's events stay together, and the
    cached state answers like the events the cache ends up holding, given uncached."""
    model = make_model("interleaved", "hstu", TASKS)
    ranker = Ranker(model)
    keep = model.config.max_len - 1
    pieces = []
    for i in range(12):  # five events of item i + 1 each, all at one time, so any order is valid
        piece = events(5, seed=i)
        pieces.append({**piece, "items": [i + 1] * 5, "timestamps": [5_000] * 5})

    def append(piece: dict) -> None:
        ranker.observe("u", **piece)
        ranker.rank(user="u", candidates=[1, 2], timestamp=6_000)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(append, pieces))
    held = ranker.cache.get("u").events
    assert len(held) == keep
    runs = np.diff(np.flatnonzero(np.diff(held.items, prepend=-1, append=-1)))  # lengths of equal-item runs
    assert runs[0] <= 5 and (runs[1:] == 5).all(), held.items  # no call's events were split by another's
    given = dict(items=held.items.tolist(), timestamps=held.timestamps.tolist(), labels=held.labels.tolist(),
                 action_values=held.action_values.tolist())
    expected = Ranker(model).rank(**given, candidates=[1, 7, 30], timestamp=6_000)
    np.testing.assert_allclose(ranker.rank(user="u", candidates=[1, 7, 30], timestamp=6_000), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("formulation,backbone", CASES)
def test_ranking_never_changes_the_cached_history(formulation, backbone):
    """Candidates, the request time and events given in a call reach no cached tensor: the entry
    after many ranks is the one `observe` stored, bit for bit, and equals a fresh ranker's."""
    model = make_model(formulation, backbone, TASKS)
    history = events(10, 21)
    ranker, fresh = Ranker(model), Ranker(model)
    for target in (ranker, fresh):
        target.observe("u", **{k: v[:6] for k, v in history.items()})
        target.observe("u", **{k: v[6:] for k, v in history.items()})
    entry = ranker.cache.get("u")
    before = {name: t.clone() for name, t in entry.state.tensors().items()}
    later = events(3, 22, start=last_time(history))
    for candidates, timestamp in (([1], 10**7), (list(range(1, NUM_ITEMS + 1)), last_time(history)), ([3, 3, 9], 10**9)):
        ranker.rank(user="u", candidates=candidates, timestamp=timestamp)
        ranker.rank(user="u", **later, candidates=candidates, timestamp=max(timestamp, last_time(later)))
    assert ranker.cache.get("u") is entry
    after, rebuilt = entry.state.tensors(), fresh.cache.get("u").state.tensors()
    assert before.keys() == after.keys() == rebuilt.keys()
    for name in before:
        assert torch.equal(after[name], before[name]) and torch.equal(rebuilt[name], before[name]), name


def test_the_bias_sums_kept_between_calls_follow_the_weights():
    """HSTU keeps its position + time sums table and position windows between serving calls (`RelativeBias.serving`):
    weights changed in place afterwards must reach the next answers, cold and warm."""
    ranker = Ranker(make_model("lfa", "hstu", TASKS))
    history, later = events(12, 31), events(1, 32, start=10**6)
    timestamp = last_time(later) + 60
    ranker.rank(**history, candidates=[3, 9], timestamp=timestamp)  # the table is made here
    with torch.no_grad():
        ranker.model.encoder.bias.time.weight.add_(0.5)
        ranker.model.encoder.bias.position.weight.mul_(2.0)
    ranker.observe("u", **history)  # after the change: its state is the new weights'
    for probs in (ranker.rank(**joined(history, later), candidates=[3, 9], timestamp=timestamp),
                  ranker.rank(user="u", **later, candidates=[3, 9], timestamp=timestamp)):
        for k, c in enumerate([3, 9]):
            want = model_says(ranker.model, joined(history, later), c, timestamp)
            np.testing.assert_allclose(probs[k], want, atol=ATOL, rtol=0)


COMPILE_ALL = os.environ.get("CAUSALGR_TEST_COMPILE_ALL") == "1"


@pytest.mark.parametrize("formulation,backbone", [
    case if case == ("lfa", "hstu") or COMPILE_ALL else pytest.param(*case, marks=pytest.mark.skip(
        reason="compiles C++ for a minute or more: set CAUSALGR_TEST_COMPILE_ALL=1")) for case in CASES])
def test_compiled_warm_calls_answer_as_eager_ones(formulation, backbone):
    """`Ranker(model, compile=True)`: every warm call of a size it compiles for — a cached history
    of 2 or more tokens, 2 or more candidates, 0 to COMPILED_EVENTS events in the call —
    runs a compiled program (one program serves every history length, K and request time); the
    other calls (one cached token, one candidate, more events, a cold call) run eager. All answer
    as the eager ranker does."""
    model = make_model(formulation, backbone, TASKS)
    eager, ranker = Ranker(model), Ranker(model, compile=True)
    programs, compiled_calls = ranker._warm, []

    def recorded(state, events, candidates, timestamp):
        logits = programs(state, events, candidates, timestamp)
        if logits is not None:
            compiled_calls.append(len(candidates))
        return logits

    ranker._warm = recorded
    cases = [  # (cached events, candidates, events in the call, compiled?)
        (2, 2, 0, True), (12, 40, 1, True), (20, 3, COMPILED_EVENTS, True), (30, 7, 0, True), (9, 17, 2, True),
        (23, 6, 1, True), (model.config.max_len - 3, 9, 2, True),
        (1, 5, 1, formulation == "interleaved"),  # one cached event: two tokens in interleaved
        (7, 1, 1, False), (20, 3, COMPILED_EVENTS + 1, False),
    ]
    rng = np.random.default_rng(21)
    for n, (length, k, new, _) in enumerate(cases):
        history = events(length + new, seed=40 + n, start=1_000 + 10**5 * n)
        cached, extra = ({key: v[:length] for key, v in history.items()}, {key: v[length:] for key, v in history.items()})
        for r in (eager, ranker):
            r.observe(f"user{n}", **cached)
        candidates, timestamp = rng.choice(NUM_ITEMS, k, replace=False).tolist(), last_time(history) + 60 * n
        call = dict(user=f"user{n}", **(extra if new else {}), candidates=[c + 1 for c in candidates], timestamp=timestamp)
        np.testing.assert_allclose(ranker.rank(**call), eager.rank(**call), atol=ATOL, rtol=0, err_msg=f"case {n}")
    cold = dict(**events(10, seed=99), candidates=[3, 4, 5], timestamp=10**7)
    np.testing.assert_allclose(ranker.rank(**cold), eager.rank(**cold), atol=ATOL, rtol=0)
    assert compiled_calls == [k for _, k, _, compiled in cases if compiled]


def test_compile_refuses_a_window_too_short_for_a_warm_call():
    with pytest.raises(CausalgrError, match="max_len"):
        Ranker(make_model("lfa", "hstu", TASKS, max_len=6), compile=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("formulation,backbone", CASES)
def test_on_cuda_cold_and_warm_answers_are_the_model_at_the_appended_position(formulation, backbone):
    """On a GPU (the model's default engines there: Triton for HSTU's history, SDPA for softmax),
    a cold call and a warm one after observes and a slide past max_len equal the model's forward
    on the same device, and the CPU ranker's answer to float32 noise."""
    cpu_model = make_model(formulation, backbone, TASKS, max_len=200)  # several of Triton's 64-event blocks
    model = make_model(formulation, backbone, TASKS, max_len=200).cuda()
    ranker = Ranker(model)
    history = events(260, seed=5)  # past max_len: the cold call cuts it, the cache slides
    ranker.observe("user", **{key: values[:150] for key, values in history.items()})
    ranker.observe("user", **{key: values[150:] for key, values in history.items()})
    kept = {key: values[-(model.config.max_len - 1):] for key, values in history.items()}
    candidates, timestamp = [5, 17, NUM_ITEMS, 1], last_time(history) + 60
    cold = ranker.rank(**history, candidates=candidates, timestamp=timestamp)
    warm = ranker.rank(user="user", candidates=candidates, timestamp=timestamp)
    on_cpu = Ranker(cpu_model).rank(**history, candidates=candidates, timestamp=timestamp)
    for k, c in enumerate(candidates):
        expected = model_says(model, kept, c, timestamp)
        np.testing.assert_allclose(cold[k], expected, atol=ATOL, rtol=0)
        np.testing.assert_allclose(warm[k], expected, atol=ATOL, rtol=0)
    np.testing.assert_allclose(cold, on_cpu, atol=1e-4, rtol=0)
