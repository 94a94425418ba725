"""Gradient-boosted trees as plain arrays: fit with scikit-learn, predict with numpy.

``fit_trees`` trains scikit-learn's ``GradientBoostingRegressor`` (seeded) with the Huber
loss: squared error near the fit, absolute error in the tails, so that a few very long
replies or queueing delays do not drag every prediction.  (Absolute-error loss fails on
integer targets: scikit-learn's gradient at a zero residual is -1, so when most rows are
fitted exactly the trees stop seeing the rest.)  The trees, read through scikit-learn's
public ``tree_`` attributes, are exported as full binary trees of depth D in heap order:
node ``i``'s children are ``2i+1`` (left, taken when ``x[feature] <= threshold``) and
``2i+2``.  Per tree that is ``2^D - 1`` split nodes (``feature``, ``threshold``) and ``2^D``
leaf values (already multiplied by the learning rate); a leaf that scikit-learn placed
above the last level is copied into every leaf below it, its splits being dummies
(feature 0, threshold 0).

``Forest`` walks ``E`` experts x ``K`` targets x ``T`` trees at once, each row of a batch
in the trees of its own expert.  Features are float32, as scikit-learn compares them, so
the arrays predict what the fitted models predict.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import GradientBoostingRegressor, HistGradientBoostingRegressor

TREES = 50  # latency and step targets: scikit-learn GradientBoostingRegressor, Huber loss
DEPTH = 3
LEARNING_RATE = 0.2
OUTPUT_TREES = 100  # output length: HistGradientBoostingRegressor, absolute error (the median)
OUTPUT_DEPTH = 4
OUTPUT_LEARNING_RATE = 0.1
EXPERT_TREES = 30  # an output-length expert's own trees, fitted to the single model's residuals
EXPERT_DEPTH = 3
EXPERT_LEARNING_RATE = 0.1


def tree_shapes(trees: int, depth: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes of one target's split arrays (``feature``, ``threshold``) and leaf values."""
    return (trees, 2**depth - 1), (trees, 2**depth)


def empty_trees(trees: int, depth: int) -> dict[str, np.ndarray]:
    """``trees`` trees that predict 0 (dummy splits, zero leaves), and init 0."""
    inner_shape, leaf_shape = tree_shapes(trees, depth)
    return {
        "feature": np.zeros(inner_shape, dtype=np.int32),
        "threshold": np.zeros(inner_shape),
        "value": np.zeros(leaf_shape),
        "init": np.float64(0.0),
    }


def _export(out: dict, t: int, depth: int, split, scale: float) -> None:
    """Tree ``t`` into ``out``'s heap arrays; ``split(node)`` gives (feature, threshold, left,
    right, leaf value) with left < 0 at a leaf.  A shallower tree is padded: a leaf above the
    last level is copied into every leaf below it, its splits dummies (feature 0, threshold 0)."""
    inner = 2**depth - 1

    def place(node: int, slot: int, level: int) -> None:
        feature, threshold, left, right, value = split(node)
        if level == depth:
            if left >= 0:
                raise ValueError(f"a tree deeper than {depth}")
            out["value"][t, slot - inner] = scale * value
            return
        leaf = left < 0
        if not leaf:
            out["feature"][t, slot] = feature
            out["threshold"][t, slot] = threshold
        place(node if leaf else left, 2 * slot + 1, level + 1)
        place(node if leaf else right, 2 * slot + 2, level + 1)

    place(0, 0, 0)


def fit_trees(X: np.ndarray, y: np.ndarray, seed: int, trees: int = TREES, depth: int = DEPTH) -> dict[str, np.ndarray]:
    """One target's ``TREES`` trees of depth ``DEPTH`` (Huber loss), as ``trees`` x ``depth``
    arrays (the rest padded): ``feature``, ``threshold``, ``value``, ``init``."""
    model = GradientBoostingRegressor(
        loss="huber", n_estimators=TREES, max_depth=DEPTH, learning_rate=LEARNING_RATE, random_state=seed
    ).fit(X, y)
    out = empty_trees(trees, depth)
    for t, estimator in enumerate(model.estimators_[:, 0]):
        tree = estimator.tree_
        _export(
            out,
            t,
            depth,
            lambda n, tree=tree: (
                tree.feature[n],
                tree.threshold[n],
                tree.children_left[n],
                tree.children_right[n],
                tree.value[n, 0, 0],
            ),
            LEARNING_RATE,
        )
    out["init"] = np.float64(model.init_.constant_.ravel()[0])
    return out


