"""A trained predictor bundle on disk, its validation, and the inference session.

A bundle is a directory with two files:

* ``manifest.json``: format and version, targets, features, the router's rule and
  thresholds, the model family, the training data (runs, fingerprint, split), the engine
  preset, the held-out metrics, and the SHA-256 of ``models.npz``;
* ``models.npz``: numeric arrays only (``numpy.load(allow_pickle=False)``), named
  ``<group>.<model>.<array>`` for group ``request``/``step`` and model ``mope`` (one slice
  per expert) or ``single`` (one slice): the trees of forest.py and, for requests, each
  expert's text model (``text_weights``, ``text_bias``).

Nothing in a bundle is executed.  ``load_bundle`` checks every field, file, array name,
dtype, shape and index before use and raises ``InputError`` naming the bundle and what is
wrong; loading a bundle for another engine preset only warns.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from engine.results import atomic_directory, atomic_write_json
from predictors.features import NO_HISTORY, REQUEST_FEATURES, STEP_FEATURES
from predictors.forest import Forest, tree_shapes
from predictors.text import (
    CATEGORIES,
    FOLLOWUP_TOKENS,
    NGRAM_BUCKETS,
    SIGNALS,
    category,
    text_features,
    tfidf_score,
)
from traces.errors import InputError
from traces.request import Request

FORMAT = "equinox-mope"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
MODELS = "models.npz"
EXPERTS = {"request": len(CATEGORIES), "step": 3}  # request experts: one per prompt category
QUANTILES = (0.5, 0.75, 0.8, 0.9, 0.95, 0.99)  # the calibrated quantile factors of the output length
MAX_TREES, MAX_DEPTH = 10_000, 12  # bounds on what a manifest may declare
REQUEST_TARGETS = ("output_tokens", "ttft_s", "tpot_s", "e2e_s")
STEP_TARGETS = ("step_s", "utilization")
GROUPS = {"request": (REQUEST_TARGETS, REQUEST_FEATURES), "step": (STEP_TARGETS, STEP_FEATURES)}
FLOORS = {"output_tokens": 1.0}  # smallest prediction per target; 0 for the others


class Predictions(NamedTuple):
    """Per-request predictions for a batch, one array each."""

    output_tokens: np.ndarray
    ttft_s: np.ndarray
    tpot_s: np.ndarray
    e2e_s: np.ndarray


class Prediction(NamedTuple):
    """One request's predictions."""

    output_tokens: float
    ttft_s: float
    tpot_s: float
    e2e_s: float


class StepPrediction(NamedTuple):
    """Predictions for candidate batches (engine steps): seconds, tokens per second, MFU."""

    step_s: np.ndarray
    tokens_per_s: np.ndarray
    utilization: np.ndarray


def route(thresholds, x):
    """The router: expert i is the first with ``x <= thresholds[i]``, else the last."""
    return np.searchsorted(thresholds, x, side="left")


def array_shapes(group: str, model: str, trees: int, depth: int) -> dict[str, tuple[tuple[int, ...], type]]:
    """The arrays a group's model has, with their shapes and dtypes."""
    targets, _ = GROUPS[group]
    e, k = (EXPERTS[group] if model == "mope" else 1), len(targets)
    inner, leaves = tree_shapes(trees, depth)
    shapes = {
        "feature": ((e, k, *inner), np.int32),
        "threshold": ((e, k, *inner), np.float64),
        "value": ((e, k, *leaves), np.float64),
        "init": ((e, k), np.float64),
    }
    if group == "request":
        shapes["quantile_factor"] = ((e, len(QUANTILES)), np.float64)
    return {f"{group}.{model}.{name}": spec for name, spec in shapes.items()}


TEXT_ARRAYS = {
    "text.idf": ((NGRAM_BUCKETS,), np.float64),
    "text.weights": ((NGRAM_BUCKETS,), np.float64),
    "text.bias": ((1,), np.float64),
}


