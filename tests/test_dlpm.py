"""DLPM: locality within the fairness budget, and the bound of docs/DLPM.md on random workloads."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import LinearCost

from engine.feedback import Tokens
from engine.simulator import EngineConfig, Simulator
from schedulers import make_policy, run_name
from schedulers.dlpm import DLPM
from traces import load_workload
from traces.errors import InputError
from traces.prefix_workloads import SystemPrompts, parse_system_prompts, prefix_reuse, with_prefix_hashes
from traces.request import Request
from traces.schema import make_table, workload_metadata


def _cached(table: dict):
    """A fake prefix cache: request id -> cached prompt tokens."""
    return lambda req: table.get(req.request_id, 0)


def test_the_cached_request_goes_first_between_clients_with_deficit_left():
    policy = DLPM(quantum=1000)
    uncached = Request(0, "a", 0.0, 128, 10)  # arrived first
    cached = Request(1, "b", 1.0, 128, 10)  # same cost, 64 of its tokens cached
    for req in (uncached, cached):
        policy.on_arrival(req, req.arrival_s)
    # Without a prefix cache the client that has waited longest goes first ...
    assert policy.select(lambda r: True) is uncached
    # ... with one, the longer cached prefix, both clients having deficit left.
    policy.prefix_lookup = _cached({1: 64})
    assert policy.select(lambda r: True) is cached
    assert policy.deficits == {"a": 1000.0, "b": 1000.0}


def test_a_client_whose_deficit_is_spent_waits_however_well_its_prefix_matches():
    policy = DLPM(quantum=100)  # w_p 1: a 100-token prompt spends a whole quantum
    a1, a2 = Request(0, "a", 0.0, 100, 5), Request(1, "a", 0.5, 100, 5)
    b1 = Request(2, "b", 1.0, 100, 5)
    for req in (a1, a2, b1):
        policy.on_arrival(req, req.arrival_s)
    policy.prefix_lookup = _cached({0: 96, 1: 64, 2: 0})  # a's requests are cached, b1 not at all
    order = []
    for now in (2.0, 3.0, 4.0):
        req = policy.select(lambda r: True)
        policy.admit(req, now, resumed=False)
        order.append(req.request_id)
        if now == 3.0:  # a spent its quantum on a1: b1 is admitted before a2
            assert policy.deficits["a"] == 0.0
    assert order == [0, 2, 1]
    assert policy.refills == 2  # one at the start, one once both had spent theirs


def test_refills_go_to_backlogged_clients_only_and_lift_the_largest_into_0_q():
    policy = DLPM(quantum=10)
    reqs = [Request(i, c, 0.0, p, 1) for i, (c, p) in enumerate([("a", 35), ("b", 8), ("a", 1), ("b", 1)])]
    for req in reqs:
        policy.on_arrival(req, 0.0)
    order = []
    for _ in range(3):  # one quantum each; a's 35-token prompt first (waited longest), then b's two
        req = policy.select(lambda r: True)
        policy.admit(req, 0.0, resumed=False)
        order.append(req.request_id)
    assert order == [0, 1, 3]
    assert policy.deficits == {"a": -25.0, "b": 1.0}
    policy.on_tokens(Tokens.of([reqs[3]]), 1)  # b's output token (w_q 2); b has nothing waiting any more
    assert policy.deficits == {"a": -25.0, "b": -1.0}
    # Only a is backlogged and spent: three quanta at once lift it to 5, in (0, 10]; b gets none.
    assert policy.select(lambda r: True) is reqs[2]
    assert policy.deficits == {"a": 5.0, "b": -1.0}
    assert policy.refills == 4


def test_spec_and_knob():
    assert make_policy("dlpm").quantum == 2048
    assert make_policy("dlpm:512").quantum == 512
    assert make_policy("dlpm(300)").describe()["quantum"] == 300
    assert run_name("dlpm:512") == "dlpm-512"
    with pytest.raises(InputError, match="quantum Q > 0"):
        make_policy("dlpm:0")


# -- the bound on random workloads ---------------------------------------------------------------


class Recorded(DLPM):
    """DLPM that logs every charge and backlog change, and checks the deficit range on the way."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.events = []  # ("charge", client, amount) | ("in", client) | ("out", client)
        self.low = 0.0  # the lowest deficit any client reached
        self.window = {}  # client -> output tokens of its requests since its last admission
        self.most_tokens = 0  # R: the most output tokens of one client between two of its admissions

    def _name(self, slot):
        return self._names[slot]

    def _new_client(self, client):
        super()._new_client(client)
        self._names = list(self._index)
        self.window[client] = 0

    def _backlog(self, client, req, arrival):
        super()._backlog(client, req, arrival)
        self.events.append(("in", client))

    def _unbacklog(self, client):
        super()._unbacklog(client)
        self.events.append(("out", client))

    def admit(self, req, now, resumed):
        assert self._deficit[self._index[req.client]] > 0, "admitted a client without deficit"
        self.window[req.client] = 0
        super().admit(req, now, resumed)

    def _charge_admission(self, req, now):
        super()._charge_admission(req, now)
        self._charged(req.client, self.service.w_p * req.prompt_tokens / req.weight)

    def _charged(self, client, amount):
        self.events.append(("charge", client, amount))
        self.low = min(self.low, float(self._deficit[self._index[client]]))

    def on_tokens(self, tokens, k):
        super().on_tokens(tokens, k)
        for slot, w in zip(tokens.slots.tolist(), tokens.weights.tolist()):
            client = self._names[slot]
            self.window[client] += k
            self.most_tokens = max(self.most_tokens, self.window[client])
            self._charged(client, self.service.w_q * k / w)

    def _refill(self):
        super()._refill()
        top = max(self._deficit[self._index[c]] for c in self._backlogged)
        assert 0 < top <= self.quantum + 1e-9
        assert float(self._deficit[: len(self._index)].max()) <= self.quantum + 1e-9


