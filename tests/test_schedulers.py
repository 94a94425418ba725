"""Policies on their own: the order they admit in and the counters they keep."""

import random

import pytest

from engine.feedback import Tokens
from schedulers import make_policy, run_name
from traces.errors import InputError
from traces.request import Request


def req(i, client, prompt=10, output=10, weight=1.0, t=0.0):
    return Request(i, client, t, prompt, output, weight)


def admit_all(policy, now=0.0):
    order = []
    while (r := policy.select(lambda _: True)) is not None:
        policy.admit(r, now, resumed=False)
        order.append(r.request_id)
    return order


@pytest.mark.parametrize("clients", [200, 700])
def test_client_counters_match_a_brute_force_minimum(clients):
    """Random changes over one block of clients or three: the smallest score over the backlogged
    clients, the clients within a bound, the minima and the sums always equal a full scan."""
    import numpy as np

    from schedulers.counters import ClientCounters

    rnd = random.Random(7)
    counters = ClientCounters(rows=2)
    values: list[list[float]] = []  # the brute force: client -> [row0, row1]
    backlogged: set[int] = set()
    sizes: list[int] = []  # per client, a size for smallest_where

    def check():
        assert len(counters) == len(backlogged)
        for coef in ((1.0, 0.0), (0.0, 2.0), (0.7, 0.3), (1e-3, 5.0)):
            score = {i: sum(c * v for c, v in zip(coef, values[i]) if c) for i in backlogged}
            ranked = sorted(score, key=lambda i: (score[i], i))
            found = counters.smallest(coef)
            assert found == ((ranked[0], score[ranked[0]]) if ranked else None)
            if ranked:
                upto = score[ranked[min(5, len(ranked) - 1)]]
                assert counters.within(coef, upto) == [(i, score[i]) for i in ranked if score[i] <= upto]
            sizes_array = np.array(sizes + [0] * (counters.values.shape[1] - len(sizes)))
            for bound in (upto if ranked else 1.0, float("inf")):
                for limit in (3, 10, float("inf")):
                    fitting = [(i, score[i]) for i in ranked if score[i] <= bound and sizes[i] <= limit]
                    expected = fitting[0] if fitting else None
                    assert counters.smallest_where(coef, bound, sizes_array, limit) == expected
        for row in (0, 1):
            assert counters.min(row) == min((values[i][row] for i in backlogged), default=float("inf"))
            assert counters.totals[row] == pytest.approx(sum(values[i][row] for i in backlogged), abs=1e-6)

    for step in range(4000):
        op = rnd.random()
        if not values or (op < 0.2 and len(values) < clients):
            values.append([0.0, 0.0])
            sizes.append(rnd.randrange(12))
            counters.add_client(f"c{len(values) - 1}")
            continue
        i = rnd.randrange(len(values))
        if op < 0.4:
            if i in backlogged:
                backlogged.discard(i)
                counters.unbacklog(i)
            else:
                backlogged.add(i)
                counters.backlog(i)
        elif op < 0.6:
            amounts = (rnd.choice([0.0, rnd.uniform(-5, 20)]), rnd.uniform(0, 3))
            values[i] = [v + a for v, a in zip(values[i], amounts)]
            counters.add(i, amounts)
        elif op < 0.7:
            row, value = rnd.randrange(2), float(rnd.randrange(60))  # ties on purpose
            values[i][row] = value
            counters.set(i, row, value)
        elif op < 0.85:
            row = rnd.randrange(2)
            columns = np.array(sorted(rnd.sample(range(len(values)), min(30, len(values)))))
            amounts = np.array([rnd.uniform(0, 5) for _ in columns])
            for j, c in enumerate(columns.tolist()):
                values[c][row] += amounts[j]
            counters.add_many(row, columns, amounts)
        else:
            row = rnd.randrange(2)
            amounts = np.array([rnd.choice([0.0, 1.0, 2.5]) for _ in values])
            for c in range(len(values)):
                values[c][row] += amounts[c]
            counters.add_dense(row, amounts)
        if step % 7 == 0:
            check()
    assert len(values) == clients  # one block of 256, or three
    check()
    for i in sorted(backlogged, reverse=True):  # ties everywhere, across blocks: the first seen wins
        for row in (0, 1):
            values[i][row] = 7.0
            counters.set(i, row, 7.0)
    check()