def expected_arrays(model: dict) -> dict[str, tuple[tuple[int, ...], type]]:
    """Every array of a bundle whose manifest's ``model`` gives ``<group>.trees`` and ``.depth``."""
    out = dict(TEXT_ARRAYS)
    for g in GROUPS:
        for m in ("mope", "single"):
            out.update(array_shapes(g, m, model[g]["trees"], model[g]["depth"]))
    return out


# -- writing -------------------------------------------------------------------------------


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz archive with fixed timestamps and order, so equal arrays give equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def save_bundle(out_dir: Path, manifest: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write a bundle directory atomically; the manifest gets the checksum of the models file."""
    data = npz_bytes(arrays)
    manifest = {**manifest, "files": {MODELS: hashlib.sha256(data).hexdigest()}}
    with atomic_directory(Path(out_dir)) as tmp:
        (tmp / MODELS).write_bytes(data)
        atomic_write_json(manifest, tmp / MANIFEST)


# -- reading -------------------------------------------------------------------------------


class Bundle:
    """A validated bundle: ``manifest`` (dict) and ``arrays`` (name -> ndarray)."""

    def __init__(self, path: Path, manifest: dict, arrays: dict[str, np.ndarray]):
        self.path = path
        self.manifest = manifest
        self.arrays = arrays

    @property
    def preset(self) -> str:
        return self.manifest["engine"]["preset"]

    def model_arrays(self, group: str, model: str) -> dict[str, np.ndarray]:
        """One model's arrays by short name (``feature``, ..., ``text_bias``)."""
        prefix = f"{group}.{model}."
        return {k.removeprefix(prefix): v for k, v in self.arrays.items() if k.startswith(prefix)}

    def text_model(self) -> tuple[list, list, float]:
        """The TF-IDF text model as Python lists (idf, weights) and its bias, made once per bundle."""
        if getattr(self, "_text_lists", None) is None:
            arrays = self.arrays
            self._text_lists = (
                arrays["text.idf"].tolist(),
                arrays["text.weights"].tolist(),
                float(arrays["text.bias"][0]),
            )
        return self._text_lists

    def session(self, model: str = "mope", conversations=None) -> "Session":
        """A fresh inference session (its own client and conversation history): ``mope`` or the
        ``single`` baseline; ``conversations`` (optional) is the workload's ``conversation_id``
        per row, for requests whose ``row`` is set (the simulator's)."""
        if model not in ("mope", "single"):
            raise InputError(f"unknown model {model!r}; expected mope or single", source=str(self.path))
        return Session(self, model, conversations)


def load_bundle(path, preset: str | None = None) -> Bundle:
    """Load and check a bundle; warn when it was trained for another engine preset than ``preset``."""
    path = Path(path)
    where = str(path)
    if not path.is_dir():
        raise InputError("expected a predictor bundle directory (manifest.json, models.npz)", source=where)
    manifest = _read_manifest(path / MANIFEST)
    models = path / MODELS
    if not models.is_file():
        raise InputError(f"missing file {MODELS}; the bundle is incomplete", source=where)
    data = models.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest["files"].get(MODELS):
        raise InputError(f"{MODELS} does not match the checksum in {MANIFEST}: the file was changed", source=where)
    arrays = _read_arrays(data, expected_arrays(manifest["model"]), where)
    bundle = Bundle(path, manifest, arrays)
    if preset is not None and preset != bundle.preset:
        warnings.warn(
            f"{where}: predictors trained on engine preset {bundle.preset!r}, used with {preset!r}; "
            "latency and step predictions may not carry over",
            UserWarning,
            stacklevel=2,
        )
    return bundle


def _read_manifest(path: Path) -> dict:
    where = str(path)
    if not path.is_file():
        raise InputError("missing file; not a predictor bundle (expected manifest.json)", source=where)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"expected a JSON object: {exc}", source=where) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"not a predictor bundle manifest (expected format {FORMAT!r})", source=where)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"bundle format version {manifest.get('format_version')!r}; this Equinox reads version {FORMAT_VERSION}",
            source=where,
        )
    targets = (*REQUEST_TARGETS, *STEP_TARGETS)
    checks = [
        (
            _numbers([_get(manifest, "priors", t) for t in targets], len(targets)),
            "priors must give a number per target",
        ),
        (isinstance(_get(manifest, "engine", "preset"), str), "engine.preset must be a preset name"),
        (isinstance(manifest.get("files"), dict), "files must map file names to checksums"),
        (
            _get(manifest, "router", "request", "categories") == list(CATEGORIES),
            f"router.request.categories must be {list(CATEGORIES)}",
        ),
        (_get(manifest, "quantiles") == list(QUANTILES), f"quantiles must be {list(QUANTILES)}"),
    ]
    for group, (targets, features) in GROUPS.items():
        checks += [
            (_get(manifest, "targets", group) == list(targets), f"targets.{group} must be {list(targets)}"),
            (_get(manifest, "features", group) == list(features), f"features.{group} must be {list(features)}"),
            (
                _whole(_get(manifest, "model", group, "trees"), 1, MAX_TREES),
                f"model.{group}.trees must be a whole number 1..{MAX_TREES}",
            ),
            (
                _whole(_get(manifest, "model", group, "depth"), 1, MAX_DEPTH),
                f"model.{group}.depth must be a whole number 1..{MAX_DEPTH}",
            ),
        ]
    thresholds = _get(manifest, "router", "step", "thresholds")
    checks.append(
        (
            _numbers(thresholds, EXPERTS["step"] - 1) and thresholds == sorted(thresholds),
            f"router.step.thresholds must be {EXPERTS['step'] - 1} non-decreasing numbers",
        )
    )
    for ok, message in checks:
        if not ok:
            raise InputError(message, source=where)
    return manifest


