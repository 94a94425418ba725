"""MoPE predictors: training, determinism, the router, the bundle, inference and VTC-predict.

One constructed workload is replayed once and trained on once per module: prompts of three
router categories (code, rewrite, other) in which the word "list" means a long reply for code, a
short one for rewrites and nothing otherwise, and conversations of three turns whose replies
share a length, so that the category and the conversation's earlier replies carry signal.
"""

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import predictors
from engine.feedback import Tokens
from engine.replay import engine_config, replay
from engine.simulator import Simulator
from predictors.bundle import MANIFEST, MODELS, npz_bytes, save_bundle
from predictors.text import CATEGORIES
from predictors.training import CONSTANTS, load_logs, predict_requests, split
from schedulers.vtc_predict import VTCPredict
from traces.errors import InputError
from traces.request import Request
from traces.schema import make_table

PRESET = "a100-llama2-7b"


CATEGORY_WORDS = ("python", "summarize", "w0")  # the router's code, rewrite and other categories


def experts_workload(n=600, rate=20.0, seed=0):
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 3, n)
    prompt = rng.integers(10, 400, n)
    listed = rng.random(n) < 0.5
    vocab = np.array([f"w{i}" for i in range(1, 40)])
    texts = [
        f"{CATEGORY_WORDS[k]} " + " ".join(rng.choice(vocab, 6)) + (" list" if x else "") for k, x in zip(kind, listed)
    ]
    long_reply = np.where(kind == 0, listed, ~listed)
    output = np.where(kind == 2, 100, np.where(long_reply, 300, 30)) * rng.uniform(0.9, 1.1, n)
    clients = rng.choice(["a", "b", "c", "d"], n)
    conversations = [f"c{i % max(n // 3, 1)}" for i in range(n)]  # three turns, n / 3 arrivals apart
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    return make_table(clients, arrivals, prompt, output.astype(int), prompt=texts, conversation_id=conversations)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    # No prefix cache: the workload's conversation ids are arbitrary, and cached turns would only
    # shift the engine-state features these tests do not concern.
    (run_dir,) = replay(
        experts_workload(), ["vtc"], tmp_path_factory.mktemp("runs"), preset=PRESET, prefix_caching=False
    )
    return run_dir