def test_per_request_charges_over_many_clients_equal_summing_in_order():
    """Over 1,024 clients a step's charges are summed per charged client only (sorted, not over
    every client): the same floats as adding each client's amounts in batch order, and the block
    minima and totals of a full scan."""
    import numpy as np

    from schedulers.counters import ClientCounters

    rng = np.random.default_rng(3)
    counters = ClientCounters(rows=1)
    n = 1500
    for i in range(n):
        counters.add_client(f"c{i}")
    backlogged = rng.random(n) < 0.5
    for i in np.flatnonzero(backlogged).tolist():
        counters.backlog(i)
    expected = np.zeros(n)
    for _ in range(50):
        clients = rng.integers(0, n, 256)
        clients[:40] = rng.integers(0, 5, 40)  # a few clients with many requests in the batch
        amounts = rng.uniform(0.1, 3.0, 256) / rng.choice([1.0, 1.6, 3.0], 256)
        counters.add_per_request(0, clients, amounts)
        per_client: dict[int, float] = {}
        for c, a in zip(clients.tolist(), amounts.tolist()):
            per_client[c] = per_client.get(c, 0.0) + a
        for c, total in per_client.items():
            expected[c] += total
    assert counters.values[0, :n].tolist() == expected.tolist()
    keys = np.where(backlogged, expected, np.inf)
    padded = np.concatenate((keys, np.full(counters.values.shape[1] - n, np.inf)))
    assert counters.block_min[0].tolist() == padded.reshape(-1, 256).min(axis=1).tolist()
    assert counters.min() == keys.min()
    assert counters.smallest((1.0,)) == (int(keys.argmin()), float(keys.min()))
    assert counters.totals[0] == pytest.approx(expected[backlogged].sum(), rel=1e-12)


def test_an_equal_score_in_an_earlier_block_wins_when_a_later_block_is_opened_first():
    from schedulers.counters import BLOCK, ClientCounters

    counters = ClientCounters(rows=2)
    for i in range(BLOCK + 2):
        counters.add_client(f"c{i}")
    for i, amounts in ((0, (1.0, 1.0)), (BLOCK, (0.5, 1.5)), (BLOCK + 1, (1.5, 0.5))):
        counters.backlog(i)
        counters.add(i, amounts)
    # block 1's bound (0.5 + 0.5) is the lowest, so it is opened first; block 0's bound equals
    # the best score found there (2), and its client comes first
    assert counters.smallest((1.0, 1.0)) == (0, 2.0)
    assert counters.within((1.0, 1.0), 2.0) == [(0, 2.0), (BLOCK, 2.0), (BLOCK + 1, 2.0)]