def _get(record, *keys):
    """``record[k1][k2]...``, or None where a level is missing or not an object."""
    for key in keys:
        record = record.get(key) if isinstance(record, dict) else None
    return record


def _whole(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _numbers(values, count: int) -> bool:
    return (
        isinstance(values, list)
        and len(values) == count
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values)
    )


def _read_arrays(data: bytes, expected: dict, where: str) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{MODELS} is not a readable numeric .npz archive ({exc})", source=where) from None
    if set(arrays) != set(expected):
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        raise InputError(f"{MODELS}: missing arrays {missing}, unexpected arrays {extra}", source=where)
    for name, (shape, dtype) in expected.items():
        a = arrays[name]
        if a.shape != shape or a.dtype != dtype:
            raise InputError(
                f"{MODELS}: array {name} is {a.dtype}{list(a.shape)}, expected {np.dtype(dtype)}{list(shape)}",
                source=where,
            )
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise InputError(f"{MODELS}: array {name} has non-finite values", source=where)
        if name.endswith(".feature") and not a.size:
            continue
        width = len(GROUPS[name.split(".")[0]][1]) if name.endswith(".feature") else 0
        if name.endswith(".feature") and ((a < 0) | (a >= width)).any():
            raise InputError(f"{MODELS}: array {name} names features outside 0..{width - 1}", source=where)
    return arrays


# -- inference -----------------------------------------------------------------------------


FOLLOWUP, OTHER = CATEGORIES.index("followup"), CATEGORIES.index("other")
_NO_TEXT = (0.0,) * (len(SIGNALS) - 4)  # the signals after history_tokens without text


class RequestForest:
    """The request targets' trees: output length (all its trees) and the latency targets (the
    ``model.latency_and_steps`` trees and depth that ``fit_trees`` padded to the request shape)."""

    def __init__(self, arrays: dict[str, np.ndarray], manifest: dict):
        small = manifest["model"].get("latency_and_steps", {})
        self.output = Forest(arrays, targets=[0])
        self.latency = Forest(
            arrays, targets=list(range(1, len(REQUEST_TARGETS))), **{k: small.get(k) for k in ("trees", "depth")}
        )

    def predict(self, X: np.ndarray, expert: np.ndarray) -> np.ndarray:
        return np.column_stack([self.output.predict(X, expert), self.latency.predict(X, expert)])


