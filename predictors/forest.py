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
from sklearn.ensemble import GradientBoostingRegressor

TREES = 50
DEPTH = 3
LEARNING_RATE = 0.2


def tree_shapes(trees: int, depth: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes of one target's split arrays (``feature``, ``threshold``) and leaf values."""
    return (trees, 2**depth - 1), (trees, 2**depth)


def fit_trees(X: np.ndarray, y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """One target's ``TREES`` trees of depth ``DEPTH``: ``feature``, ``threshold``, ``value``, ``init``."""
    model = GradientBoostingRegressor(
        loss="huber", n_estimators=TREES, max_depth=DEPTH, learning_rate=LEARNING_RATE, random_state=seed
    ).fit(X, y)
    inner_shape, leaf_shape = tree_shapes(TREES, DEPTH)
    inner = inner_shape[1]
    feature = np.zeros(inner_shape, dtype=np.int32)
    threshold = np.zeros(inner_shape)
    value = np.zeros(leaf_shape)
    for t, estimator in enumerate(model.estimators_[:, 0]):
        tree = estimator.tree_

        def place(node: int, slot: int, depth: int) -> None:
            if depth == DEPTH:
                value[t, slot - inner] = LEARNING_RATE * tree.value[node, 0, 0]
                return
            leaf = tree.children_left[node] < 0
            if not leaf:
                feature[t, slot] = tree.feature[node]
                threshold[t, slot] = tree.threshold[node]
            place(node if leaf else tree.children_left[node], 2 * slot + 1, depth + 1)
            place(node if leaf else tree.children_right[node], 2 * slot + 2, depth + 1)

        place(0, 0, 0)
    init = np.float64(model.init_.constant_.ravel()[0])
    return {"feature": feature, "threshold": threshold, "value": value, "init": init}


class Forest:
    """Arrays ``feature``/``threshold`` (E, K, T, 2^D - 1), ``value`` (E, K, T, 2^D), ``init`` (E, K).

    ``targets`` (indices into K) keeps only those targets' trees: a forest that walks fewer trees
    and predicts, for them, exactly what the whole forest does."""

    def __init__(self, arrays: dict[str, np.ndarray], targets: list[int] | None = None):
        if targets is not None:
            arrays = {name: arrays[name][:, targets] for name in ("feature", "threshold", "value", "init")}
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