def max_pair_difference(events):
    """The largest |W_f - W_g| over pairs and event intervals in which both stay backlogged."""
    clients = sorted({e[1] for e in events})
    col = {c: j for j, c in enumerate(clients)}
    served = np.zeros((len(events), len(clients)))  # charged so far, after each event
    inside = np.zeros((len(events), len(clients)), dtype=bool)  # backlogged, after each event
    amount = np.zeros(len(clients))
    state = np.zeros(len(clients), dtype=bool)
    for k, event in enumerate(events):
        j = col[event[1]]
        if event[0] == "charge":
            amount[j] += event[2]
        else:
            state[j] = event[0] == "in"
        served[k] = amount
        inside[k] = state
    best = 0.0
    for f in range(len(clients)):
        for g in range(f + 1, len(clients)):
            both = inside[:, f] & inside[:, g]
            if not both.any():
                continue
            diff = (served[:, f] - served[:, g])[both]
            rows = np.flatnonzero(both)
            starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)  # runs of consecutive events
            spread = np.maximum.reduceat(diff, starts) - np.minimum.reduceat(diff, starts)
            best = max(best, float(spread.max()))
    return best


def random_case(rng):
    clients = int(rng.integers(2, 5))
    n = int(rng.integers(10, 50))
    client = rng.integers(0, clients, n)
    arrival = np.sort(rng.uniform(0, rng.uniform(0.5, 5), n))
    prompt = rng.integers(1, 300, n)
    output = rng.integers(1, 60, n)
    weights = rng.choice([1.0, 2.0], clients) if rng.random() < 0.3 else np.ones(clients)
    table = make_table([f"c{c}" for c in client], arrival, prompt, output, weight=weights[client])
    quantum = float(rng.choice([32, 128, 512, 2048]))
    config = EngineConfig(
        kv_capacity_tokens=int(rng.choice([600, 1200, 4000])),
        max_running=int(rng.choice([4, 16, 256])),
        max_batch_tokens=int(rng.choice([64, 256, 2048])),
    )
    return table, quantum, config