class Session:
    """Predictions for the scheduler's hot path, with the client and conversation history of one replay.

    ``predict(reqs)`` and ``predict_one(req)`` use only what a Request carries before it
    runs and the client and conversation history at the call; ``observe(req)`` records a
    finished request.  A request's prompt features and expert are computed at first sight
    and kept until it is observed.

    A request's conversation is ``conversations[req.row]`` when the session was given the
    workload's ``conversation_id`` column (``Bundle.session(conversations=...)``; the replay
    does), else its ``conversation_id`` attribute if it has one, else none: then the
    conversation features say no earlier reply finished.

    ``arrive(req)`` and ``output_tokens(req)`` are the scheduler's amortised path (Equinox):
    ``arrive`` takes a request's features at its arrival, the history included (what
    features.py defines for training: requests finished before it arrived), and
    ``output_tokens`` returns its predicted output length, predicting every arrived request
    not predicted yet in one batch, for the output length alone.  The feature rows are
    dropped once predicted, a prediction once taken.  ``output_quantile(req, q)`` is the
    calibrated q-quantile of its output length (the central prediction times the factor
    calibrated on held-out requests of its expert).
    """

    BATCH_ROWS = 1024  # largest batch predicted at once (bounds the temporary arrays; cache-sized)

    def __init__(self, bundle: Bundle, model: str, conversations=None):
        self.bundle = bundle
        self.model = model
        self._mope = model == "mope"
        request = bundle.model_arrays("request", model)
        self._forest = RequestForest(request, bundle.manifest)
        self._step_forest = Forest(bundle.model_arrays("step", model))
        self._idf, self._text_weights, self._text_bias = bundle.text_model()
        self._factors = request["quantile_factor"]
        router = bundle.manifest["router"]
        self._step_thresholds = np.array(router["step"]["thresholds"]) if self._mope else None
        self._floors = np.array([FLOORS.get(t, 0.0) for t in REQUEST_TARGETS])
        self._prior = float(bundle.manifest["priors"]["output_tokens"])
        self._conversation_of_row = conversations
        self._history: dict[str, list] = {}  # client -> [sum of output tokens, finished requests]
        self._conversations: dict[object, list] = {}  # conversation -> [last, sum, max, finished]
        self._seen: dict[object, tuple] = {}  # request_id -> (expert, static features)
        # the amortised path: output lengths only, features taken at arrival, predicted in batches
        self._output_forest = self._forest.output
        self._output_floor = FLOORS.get("output_tokens", 0.0)
        self._arrived_ids: list = []  # arrived requests not predicted yet: ids, experts, feature rows
        self._arrived_experts: list[int] = []
        self._arrived: list = []  # their feature rows one after the other (a flat list converts faster)
        self._output: dict[object, float] = {}  # request_id -> predicted output tokens, until taken
        self._experts: dict[object, int] = {}  # request_id -> expert, for output_quantile
        self._taken: dict[object, float] = {}  # request_id -> the prediction output_tokens gave, until it finishes

    def _static(self, req: Request) -> tuple:
        seen = self._seen.get(req.request_id)
        if seen is None:
            seen = self._seen[req.request_id] = self._prompt_features(req)
        return seen

    def _prompt_features(self, req: Request) -> tuple[int, tuple]:
        """A request's expert and the features that depend neither on the client nor on the
        conversation history: ``prompt_tokens``, the arrival state, then the text's signals
        and score (what an empty prompt gives without text)."""
        if not req.prompt:  # what text_features, category and tfidf_score give without text
            tokens = float(req.prompt_tokens)
            expert = (FOLLOWUP if tokens > FOLLOWUP_TOKENS else OTHER) if self._mope else 0
            values = (0.0, 0.0, 0.0, max(0.0, tokens), *_NO_TEXT)
            return expert, (req.prompt_tokens, *req.arrival_state, *values, self._text_bias)
        values, buckets, counts = text_features(req.prompt, req.prompt_tokens)
        expert = category(values) if self._mope else 0
        score = tfidf_score(buckets, counts, self._idf, self._text_weights, self._text_bias)
        return expert, (req.prompt_tokens, *req.arrival_state, *values, score)

    def conversation(self, req: Request):
        """The request's conversation id, or None (see the class docstring)."""
        if self._conversation_of_row is not None and req.row is not None and req.row < len(self._conversation_of_row):
            return self._conversation_of_row[req.row]
        return getattr(req, "conversation_id", None)

    def _dynamic(self, req: Request) -> tuple:
        """Client then conversation history features, as observed so far."""
        total, count = self._history.get(req.client, (0, 0))
        conv = self._conversations.get(self.conversation(req))
        if conv is None:
            return (total / count if count else self._prior, count, NO_HISTORY, NO_HISTORY, NO_HISTORY, 0)
        last, conv_total, longest, finished = conv
        return (total / count if count else self._prior, count, last, conv_total / finished, longest, finished)

    def features(self, reqs: list[Request]) -> tuple[np.ndarray, np.ndarray]:
        """The float32 feature matrix (REQUEST_FEATURES) and each request's expert."""
        experts, rows = [], []
        for req in reqs:
            expert, static = self._static(req)
            experts.append(expert)
            rows.append((*static[:5], *self._dynamic(req), *static[5:]))
        X = np.array(rows, dtype=np.float32).reshape(len(rows), len(REQUEST_FEATURES))
        return X, np.array(experts, dtype=np.intp)

    def predict(self, reqs: list[Request]) -> Predictions:
        X, experts = self.features(reqs)
        out = np.maximum(self._forest.predict(X, experts), self._floors)
        return Predictions(*out.T)

    def predict_one(self, req: Request) -> Prediction:
        return Prediction(*(float(v[0]) for v in self.predict([req])))

    # -- the amortised path --------------------------------------------------------------
    def arrive(self, req: Request) -> None:
        """Take ``req``'s features now, at its arrival (``req.arrival_state`` must be set): the
        client and conversation history is what ``observe`` has recorded so far.  Its output
        length is predicted with the next batch (``output_tokens``)."""
        expert, static = self._seen.pop(req.request_id, None) or self._prompt_features(req)
        self._arrived.extend((*static[:5], *self._dynamic(req), *static[5:]))
        self._arrived_experts.append(expert)
        self._arrived_ids.append(req.request_id)
        self._experts[req.request_id] = expert

    def output_tokens(self, req: Request) -> float:
        """The predicted output length of ``req``, from its features at arrival; a request that
        did not ``arrive`` takes its features now.  When it is not predicted yet, every arrived
        request is predicted in one batch.  The prediction is then forgotten."""
        value = self._output.pop(req.request_id, None)
        if value is None:
            if not self._arrived_ids:
                self.arrive(req)
            self.predict_arrived()
            value = self._output.pop(req.request_id, None)
            if value is None:  # it never arrived
                self.arrive(req)
                self.predict_arrived()
                value = self._output.pop(req.request_id)
        self._taken[req.request_id] = value
        return value

    def output_quantile(self, req: Request, q: float = 0.9) -> float:
        """The calibrated ``q``-quantile (0.5 <= q <= 0.99) of ``req``'s output length: its
        central prediction (taken as ``output_tokens`` takes it, unless one is waiting) times
        its expert's factor for ``q`` (linear between the calibrated ``QUANTILES``)."""
        if not QUANTILES[0] <= q <= QUANTILES[-1]:
            raise ValueError(f"q must be between {QUANTILES[0]} and {QUANTILES[-1]}, got {q}")
        central = self._output.get(req.request_id, self._taken.get(req.request_id))
        if central is None:
            central = self.output_tokens(req)
            self._output[req.request_id] = central  # output_tokens may still take it
        expert = self._experts.get(req.request_id)
        if expert is None:
            expert = self._static(req)[0]
        factor = float(np.interp(q, QUANTILES, self._factors[expert]))
        return max(central * factor, self._output_floor)

    def forget(self, req: Request) -> None:
        """Drop ``req``'s features and prediction, if it has any (it left without being admitted)."""
        self._output.pop(req.request_id, None)
        self._seen.pop(req.request_id, None)
        self._experts.pop(req.request_id, None)
        self._taken.pop(req.request_id, None)
        if self._arrived_ids and req.request_id in self._arrived_ids:
            k = self._arrived_ids.index(req.request_id)
            width = len(REQUEST_FEATURES)
            del self._arrived_ids[k], self._arrived_experts[k], self._arrived[k * width : (k + 1) * width]

    def predict_arrived(self) -> None:
        """Predict the output length of every arrived request not predicted yet, and drop their rows."""
        values, experts, ids = self._arrived, self._arrived_experts, self._arrived_ids
        self._arrived, self._arrived_experts, self._arrived_ids = [], [], []
        width, batch = len(REQUEST_FEATURES), self.BATCH_ROWS
        for start in range(0, len(ids), batch):
            end = start + batch
            X = np.array(values[start * width : end * width], dtype=np.float32).reshape(-1, width)
            out = self._output_forest.predict(X, np.array(experts[start:end], dtype=np.intp))
            self._output.update(zip(ids[start:end], np.maximum(out[:, 0], self._output_floor).tolist()))

    def observe(self, req: Request) -> None:
        """Record a finished request: its output length joins its client's and its conversation's history."""
        history = self._history.setdefault(req.client, [0, 0])
        history[0] += req.generated
        history[1] += 1
        key = self.conversation(req)
        if key is not None:
            conv = self._conversations.get(key)
            if conv is None:
                self._conversations[key] = [req.generated, req.generated, req.generated, 1]
            else:
                conv[0] = req.generated
                conv[1] += req.generated
                conv[2] = max(conv[2], req.generated)
                conv[3] += 1
        self._seen.pop(req.request_id, None)
        self._output.pop(req.request_id, None)
        self._experts.pop(req.request_id, None)
        self._taken.pop(req.request_id, None)

    def step(self, prefill_tokens, decode_tokens, running, kv_used) -> StepPrediction:
        """Predictions for candidate batches; arguments are numbers or equal-length arrays."""
        X = np.column_stack(np.broadcast_arrays(prefill_tokens, decode_tokens, running, kv_used)).astype(np.float32)
        step_s, utilization = self._step(X).T
        tokens = X[:, 0].astype(np.float64) + X[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            tokens_per_s = np.where(step_s > 0, tokens / step_s, 0.0)
        return StepPrediction(step_s, tokens_per_s, utilization)

    def step_time(self, prefill_tokens: int, decode_tokens: int, running: int, kv_used: float) -> float:
        """Predicted seconds of one engine step over this batch."""
        X = np.array([[prefill_tokens, decode_tokens, running, kv_used]], dtype=np.float32)
        return float(self._step(X)[0, 0])

    def _step(self, X: np.ndarray) -> np.ndarray:
        experts = np.zeros(len(X), dtype=np.intp)
        if self._step_thresholds is not None:
            experts = route(self._step_thresholds, X[:, 0])
        return np.maximum(self._step_forest.predict(X, experts), 0.0)

    def describe(self) -> dict:
        """For run.json: which bundle and model made the predictions."""
        training = self.bundle.manifest.get("training", {})
        return {
            "name": f"mope-bundle:{self.model}",
            "bundle": str(self.bundle.path),
            "fingerprint": training.get("fingerprint"),
            "preset": self.bundle.preset,
        }