def median_booster(seed: int, count: int, depth: int, rate: float) -> HistGradientBoostingRegressor:
    """``count`` gradient-boosted trees of depth ``depth`` minimising the absolute error, with no early
    stopping (so the same data and seed give the same trees)."""
    return HistGradientBoostingRegressor(
        loss="absolute_error",
        max_iter=count,
        max_depth=depth,
        max_leaf_nodes=2**depth,
        learning_rate=rate,
        early_stopping=False,
        random_state=seed,
    )


def fit_median_trees(
    X: np.ndarray, y: np.ndarray, seed: int, count: int, depth: int, rate: float, trees: int, first: int = 0
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``count`` trees of depth ``depth`` minimising the absolute error (scikit-learn
    HistGradientBoostingRegressor, no early stopping, so deterministic), exported into
    slots ``first``.. of ``trees`` x ``OUTPUT_DEPTH`` arrays; and its predictions on ``X``."""
    model = median_booster(seed, count, depth, rate).fit(X, y)
    out = empty_trees(trees, OUTPUT_DEPTH)
    for t, (predictor,) in enumerate(model._predictors):  # the fitted trees (leaf values shrunk)
        nodes = predictor.nodes
        _export(
            out,
            first + t,
            OUTPUT_DEPTH,
            lambda n, nodes=nodes: (
                nodes["feature_idx"][n],
                nodes["num_threshold"][n],
                -1 if nodes["is_leaf"][n] else nodes["left"][n],
                nodes["right"][n],
                nodes["value"][n],
            ),
            1.0,
        )
    out["init"] = np.float64(np.asarray(model._baseline_prediction).ravel()[0])
    return out, model.predict(X)


class Forest:
    """Arrays ``feature``/``threshold`` (E, K, T, 2^D - 1), ``value`` (E, K, T, 2^D), ``init`` (E, K).

    ``targets`` (indices into K) keeps only those targets' trees: a forest that walks fewer trees
    and predicts, for them, exactly what the whole forest does; ``trees`` and ``depth`` keep the
    first trees and levels, for trees that ``fit_trees`` padded (exactly what the padded ones predict)."""

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        targets: list[int] | None = None,
        trees: int | None = None,
        depth: int | None = None,
    ):
        if targets is not None:
            arrays = {name: arrays[name][:, targets] for name in ("feature", "threshold", "value", "init")}
        if trees is not None or depth is not None:  # the trees were padded (fit_trees): walk only what they hold
            full = (arrays["feature"].shape[-1] + 1).bit_length() - 1
            trees, depth = trees or arrays["feature"].shape[2], depth or full
            inner, step = 2**depth - 1, 2 ** (full - depth)
            arrays = {
                "feature": arrays["feature"][:, :, :trees, :inner],
                "threshold": arrays["threshold"][:, :, :trees, :inner],
                "value": arrays["value"][:, :, :trees, ::step],
                "init": arrays["init"],
            }
        experts, self.targets, self.trees, inner = arrays["feature"].shape
        self.depth = (inner + 1).bit_length() - 1
        tree_ids = np.arange(experts * self.targets * self.trees, dtype=np.intp).reshape(experts, -1)
        self.inner_base = tree_ids * inner  # each tree's root, per expert: (E, K * T)
        self.feature = arrays["feature"].astype(np.intp).ravel()
        self.threshold = arrays["threshold"].ravel()
        self.value = arrays["value"].ravel()
        self.init = arrays["init"]
        # Split node g (tree t, node n) -> its left child: split node t * inner + 2n + 1, or on the
        # last level leaf t * (inner + 1) + 2n + 1 - inner; the right child is the next one.
        tree, node = np.divmod(np.arange(len(self.feature), dtype=np.intp), inner)
        child = 2 * node + 1
        self.left = np.where(child < inner, tree * inner + child, tree * (inner + 1) + child - inner)

    def predict(self, X: np.ndarray, expert: np.ndarray) -> np.ndarray:
        """(B, K) predictions for float32 features ``X`` (B, F), row b in expert ``expert[b]``'s trees."""
        n, width = X.shape
        flat = X.astype(np.float64).ravel()  # exact; compared with float64 thresholds either way
        at = self.inner_base[expert]  # (B, K * T): each tree's current node, then its leaf
        if n == 1:
            for _ in range(self.depth):
                at = self.left[at] + (flat[self.feature[at]] > self.threshold[at])
        else:
            row = (np.arange(n, dtype=np.intp) * width)[:, None]
            for _ in range(self.depth):
                at = self.left[at] + (flat[row + self.feature[at]] > self.threshold[at])
        leaves = self.value[at]
        return leaves.reshape(n, self.targets, self.trees).sum(axis=2) + self.init[expert]