def test_the_documented_bound_holds_on_random_workloads():
    rng = np.random.default_rng(19)
    tight = 0.0
    for case in range(240):
        table, quantum, config = random_case(rng)
        policy = Recorded(quantum=quantum)
        # A fake prefix cache that changes its mind: the bound must not depend on what it says.
        policy.prefix_lookup = lambda req: (req.request_id * 7919 + case) % 5 * 16
        requests, _ = Simulator(config, LinearCost(), policy).run(table)
        requests = requests.to_pandas()
        served = requests[requests.status != "rejected"]
        w_min = float(served.weight.min())
        # L: the longest prompt; R: the most output tokens one client's requests produce between
        # two of its admissions (docs/DLPM.md).
        w_p, w_q = policy.service.w_p, policy.service.w_q
        debt_bound = (w_p * int(served.prompt_tokens.max()) + w_q * policy.most_tokens) / w_min
        assert policy.low >= -debt_bound - 1e-6, case  # the lemma: d >= -(w_p L + w_q R) / w
        bound = 2 * (quantum + debt_bound)
        diff = max_pair_difference(policy.events)
        assert diff <= bound + 1e-6, (case, diff, bound)
        tight = max(tight, diff / bound)
    assert tight > 0.3  # the workloads do press against it


# -- the prefix-heavy workload ----------------------------------------------------------------

SHAREGPT_20 = Path(__file__).parent / "data" / "sharegpt_20.json"