@pytest.fixture(scope="module")
def trained(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "mope"
    return predictors.train([run], out, holdout=0.2, seed=42)


def logged_requests(run_dir):
    """The run's requests as Request objects, with the engine state and outcome they had."""
    reqs = []
    for r in pd.read_parquet(run_dir / "requests.parquet").itertuples():
        req = Request(r.request_id, r.client_id, r.arrival_s, r.prompt_tokens, r.output_tokens, r.weight, r.prompt)
        req.arrival_state = (
            r.waiting_at_arrival,
            r.waiting_tokens_at_arrival,
            r.running_at_arrival,
            r.kv_used_at_arrival,
        )
        req.generated, req.finish_s = r.generated_tokens, r.finish_s
        req.row = len(reqs)
        reqs.append(req)
    return reqs


def conversations_of(run_dir):
    """The workload's conversation per row (what the replay gives a session)."""
    return pd.read_parquet(run_dir / "requests.parquet")["conversation_id"].tolist()


def session_predictions(session, reqs):
    """Predict each request at its arrival, after observing every request finished by then."""
    done = sorted(reqs, key=lambda r: r.finish_s)
    seen, out = 0, []
    for req in reqs:
        while seen < len(done) and done[seen].finish_s <= req.arrival_s:
            session.observe(done[seen])
            seen += 1
        out.append(session.predict_one(req))
    return np.array(out)


# -- training and accuracy -------------------------------------------------------------------


def test_report_has_every_target_and_model(trained):
    assert set(trained.metrics) == {*predictors.REQUEST_TARGETS, *predictors.STEP_TARGETS, "tokens_per_s"}
    for target, by_model in trained.metrics.items():
        constants = list(CONSTANTS) if target == "output_tokens" else []
        assert list(by_model) == [*predictors.MODELS, *constants]
        for m in by_model.values():
            assert m["n"] > 0 and 0 <= m["p50"] <= m["p90"] <= m["p99"]
    out = trained.metrics["output_tokens"]
    assert all(-1 <= out[m]["tau"] <= 1 for m in predictors.MODELS)
    assert out["training-median"]["tau"] is None
    assert trained.rows["holdout_requests"] > 40 and trained.rows["calibration_requests"] > 40


def test_the_models_beat_the_constants_and_the_moving_average_and_the_p90_covers(trained):
    out = trained.metrics["output_tokens"]
    mae = {model: m["mae"] for model, m in out.items()}
    assert mae["mope"] <= 1.05 * mae["single"]
    assert mae["single"] < 0.5 * min(mae["moving-average"], mae["training-median"], mae["training-mean"])
    assert out["mope"]["tau"] > 0.5 and out["single"]["tau"] > 0.5  # three length levels: ties limit tau
    for model in ("mope", "single"):  # calibrated on other held-out conversations than these
        assert 0.75 <= out[model]["p90_coverage"] <= 1.0


def test_two_trainings_give_identical_bundles_and_predictions(run, trained, tmp_path):
    again = predictors.train([run], tmp_path / "again", holdout=0.2, seed=42)
    for name in (MANIFEST, MODELS):
        assert (tmp_path / "again" / name).read_bytes() == (trained.bundle / name).read_bytes()
    reqs = logged_requests(run)[:50]
    first = predictors.load_bundle(trained.bundle).session().predict(reqs)
    second = predictors.load_bundle(again.bundle).session().predict(reqs)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_the_split_keeps_a_conversation_on_one_side(tmp_path):
    # Turns of a conversation share a conversation_id; a request replayed under two schedulers
    # is the same request.  Each must fall on one side of the split.
    table = experts_workload(n=300)
    conversation = [f"c{i // 3}" if i % 2 else None for i in range(table.num_rows)]
    table = table.set_column(
        table.schema.get_field_index("conversation_id"), "conversation_id", pa.array(conversation, type=pa.string())
    )
    logs = load_logs(replay(table, ["vtc", "fcfs"], tmp_path / "runs", preset=PRESET))
    held, _ = split(logs, 0.3, np.random.default_rng(42))
    sides = pd.Series(held).groupby(logs.requests["group"].to_numpy()).nunique()
    assert sides.eq(1).all() and logs.requests.groupby("group")["run"].nunique().eq(2).all()
    assert logs.requests["group"].nunique() < table.num_rows and 0.2 < held.mean() < 0.4


def test_runs_of_different_presets_are_refused(run, tmp_path):
    (other,) = replay(experts_workload(n=50), ["vtc"], tmp_path / "a10g", preset="vtc-a10g-llama2-7b")
    with pytest.raises(InputError, match="several engine presets"):
        predictors.train([run, other], tmp_path / "b")


# -- no leakage --------------------------------------------------------------------------------


def _features_of(run_dir):
    logs = load_logs([run_dir])
    return logs, logs.requests[["conv_last_output", "conv_mean_output", "conv_max_output", "conv_finished"]]


def test_a_reply_enters_only_the_features_of_later_turns_of_its_conversation(run, tmp_path):
    logs, before = _features_of(run)
    req = pd.read_parquet(run / "requests.parquet")
    first = req.groupby("conversation_id")["arrival_s"].transform("min") == req["arrival_s"]
    last = req.groupby("conversation_id")["arrival_s"].transform("max") == req["arrival_s"]
    assert (before["conv_finished"][first.to_numpy()] == 0).all()  # a first turn knows no earlier reply
    assert before["conv_last_output"][first.to_numpy()].isna().all()  # (the matrix says -1: NO_HISTORY)
    later = ~first.to_numpy()
    assert (before["conv_finished"][later] >= 1).all()  # the previous turn finished n / 3 arrivals earlier
    # change every last turn's reply: no row's features change (its own reply never enters them)
    changed = tmp_path / "run"
    shutil.copytree(run, changed)
    edited = req.copy()
    edited.loc[last, "generated_tokens"] = 5000
    edited.to_parquet(changed / "requests.parquet")
    _, after = _features_of(changed)
    pd.testing.assert_frame_equal(after.reset_index(drop=True), before.reset_index(drop=True))
    # change the first turns' replies: exactly the later turns of those conversations see it
    edited = req.copy()
    edited.loc[first, "generated_tokens"] = 5000
    edited.to_parquet(changed / "requests.parquet")
    _, after = _features_of(changed)
    assert (after["conv_max_output"].to_numpy()[later] == 5000).all()
    assert (after["conv_finished"].to_numpy() == before["conv_finished"].to_numpy()).all()


def test_the_benchmark_split_keeps_test_conversations_out_of_development(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "mope_accuracy", Path(__file__).parents[1] / "benchmarks/mope_accuracy.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    conversations = [
        {"id": f"id{i % 9}" if i in (3, 12) else f"id{i}", "conversations": [{"from": "human", "value": "hi"}]}
        for i in range(16)
    ]  # id3 occurs at 3 (development) and 12 (test)
    (tmp_path / "a.json").write_text(json.dumps(conversations[:6]))
    (tmp_path / "b.json").write_text(json.dumps(conversations[6:]))
    monkeypatch.setattr(bench, "DATA", tmp_path)
    monkeypatch.setattr(bench, "FILES", ("a.json", "b.json"))
    monkeypatch.setattr(bench, "DEV", range(0, 10))
    monkeypatch.setattr(bench, "TEST", range(10, 16))
    dev_path, test_path, counts = bench.split_conversations(tmp_path, None)
    dev = {c["id"] for c in json.loads(dev_path.read_text())}
    test = {c["id"] for c in json.loads(test_path.read_text())}
    assert not dev & test and counts == {"dev": 9, "test": 5, "dropped_ids_on_both_sides": 1}
    assert dev == {f"id{i}" for i in range(10) if i != 3} and test == {f"id{i}" for i in range(10, 16) if i != 12}


def test_the_replay_gives_each_session_the_workloads_conversations(trained, tmp_path):
    bundle = predictors.load_bundle(trained.bundle)
    seen, session = [], bundle.session

    def recording(model="mope", conversations=None):
        seen.append(conversations)
        return session(model, conversations)

    bundle.session = recording
    workload = experts_workload(n=60)
    replay(workload, ["vtc-predict", "equinox"], tmp_path / "runs", preset=PRESET, predictors=bundle)
    assert seen == [workload.column("conversation_id").to_pylist()] * 2


def test_a_request_without_text_gets_what_the_text_features_of_an_empty_prompt_give(trained):
    from predictors.text import category, text_features, tfidf_score

    bundle = predictors.load_bundle(trained.bundle)
    idf, weights, bias = bundle.text_model()
    for model in ("mope", "single"):
        session = bundle.session(model)
        for tokens in (1, 16, 17, 900):
            req = Request(tokens, "a", 0.0, tokens, 1)
            req.arrival_state = (3, 40, 2, 0.5)
            values, buckets, counts = text_features(None, tokens)
            expert = category(values) if model == "mope" else 0
            general = (tokens, 3, 40, 2, 0.5, *values, tfidf_score(buckets, counts, idf, weights, bias))
            assert session._prompt_features(req) == (expert, general)


# -- quantiles -------------------------------------------------------------------------------


def test_output_quantile_is_the_central_prediction_times_its_experts_calibrated_factor(run, trained):
    from predictors.bundle import QUANTILES

    bundle = predictors.load_bundle(trained.bundle)
    factors = bundle.arrays["request.mope.quantile_factor"]
    assert factors.shape == (len(CATEGORIES), len(QUANTILES)) and (np.diff(factors, axis=1) >= 0).all()
    assert factors[:, QUANTILES.index(0.9)].min() > 1.0  # the p90 is above the central (median) prediction
    session = bundle.session()
    reqs = logged_requests(run)[:20]
    for req in reqs:
        session.arrive(req)
    _, experts = bundle.session().features(reqs)
    for req, expert in zip(reqs, experts):
        high = session.output_quantile(req, 0.9)
        central = session.output_tokens(req)  # the same central prediction, still there to take
        assert high == pytest.approx(central * factors[expert, QUANTILES.index(0.9)])
        assert session.output_quantile(req, 0.9) == high  # asked again after admission: unchanged
        assert session.output_quantile(req, 0.5) <= session.output_quantile(req, 0.95)
    with pytest.raises(ValueError, match="q must be between"):
        session.output_quantile(reqs[0], 0.999)


# -- the router ------------------------------------------------------------------------------


HAND_BUILT = {  # a prompt of each router category, and its prompt tokens (with earlier turns for followup)
    "code": ("Why does this fail?\n```python\nprint(x[0])\n```", 20),
    "rewrite": ("Please rewrite this paragraph so it reads better: we was going home.", 20),
    "longform": ("Write a 500 word essay about the history of tea", 12),
    "brief": ("Answer in one word: the capital of France", 10),
    "question": ("How far is the moon from the earth?", 10),
    "followup": ("now the same for mars", 300),
    "other": ("hello there", 3),
}


def test_router_sends_a_hand_built_prompt_of_each_category_to_its_expert(trained):
    assert tuple(HAND_BUILT) == CATEGORIES
    bundle = predictors.load_bundle(trained.bundle)
    router = bundle.manifest["router"]["request"]
    assert router["categories"] == list(CATEGORIES) and sum(router["training_rows"]) == trained.rows["train_requests"]
    rows = dict(zip(CATEGORIES, router["training_rows"]))  # "w0" prompts are other or, longer in tokens, followup
    assert rows["code"] > 100 and rows["rewrite"] > 100 and rows["followup"] + rows["other"] > 100
    assert rows["longform"] == rows["brief"] == rows["question"] == 0
    reqs = [Request(i, "a", 0.0, tokens, 1, prompt=text) for i, (text, tokens) in enumerate(HAND_BUILT.values())]
    _, experts = bundle.session().features(reqs)
    assert experts.tolist() == list(range(len(CATEGORIES)))
    assert bundle.session("single").features(reqs)[1].tolist() == [0] * len(CATEGORIES)
    no_text = Request(99, "a", 0.0, 40, 1)  # without text: other, or followup when it counts earlier turns
    assert bundle.session().features([no_text])[1].tolist() == [CATEGORIES.index("followup")]
    step = bundle.manifest["router"]["step"]["thresholds"]
    assert step[0] == 0 and step[1] > 0


# -- the bundle and inference ----------------------------------------------------------------


def test_bundle_round_trip_and_requests_predict_as_logs_do(run, trained, tmp_path):
    bundle = predictors.load_bundle(trained.bundle, preset=PRESET)
    manifest = {k: v for k, v in bundle.manifest.items() if k != "files"}
    save_bundle(tmp_path / "copy", manifest, bundle.arrays)
    for name in (MANIFEST, MODELS):
        assert (tmp_path / "copy" / name).read_bytes() == (trained.bundle / name).read_bytes()
    logs = load_logs([run])
    for model in ("mope", "single"):
        session = bundle.session(model, conversations=conversations_of(run))
        from_requests = session_predictions(session, logged_requests(run))
        np.testing.assert_array_equal(from_requests, predict_requests(bundle, model, logs.requests))


def test_session_batch_single_and_step_paths(run, trained):
    session = predictors.load_bundle(trained.bundle).session()
    reqs = logged_requests(run)[:64]
    batch = session.predict(reqs)
    assert batch.output_tokens.shape == (64,) and (batch.output_tokens >= 1).all() and (batch.e2e_s >= 0).all()
    assert tuple(session.predict_one(reqs[3])) == tuple(float(v[3]) for v in batch)
    steps = session.step([0, 512], [32, 8], [32, 9], [0.2, 0.1])
    assert steps.step_s.shape == (2,) and (steps.step_s > 0).all()
    assert steps.tokens_per_s[1] == pytest.approx(520 / steps.step_s[1])
    assert session.step_time(512, 8, 9, 0.1) == pytest.approx(float(steps.step_s[1]))


def test_a_forest_of_some_targets_predicts_what_the_whole_forest_does(trained):
    from predictors.bundle import RequestForest
    from predictors.features import REQUEST_FEATURES
    from predictors.forest import Forest

    bundle = predictors.load_bundle(trained.bundle)
    arrays = bundle.model_arrays("request", "mope")
    whole = Forest(arrays)
    rng = np.random.default_rng(4)
    X = (rng.random((300, len(REQUEST_FEATURES))) * 400).astype(np.float32)
    experts = rng.integers(0, len(CATEGORIES), 300)
    expected = whole.predict(X, experts)
    for k in range(4):
        part = Forest(arrays, targets=[k])
        np.testing.assert_array_equal(part.predict(X, experts)[:, 0], expected[:, k])
        one_by_one = [part.predict(X[i : i + 1], experts[i : i + 1])[0, 0] for i in range(0, 300, 7)]
        np.testing.assert_array_equal(one_by_one, expected[::7, k])
    # the latency targets' padded trees, walked unpadded, predict the same (up to float summation order)
    np.testing.assert_allclose(RequestForest(arrays, bundle.manifest).predict(X, experts), expected, rtol=1e-12)


class CountingForest:
    """Wraps a session's output-length forest: the rows of each batch it predicts."""

    def __init__(self, forest):
        self.forest, self.batches = forest, []

    def predict(self, X, experts):
        self.batches.append(len(X))
        return self.forest.predict(X, experts)


@pytest.mark.parametrize("model", ["mope", "single"])
def test_lazy_batches_from_arrival_features_equal_one_at_a_time_on_the_same_snapshot(run, trained, model):
    """Requests arrive (features taken, history included) while others finish; their output lengths
    are then predicted in one batch, in any order, and equal predict_one's on a session that had
    seen the same history at each arrival.  Completions after an arrival do not count."""
    bundle = predictors.load_bundle(trained.bundle)
    reqs = logged_requests(run)[:150]  # prompt text, engine state at arrival, outcomes
    done = sorted(reqs, key=lambda r: r.finish_s)
    lazy, reference, eager = bundle.session(model), bundle.session(model), bundle.session(model)
    lazy._output_forest = counting = CountingForest(lazy._output_forest)
    expected, seen = {}, 0
    for req in reqs:
        while seen < len(done) and done[seen].finish_s <= req.arrival_s:
            for session in (lazy, reference, eager):
                session.observe(done[seen])
            seen += 1
        lazy.arrive(req)
        expected[req.request_id] = reference.predict_one(req).output_tokens
        eager.arrive(req)
        assert eager.output_tokens(req) == expected[req.request_id]  # a batch of one
    assert 0 < seen < len(done)
    for req in done[seen:]:  # finished after the last arrival: not in anyone's features
        lazy.observe(req)
    assert counting.batches == []  # nothing predicted before it is needed
    order = np.random.default_rng(0).permutation(len(reqs))
    got = {reqs[i].request_id: lazy.output_tokens(reqs[i]) for i in order}
    assert got == expected
    assert counting.batches == [150]  # one batch, for every arrived request
    assert lazy._arrived_ids == [] and lazy._output == {}  # rows dropped once predicted, predictions once taken


def test_features_at_arrival_ignore_the_completions_that_follow(trained):
    bundle = predictors.load_bundle(trained.bundle)
    session, fresh = bundle.session(), bundle.session()
    reqs = [
        Request(i, "a", 0.0, p, 80, prompt=t) for i, (p, t) in enumerate([(20, "w1 list"), (150, "w2"), (400, "w3")])
    ]
    for req in reqs:
        session.arrive(req)
    for i in range(5):  # the client's replies turn out long, after the arrivals
        finished = Request(100 + i, "a", 0.0, 50, 900)
        finished.generated = 900
        session.observe(finished)
    got = [session.output_tokens(req) for req in reqs]
    assert got == [fresh.predict_one(req).output_tokens for req in reqs]  # as with no history
    later = [Request(10 + i, "a", 1.0, r.prompt_tokens, 80, prompt=r.prompt) for i, r in enumerate(reqs)]
    X, _ = session.features(later)
    assert X[:, 5].tolist() == [900.0] * 3 and X[:, 6].tolist() == [5.0] * 3  # later arrivals see the history
    for req in later:
        session.arrive(req)
    assert [session.output_tokens(req) for req in later] != got  # and it changes what is predicted


def test_a_request_that_leaves_unadmitted_is_forgotten(trained):
    session = predictors.load_bundle(trained.bundle).session()
    a, b, c = (Request(i, "a", 0.0, 100, 10) for i in range(3))
    for req in (a, b, c):
        session.arrive(req)
    session.forget(a)  # before its batch
    session.output_tokens(b)
    assert set(session._output) == {2}
    session.forget(c)  # after
    assert session._output == {} and session._arrived_ids == []
    assert session.output_tokens(a) == session.predict_one(a).output_tokens  # asked anyway: features now
    from schedulers import Equinox, EquinoxKnobs

    session = predictors.load_bundle(trained.bundle).session()
    policy = Equinox(EquinoxKnobs(lengths="predictor"), predictor=session)
    kept, dropped = Request(0, "a", 0.0, 100, 10), Request(1, "b", 0.0, 100, 10)
    for req in (kept, dropped):
        policy.on_arrival(req, 0.0)
    policy.admit(dropped, 0.0, resumed=True)  # the serving bridge drops an aborted waiting request so
    # dropped is forgotten (kept, a client's head, had its quantile taken for memory-aware admission)
    assert 1 not in session._arrived_ids and 1 not in session._output
    policy.admit(kept, 0.0, resumed=False)
    policy.requeue(kept)  # preempted, then admitted again: charged once
    policy.admit(kept, 0.1, resumed=True)
    assert session._arrived_ids == [] and session._output == {} and kept.predicted_output > 0


class AtArrival:
    """A predictor without the batched path: predict_one at each arrival, the value used at admission."""

    def __init__(self, session):
        self.session, self.values = session, {}

    def arrive(self, req):
        self.values[req.request_id] = self.session.predict_one(req).output_tokens

    def output_tokens(self, req):
        return self.values.pop(req.request_id)

    def observe(self, req):
        self.session.observe(req)


def test_equinox_charges_mope_output_lengths_predicted_in_batches_from_arrival_features(trained):
    from schedulers import Equinox, EquinoxKnobs

    bundle = predictors.load_bundle(trained.bundle)
    config, preset = engine_config(PRESET, max_running=16)
    workload = experts_workload(n=300, rate=80.0, seed=5)  # overloaded: queues build up
    session = bundle.session()
    session._output_forest = counting = CountingForest(session._output_forest)
    knobs = EquinoxKnobs(lengths="predictor")
    requests, _ = Simulator(config, preset.cost_model, Equinox(knobs, predictor=session)).run(workload)
    reference, _ = Simulator(config, preset.cost_model, Equinox(knobs, predictor=AtArrival(bundle.session()))).run(
        workload
    )
    assert requests.column("status").to_pylist() == ["finished"] * 300
    assert requests.equals(reference)  # the same predictions, so the same schedule
    assert sum(counting.batches) == 300 and len(counting.batches) < 150 and max(counting.batches) > 1
    assert session._arrived_ids == [] and session._output == {}


def test_evaluate_on_another_preset_warns(trained, tmp_path):
    (other,) = replay(experts_workload(n=100, seed=3), ["vtc"], tmp_path / "a10g", preset="vtc-a10g-llama2-7b")
    with pytest.warns(UserWarning, match="a100-llama2-7b.*vtc-a10g-llama2-7b"):
        report = predictors.evaluate(trained.bundle, [other])
    assert report.rows["requests"] == 100
    assert report.metrics["output_tokens"]["mope"]["n"] == 100


def _forge(change):
    """Replace models.npz by ``change(arrays)`` (an archive's bytes) and, as a forger would, the checksum."""

    def forge(bundle_dir):
        arrays = dict(predictors.load_bundle(bundle_dir).arrays)
        data = change(arrays)
        (bundle_dir / MODELS).write_bytes(data)
        manifest = json.loads((bundle_dir / MANIFEST).read_text())
        manifest["files"] = {MODELS: hashlib.sha256(data).hexdigest()}
        (bundle_dir / MANIFEST).write_text(json.dumps(manifest))

    return forge


def _replaced(name, transform):
    return _forge(lambda arrays: npz_bytes({**arrays, name: transform(arrays[name])}))


def _without(name):
    return _forge(lambda arrays: npz_bytes({k: v for k, v in arrays.items() if k != name}))


def _pickled(arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **{**arrays, "request.mope.init": np.array([{"x": 1}], dtype=object)})
    return buffer.getvalue()


def _edit_manifest(**changes):
    def edit(d):
        manifest = json.loads((d / MANIFEST).read_text())
        manifest.update(changes)
        (d / MANIFEST).write_text(json.dumps(manifest))

    return edit


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda d: (d / MANIFEST).unlink(), "expected manifest.json"),
        (lambda d: (d / MANIFEST).write_text("{not json"), "expected a JSON object"),
        (_edit_manifest(format="some-other-model"), "not a predictor bundle manifest"),
        (_edit_manifest(format_version=1), "format version 1; this Equinox reads version 2"),
        (_edit_manifest(features={"request": ["prompt_tokens"], "step": []}), "features.request must be"),
        (_edit_manifest(model={"request": {"trees": 0, "depth": 4}}), "model.request.trees must be a whole number"),
        (_edit_manifest(quantiles=[0.9]), "quantiles must be"),
        (lambda d: (d / MODELS).unlink(), "missing file models.npz"),
        (lambda d: (d / MODELS).write_bytes((d / MODELS).read_bytes()[:-10]), "does not match the checksum"),
        (
            _replaced("step.single.value", lambda a: a[..., :4]),
            r"array step.single.value is float64\[1, 2, 50, 4\], expected float64\[1, 2, 50, 8\]",
        ),
        (_replaced("request.mope.feature", lambda a: a + 99), "names features outside 0..41"),
        (_replaced("request.mope.threshold", lambda a: a * np.nan), "non-finite values"),
        (_without("text.weights"), r"missing arrays \['text.weights'\]"),
        (_without("request.mope.quantile_factor"), r"missing arrays \['request.mope.quantile_factor'\]"),
        (_forge(_pickled), "not a readable numeric .npz archive"),
    ],
)
def test_corrupted_or_foreign_bundles_are_refused_with_a_clear_error(trained, tmp_path, tamper, message):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(trained.bundle, bundle_dir)
    tamper(bundle_dir)
    with pytest.raises(InputError, match=message) as err:
        predictors.load_bundle(bundle_dir)
    assert str(bundle_dir) in str(err.value)