def test_client_counters_lift_and_block_minima_match_a_brute_force():
    """Admissions raise or remove a block's smallest counter (its minima are then recomputed when
    next read); a client that becomes backlogged is lifted, row by row, to the smallest counter of
    the backlogged clients, or to the last client to leave when none is."""
    from schedulers.counters import BLOCK, ClientCounters

    rnd = random.Random(3)
    counters = ClientCounters(rows=2)
    n = 3 * BLOCK + 40
    values = [[0.0, 0.0] for _ in range(n)]
    for i in range(n):
        counters.add_client(f"c{i}")
    backlogged: set[int] = set()
    last = None
    for step in range(3000):
        i = rnd.randrange(n)
        if i in backlogged:  # an admission: charge it, maybe it leaves
            amounts = (rnd.uniform(0, 50), rnd.choice([0.0, rnd.uniform(0, 2)]))
            values[i] = [v + a for v, a in zip(values[i], amounts)]
            counters.add(i, amounts)
            if rnd.random() < 0.6:
                backlogged.discard(i)
                counters.unbacklog(i)
                last = i
        else:  # an arrival: lift, then backlog
            if backlogged:
                floors = [min(values[j][row] for j in backlogged) for row in (0, 1)]
            elif last is not None and last != i:
                floors = list(values[last])
            else:
                floors = [-1.0, -1.0]
            values[i] = [max(v, f) for v, f in zip(values[i], floors)]
            counters.lift(i, last)
            backlogged.add(i)
            counters.backlog(i)
        if step % 5 == 0:
            assert counters.values[:, :n].T.tolist() == values
            for row in (0, 1):
                for block in range(4):
                    members = [values[j][row] for j in backlogged if j // BLOCK == block]
                    assert counters.block_min[row, block] == min(members, default=float("inf"))
                assert counters.min(row) == min((values[j][row] for j in backlogged), default=float("inf"))


def test_fcfs_admits_in_arrival_order_and_requeues_at_the_head():
    p = make_policy("fcfs")
    for i, c in enumerate("abab"):
        p.on_arrival(req(i, c), 0)
    first = p.select(lambda _: True)
    p.admit(first, 0, False)
    p.requeue(first)
    assert admit_all(p) == [0, 1, 2, 3]


def test_vtc_charges_prompt_at_admission_and_output_per_token():
    p = make_policy("vtc")
    a = req(0, "a", prompt=100)
    p.on_arrival(a, 0)
    p.admit(p.select(lambda _: True), 0, False)
    assert p.counters["a"] == 100  # w_p * prompt
    a.generated = 3
    p.on_tokens(Tokens.of([a]), 3)
    assert p.counters["a"] == 106  # + w_q * 3


def test_vtc_alternates_between_equal_clients_and_weights_divide_charges():
    p = make_policy("vtc")
    for i in range(3):
        p.on_arrival(req(i, "a", prompt=10), 0)
        p.on_arrival(req(10 + i, "b", prompt=10, weight=2.0), 0)
    # a: 0, b: 0 -> a (tie: first seen); a=10 -> b; b=5 -> b; b=10 -> a (tie, a first)...
    assert admit_all(p) == [0, 10, 11, 1, 12, 2]
    assert p.counters == {"a": 30, "b": 15}


def test_vtc_stops_at_the_first_request_that_does_not_fit():
    p = make_policy("vtc")
    p.on_arrival(req(0, "a", prompt=500), 0)
    p.on_arrival(req(1, "b", prompt=5), 0)
    assert p.select(lambda r: r.prompt_tokens < 100) is None


def test_lift_forfeits_idle_credit_but_lcf_keeps_it():
    for spec, expected in (("vtc", 100.0), ("lcf", 0.0)):
        p = make_policy(spec)
        p.on_arrival(req(0, "a", prompt=100), 0)
        p.on_arrival(req(1, "a", prompt=100), 0)
        p.admit(p.select(lambda _: True), 0, False)  # a = 100, a still backlogged
        p.on_arrival(req(2, "b", prompt=100), 1)  # b becomes backlogged: lifted to min(others) = 100
        assert p.counters["b"] == expected, spec


def test_lift_with_no_other_backlogged_client_uses_the_last_client_to_leave():
    p = make_policy("vtc")
    p.on_arrival(req(0, "a", prompt=70), 0)
    p.admit(p.select(lambda _: True), 0, False)  # a leaves the queue with 70
    p.on_arrival(req(1, "b"), 1)
    assert p.counters["b"] == 70


def test_vtc_predict_charges_prediction_then_corrects():
    p = make_policy("vtc-predict")
    first = req(0, "a", prompt=10, output=50)
    p.on_arrival(first, 0)
    p.admit(p.select(lambda _: True), 0, False)
    assert p.counters["a"] == 10 + 2 * 50  # first request: its actual length
    first.generated = 50
    p.on_tokens(Tokens.of([first]), 50)
    p.on_finish(first, 1)
    assert p.counters["a"] == 110  # prediction was exact: nothing more
    second = req(1, "a", prompt=10, output=20)
    p.on_arrival(second, 2)
    p.admit(p.select(lambda _: True), 2, False)
    assert p.counters["a"] == 110 + 10 + 2 * 50  # average is 50
    second.generated = 20
    p.on_tokens(Tokens.of([second]), 20)
    p.on_finish(second, 3)
    assert p.counters["a"] == 110 + 10 + 2 * 20  # refund (50 - 20) * 2
    assert p.average["a"] == pytest.approx((50 * 4 + 20) / 5)


def test_vtc_predict_charges_tokens_beyond_the_prediction():
    p = make_policy("vtc-oracle:0")
    r = req(0, "a", prompt=0, output=5)
    p.on_arrival(r, 0)
    p.admit(p.select(lambda _: True), 0, False)
    r.predicted_output = 3  # pretend the prediction was short
    r.generated = 4
    p.on_tokens(Tokens.of([r]), 4)  # tokens 1..4: one beyond 3
    base = 2 * 5
    assert p.counters["a"] == base + 2


def test_oracle_noise_stays_in_its_interval_and_is_seeded():
    def preds(seed):
        p = make_policy("vtc-oracle:0.5", seed=seed)
        out = []
        for i in range(200):
            r = req(i, "a", output=100)
            p.on_arrival(r, 0)
            p.admit(p.select(lambda _: True), 0, False)
            out.append(r.predicted_output)
        return out

    a = preds(1)
    assert all(50 <= x <= 150 for x in a) and min(a) < 60 and max(a) > 140
    assert a == preds(1) and a != preds(2)


def test_rpm_rejects_beyond_n_per_minute():
    p = make_policy("rpm:2")
    accepted = [p.on_arrival(req(i, "a", t=t), t) for i, t in enumerate([0, 10, 20, 59.9, 60.5])]
    # the window (t-60, t] holds 0 and 10 at t=20 and 59.9; at 60.5 only 10 (and 0 expired)
    assert accepted == [True, True, False, False, True]
    assert p.on_arrival(req(9, "b", t=20), 20)  # per client


@pytest.mark.parametrize("spec", ["nope", "vtc:3", "rpm:0", "rpm:2.5", "vtc-oracle:x"])
def test_bad_scheduler_specs_are_input_errors(spec):
    with pytest.raises(InputError, match="--scheduler"):
        make_policy(spec)


def test_run_names_are_directory_safe():
    assert [run_name(s) for s in ("vtc", "rpm:5", "vtc-oracle(0.2)")] == ["vtc", "rpm-5", "vtc-oracle-0.2"]