def test_turns_of_a_conversation_share_their_history_blocks_and_nothing_else():
    table = load_workload(SHAREGPT_20, turns="all", clients=4, rate=1.0)
    out = with_prefix_hashes(table, block=64).to_pandas()
    assert (out.prompt_tokens.to_numpy() == table["prompt_tokens"].to_numpy()).all()
    checked = 0
    for _, turns in out.groupby("conversation_id"):
        turns = turns.sort_values("prompt_tokens")
        for (_, a), (_, b) in zip(turns.iloc[:-1].iterrows(), turns.iloc[1:].iterrows()):
            full = a.prompt_tokens // 64
            assert list(b.prefix_hashes[:full]) == list(a.prefix_hashes[:full])  # the history is a prefix
            if a.prompt_tokens % 64:  # a's partial last block is its own
                assert a.prefix_hashes[full] not in set(b.prefix_hashes)
            checked += 1
    assert checked >= 20
    assert all(len(h) == -(-p // 64) for h, p in zip(out.prefix_hashes, out.prompt_tokens))
    firsts = out.groupby("conversation_id").prefix_hashes.first()
    assert len({h[0] for h in firsts if len(h) > 1}) == sum(len(h) > 1 for h in firsts)  # none shared across


def test_system_prompts_are_shared_across_the_clients_that_get_them():
    table = load_workload(SHAREGPT_20, turns="all", clients=4, rate=1.0)
    shared = with_prefix_hashes(table, block=512, system_prompts=parse_system_prompts("3:2:1024"))
    meta = workload_metadata(shared)["prefix_hashes"]
    assert meta["block_tokens"] == 512 and meta["system_prompts"]["assigned"] == {
        "client-0": 0, "client-1": 1, "client-2": 0
    }  # fmt: skip
    out = shared.to_pandas()
    base = table["prompt_tokens"].to_numpy()
    heads = {}
    for client, prompt, before, hashes in zip(out.client_id, out.prompt_tokens, base, out.prefix_hashes):
        if client in ("client-0", "client-1", "client-2"):
            assert prompt == before + 1024
            heads.setdefault(client, set()).add(tuple(hashes[:2]))
        else:
            assert prompt == before
    assert all(len(h) == 1 for h in heads.values())  # one system prompt per client
    assert heads["client-0"] == heads["client-2"] != heads["client-1"]  # clients 0 and 2 share prompt 0
    reuse = prefix_reuse(with_prefix_hashes(table, system_prompts=SystemPrompts(3, 2, 1024)))
    assert reuse["reusable_across_clients"] > 0 and reuse["reusable_within_client"] > 0.3
    # clients 0 and 2 share prompt 0 (two blocks), client 1 is alone with prompt 1
    assert reuse["in_blocks_shared_by_clients"] == pytest.approx(
        1024 * sum(c in ("client-0", "client-2") for c in out.client_id) / out.prompt_tokens.sum()
    )
    plain = prefix_reuse(with_prefix_hashes(table))
    assert plain["reusable_across_clients"] == plain["in_blocks_shared_by_clients"] == 0


def test_bad_system_prompt_specs_name_the_option():
    for spec in ("4:2", "a:b:c", "0:1:512"):
        with pytest.raises(InputError, match="--system-prompts"):
            parse_system_prompts(spec)


# -- the vLLM adapter: vLLM's own prefix cache answers the lookup ----------------------------------


def _vllm_request(rid, ids, tenant):
    from vllm import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.request import Request as VllmRequest

    from serving.bridge import TENANT_KEY, WEIGHT_KEY

    init_none_hash(sha256)
    params = SamplingParams(max_tokens=2, ignore_eos=True, extra_args={TENANT_KEY: tenant, WEIGHT_KEY: 1.0})
    return VllmRequest(rid, ids, params, None, block_hasher=get_request_block_hasher(16, sha256))


@pytest.mark.parametrize("policy, order", [("fcfs", ["cold", "hot"]), ("dlpm", ["hot", "cold"])])
def test_in_vllm_dlpm_admits_the_request_whose_prefix_vllm_has_cached(tmp_path, policy, order):
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from serving.offline import make_scheduler, step, write_config
    from serving.vllm_adapter import FairScheduler

    sched = make_scheduler(
        FairScheduler, write_config(tmp_path), max_num_seqs=1, enable_prefix_caching=True,
        additional_config={"equinox": {"scheduler": policy}},
    )  # fmt: skip
    shared = list(range(100, 164))  # 64 tokens: four 16-token blocks
    sched.add_request(_vllm_request("warm", shared + [5], "a"))
    while sched.has_requests():  # warm runs alone and finishes; its blocks stay cached
        step(sched)
    sched.add_request(_vllm_request("cold", list(range(300, 365)), "b"))  # first, nothing cached
    sched.add_request(_vllm_request("hot", shared + [6], "c"))  # 64 of 65 tokens cached
    assert sched.equinox._by_seq and sched.equinox.policy.prefix_lookup is not None
    admitted = []
    while sched.has_requests():
        out, _ = step(sched)
        admitted += [r.req_id for r in out.scheduled_new_reqs]
    assert admitted == order


def test_traces_convert_writes_prefix_hashes_and_system_prompts(tmp_path):
    from typer.testing import CliRunner

    from equinox_cli.main import app

    out = tmp_path / "w.parquet"
    args = ["traces", "convert", str(SHAREGPT_20), "--turns", "all", "--clients", "4", "--rate", "1"]
    result = CliRunner().invoke(app, [*args, "--system-prompts", "2:1:1024", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert workload_metadata(table)["prefix_hashes"]["system_prompts"]["assigned"] == {"client-0": 0, "client-1": 0}
    assert table["prefix_hashes"].null_count == 0
    bad = CliRunner().invoke(app, [*args, "--prefix-hashes", "0", "--out", str(tmp_path / "x.parquet")])
    assert bad.exit_code == 2 and "--prefix-hashes" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "x.parquet").exists()


def test_fast_forward_changes_nothing_under_dlpm():
    rng = np.random.default_rng(7)
    for case in range(5):
        table, quantum, config = random_case(rng)
        tables = []
        for fast in (True, False):
            policy = DLPM(quantum=quantum)
            policy.prefix_lookup = lambda req: req.request_id % 3 * 16
            cfg = EngineConfig(**{**config.as_dict(), "fast_forward": fast})
            requests, _ = Simulator(cfg, LinearCost(), policy).run(table)
            tables.append((requests, policy.deficits))
        (fast_req, fast_deficits), (slow_req, slow_deficits) = tables
        # engine_seconds: sums of the same shares in another order, equal to rounding
        np.testing.assert_allclose(fast_req["engine_seconds"], slow_req["engine_seconds"], rtol=1e-9)
        assert fast_req.drop(["engine_seconds"]).equals(slow_req.drop(["engine_seconds"])), case
        assert fast_deficits == pytest.approx(slow_deficits), case