def test_a_run_directory_is_not_a_bundle(run):
    with pytest.raises(InputError, match="expected manifest.json"):
        predictors.load_bundle(run)


# -- VTC-predict with a predictor ------------------------------------------------------------


class FixedPredictor:
    """Predicts 40 output tokens for every request; records what it observes."""

    def __init__(self):
        self.observed = []

    def predict_one(self, req):
        return predictors.Prediction(40.0, 0.0, 0.0, 0.0)

    def observe(self, req):
        self.observed.append(req.request_id)

    def describe(self):
        return {"name": "fixed-40"}


def test_vtc_predict_charges_the_predicted_length_then_corrects():
    predictor = FixedPredictor()
    policy = VTCPredict(predictor=predictor)
    long, short = Request(0, "a", 0.0, 100, 50), Request(1, "b", 0.0, 100, 30)
    for req in (long, short):
        policy.on_arrival(req, 0.0)
    for _ in range(2):
        policy.admit(policy.select(lambda _: True), 0.0, resumed=False)
    assert policy.counters == {"a": 100 + 2 * 40, "b": 100 + 2 * 40}  # w_p * prompt + w_q * predicted
    long.generated, short.generated = 40, 30
    policy.on_tokens(Tokens.of([long]), 40)
    policy.on_tokens(Tokens.of([short]), 30)
    assert policy.counters == {"a": 180, "b": 180}  # tokens within the prediction are prepaid
    long.generated = 50
    policy.on_tokens(Tokens.of([long]), 10)
    policy.on_finish(long, 1.0)
    policy.on_finish(short, 1.0)
    assert policy.counters == {"a": 180 + 2 * 10, "b": 180 - 2 * 10}  # beyond: charged; short: refunded
    assert predictor.observed == [0, 1] and policy.describe()["predictor"] == {"name": "fixed-40"}


class CountingSession:
    """A session that counts the calls the policy makes."""

    def __init__(self, session):
        self.session, self.predicted, self.observed = session, 0, 0

    def predict_one(self, req):
        self.predicted += 1
        return self.session.predict_one(req)

    def observe(self, req):
        self.observed += 1
        self.session.observe(req)


def test_vtc_predict_with_a_bundle_session_charges_its_prediction_in_a_replay(trained):
    bundle = predictors.load_bundle(trained.bundle)
    req = Request(0, "a", 0.0, 120, 80, prompt="w1 w2 list")
    policy = VTCPredict(predictor=bundle.session())
    policy.on_arrival(req, 0.0)
    policy.admit(policy.select(lambda _: True), 0.0, resumed=False)
    predicted = bundle.session().predict_one(req).output_tokens
    assert policy.counters["a"] == pytest.approx(120 + 2 * predicted)
    config, preset = engine_config(PRESET)
    session = CountingSession(bundle.session())
    requests, _ = Simulator(config, preset.cost_model, VTCPredict(predictor=session)).run(experts_workload(n=80))
    assert requests.column("status").to_pylist() == ["finished"] * 80
    assert session.predicted == session.observed == 80
