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
from bisect import bisect_left
from pathlib import Path
from typing import NamedTuple

import numpy as np

from engine.request import Request
from engine.results import atomic_directory, atomic_write_json
from predictors.features import REQUEST_FEATURES, STEP_FEATURES, TEXT_BUCKETS, text_buckets, text_score
from predictors.forest import Forest, tree_shapes
from traces.errors import InputError

FORMAT = "equinox-mope"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODELS = "models.npz"
EXPERTS = 3
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
    e, k = (EXPERTS if model == "mope" else 1), len(targets)
    inner, leaves = tree_shapes(trees, depth)
    shapes = {
        "feature": ((e, k, *inner), np.int32),
        "threshold": ((e, k, *inner), np.float64),
        "value": ((e, k, *leaves), np.float64),
        "init": ((e, k), np.float64),
    }
    if group == "request":
        shapes["text_weights"] = ((e, TEXT_BUCKETS), np.float64)
        shapes["text_bias"] = ((e,), np.float64)
    return {f"{group}.{model}.{name}": spec for name, spec in shapes.items()}


def expected_arrays(trees: int, depth: int) -> dict[str, tuple[tuple[int, ...], type]]:
    return {k: v for g in GROUPS for m in ("mope", "single") for k, v in array_shapes(g, m, trees, depth).items()}


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

    def session(self, model: str = "mope") -> "Session":
        """A fresh inference session (its own client history): ``mope`` or the ``single`` baseline."""
        if model not in ("mope", "single"):
            raise InputError(f"unknown model {model!r}; expected mope or single", source=str(self.path))
        return Session(self, model)


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
    arrays = _read_arrays(data, expected_arrays(manifest["model"]["trees"], manifest["model"]["depth"]), where)
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
        (_whole(_get(manifest, "model", "trees"), 1, MAX_TREES), f"model.trees must be a whole number 1..{MAX_TREES}"),
        (_whole(_get(manifest, "model", "depth"), 1, MAX_DEPTH), f"model.depth must be a whole number 1..{MAX_DEPTH}"),
    ]
    for group, (targets, features) in GROUPS.items():
        thresholds = _get(manifest, "router", group, "thresholds")
        checks += [
            (_get(manifest, "targets", group) == list(targets), f"targets.{group} must be {list(targets)}"),
            (_get(manifest, "features", group) == list(features), f"features.{group} must be {list(features)}"),
            (
                _numbers(thresholds, EXPERTS - 1) and thresholds == sorted(thresholds),
                f"router.{group}.thresholds must be {EXPERTS - 1} non-decreasing numbers",
            ),
        ]
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
        width = len(GROUPS[name.split(".")[0]][1])
        if name.endswith(".feature") and ((a < 0) | (a >= width)).any():
            raise InputError(f"{MODELS}: array {name} names features outside 0..{width - 1}", source=where)
    return arrays


# -- inference -----------------------------------------------------------------------------


class Session:
    """Predictions for the scheduler's hot path, with the client history of one replay.

    ``predict(reqs)`` and ``predict_one(req)`` use only what a Request carries before it
    runs and the client history at the call; ``observe(req)`` records a finished request.
    A request's prompt features and expert are computed at first sight and kept until it is
    observed.

    ``arrive(req)`` and ``output_tokens(req)`` are the scheduler's amortised path (Equinox):
    ``arrive`` takes a request's features at its arrival, the client history included (what
    features.py defines for training: requests finished before it arrived), and
    ``output_tokens`` returns its predicted output length, predicting every arrived request
    not predicted yet in one batch, for the output length alone.  The feature rows are
    dropped once predicted, and a prediction once taken.
    """

    BATCH_ROWS = 1024  # largest batch predicted at once (bounds the temporary arrays; cache-sized)

    def __init__(self, bundle: Bundle, model: str):
        self.bundle = bundle
        self.model = model
        request = bundle.model_arrays("request", model)
        self._forest = Forest(request)
        self._step_forest = Forest(bundle.model_arrays("step", model))
        self._text = list(zip(request["text_weights"], request["text_bias"].tolist()))
        router = bundle.manifest["router"]
        self._thresholds = np.array(router["request"]["thresholds"]) if model == "mope" else None
        self._step_thresholds = np.array(router["step"]["thresholds"]) if model == "mope" else None
        self._floors = np.array([FLOORS.get(t, 0.0) for t in REQUEST_TARGETS])
        self._prior = float(bundle.manifest["priors"]["output_tokens"])
        self._history: dict[str, list] = {}  # client -> [sum of output tokens, finished requests]
        self._seen: dict[object, tuple] = {}  # request_id -> (expert, static features)
        # the amortised path: output lengths only, features taken at arrival, predicted in batches
        self._output_forest = Forest(request, targets=[REQUEST_TARGETS.index("output_tokens")])
        self._output_floor = FLOORS.get("output_tokens", 0.0)
        self._threshold_list = None if self._thresholds is None else self._thresholds.tolist()
        self._arrived_ids: list = []  # arrived requests not predicted yet: ids, experts, feature rows
        self._arrived_experts: list[int] = []
        self._arrived: list = []  # their feature rows one after the other (a flat list converts faster)
        self._output: dict[object, float] = {}  # request_id -> predicted output tokens, until taken

    def _static(self, req: Request) -> tuple:
        seen = self._seen.get(req.request_id)
        if seen is None:
            seen = self._seen[req.request_id] = self._prompt_features(req)
        return seen

    def _prompt_features(self, req: Request) -> tuple[int, tuple]:
        """A request's expert and the features that do not depend on the client history."""
        if self._threshold_list is None:
            expert = 0
        else:  # route(): the first threshold >= prompt_tokens (searchsorted, side="left")
            expert = bisect_left(self._threshold_list, req.prompt_tokens)
        weights, bias = self._text[expert]
        if req.prompt:
            buckets = text_buckets(req.prompt)
            text = (len(buckets), text_score(buckets, weights, bias))
        else:
            text = (0, bias)  # what text_buckets and text_score give without text
        return expert, (req.prompt_tokens, *req.arrival_state, *text)

    def features(self, reqs: list[Request]) -> tuple[np.ndarray, np.ndarray]:
        """The float32 feature matrix (REQUEST_FEATURES) and each request's expert."""
        experts, rows = [], []
        for req in reqs:
            expert, static = self._static(req)
            total, count = self._history.get(req.client, (0, 0))
            experts.append(expert)
            rows.append((*static[:5], total / count if count else self._prior, count, *static[5:]))
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
        client history is what ``observe`` has recorded so far.  Its output length is predicted
        with the next batch (``output_tokens``)."""
        expert, static = self._seen.pop(req.request_id, None) or self._prompt_features(req)
        history = self._history.get(req.client)
        mean, count = (self._prior, 0) if history is None else (history[0] / history[1], history[1])
        self._arrived.extend((*static[:5], mean, count, *static[5:]))
        self._arrived_experts.append(expert)
        self._arrived_ids.append(req.request_id)

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
        return value

    def forget(self, req: Request) -> None:
        """Drop ``req``'s features and prediction, if it has any (it left without being admitted)."""
        self._output.pop(req.request_id, None)
        self._seen.pop(req.request_id, None)
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
        """Record a finished request: its output length joins its client's history."""
        history = self._history.setdefault(req.client, [0, 0])
        history[0] += req.generated
        history[1] += 1
        self._seen.pop(req.request_id, None)
        self._output.pop(req.request_id, None)

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
