"""A LightGBM forest as flat node arrays, walked by any array namespace (numpy, cupy, strict).

The GPU's scorer (``infer.scorer`` arrays, the default on ``--device=gpu``): onnxruntime's
TreeEnsemble has no CUDA kernel, so a forest exported to ONNX runs on the host even under
onnxruntime-gpu. Here every node of every tree is one entry of a few arrays (split feature,
threshold, children, missing-value rule, leaf value) and a batch walks them level by level:
each (row, tree) pair holds the index of the node it stands on, and one step moves every pair
to a child at once (``take`` and ``where`` over N x T pairs). A leaf is its own two children,
so pairs that arrive early stay put until the deepest tree is done. The walk is the same code
under numpy (CI: ``tests/test_forest.py`` against ``Booster.predict``, and under
``array_api_strict``) and under cupy on the device.

LightGBM's own decision rule, node by node (``Tree::NumericalDecision``): a NaN is read as 0
unless the node's missing type is NaN; a node whose missing type is Zero sends |x| <= 1e-35,
and one whose missing type is NaN sends NaN, the node's default way; every other value goes
left when x <= threshold. Thresholds, leaf values and the sum over trees are float64 as in
LightGBM, so raw scores agree with ``Booster.predict(raw_score=True)`` to the rounding of the
sum's order (~1e-15), and the float32 probabilities to one unit in the last place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from fraudpipe.devices import CPU, Device, to_numpy

_ZERO = 1e-35  # LightGBM's kZeroThreshold
_MISSING = {"None": 0, "Zero": 1, "NaN": 2}
# (row, tree) pairs walked at once: bounds the walk's memory (about 60 bytes a pair).
CHUNK_PAIRS = 1 << 22


@dataclass(frozen=True)
class Nodes:
    """Every node of a forest (host arrays); tree t starts at roots[t]."""

    feature: npt.NDArray[np.int64]
    threshold: npt.NDArray[np.float64]  # +inf at leaves
    left: npt.NDArray[np.int64]  # a leaf's children are itself
    right: npt.NDArray[np.int64]
    default_left: npt.NDArray[np.bool_]
    missing: npt.NDArray[np.int8]  # 0 None, 1 Zero, 2 NaN
    value: npt.NDArray[np.float64]  # leaf values (0 at splits)
    roots: npt.NDArray[np.int64]
    depth: int  # splits on the longest root-to-leaf path
    n_features: int
    sigmoid: float

    @classmethod
    def of(cls, booster: lgb.Booster) -> Nodes:
        """ValueError for a model the walk does not follow (not binary, categorical splits,
        linear trees)."""
        dump = booster.dump_model()
        objective = str(dump.get("objective", ""))
        if dump.get("num_tree_per_iteration", 1) != 1 or not objective.startswith("binary"):
            raise ValueError(f"the array forest scores binary models only, not {objective!r}")
        sigmoid = 1.0
        for part in objective.split()[1:]:
            key, _, value = part.partition(":")
            if key == "sigmoid":
                sigmoid = float(value)
        cols: dict[str, list[Any]] = {k: [] for k in ("f", "t", "l", "r", "d", "m", "v")}
        roots, depth = [], 0
        for tree in dump["tree_info"]:
            roots.append(len(cols["f"]))
            depth = max(depth, _add(tree["tree_structure"], cols, 0))
        return cls(
            feature=np.asarray(cols["f"], np.int64),
            threshold=np.asarray(cols["t"], np.float64),
            left=np.asarray(cols["l"], np.int64),
            right=np.asarray(cols["r"], np.int64),
            default_left=np.asarray(cols["d"], np.bool_),
            missing=np.asarray(cols["m"], np.int8),
            value=np.asarray(cols["v"], np.float64),
            roots=np.asarray(roots, np.int64),
            depth=depth,
            n_features=booster.num_feature(),
            sigmoid=sigmoid,
        )


def _add(node: dict[str, Any], cols: dict[str, list[Any]], level: int) -> int:
    """Append node and its subtree (node first); the subtree's depth below level."""
    at = len(cols["f"])
    for k in cols:
        cols[k].append(None)
    if "leaf_value" in node:
        cols["f"][at], cols["t"][at], cols["l"][at], cols["r"][at] = 0, math.inf, at, at
        cols["d"][at], cols["m"][at], cols["v"][at] = True, 0, float(node["leaf_value"])
        return level
    if node.get("decision_type") != "<=":
        raise ValueError("the array forest does not follow categorical splits")
    if "leaf_coeff" in node or "leaf_features" in node:
        raise ValueError("the array forest does not follow linear trees")
    cols["f"][at], cols["t"][at] = int(node["split_feature"]), float(node["threshold"])
    cols["d"][at], cols["m"][at], cols["v"][at] = (
        bool(node["default_left"]),
        _MISSING[str(node["missing_type"])],
        0.0,
    )
    cols["l"][at] = len(cols["f"])
    deep = _add(node["left_child"], cols, level + 1)
    cols["r"][at] = len(cols["f"])
    return max(deep, _add(node["right_child"], cols, level + 1))


class ArrayForestScorer:
    """Scorer: the walk on a device (numpy on the host, cupy on the GPU)."""

    def __init__(self, booster: lgb.Booster, device: Device = CPU, xp: Any = None) -> None:
        """xp overrides the device's namespace (the tests' array_api_strict)."""
        self.nodes = Nodes.of(booster)
        self.n_features: int = self.nodes.n_features
        self.xp = xp if xp is not None else device.xp
        n = self.nodes
        self._on = {
            k: self.xp.asarray(getattr(n, k))
            for k in ("feature", "threshold", "left", "right", "default_left", "missing", "value")
        }
        self._roots = self.xp.asarray(n.roots)

    def raw(self, X: Any) -> Any:
        """Raw log-odds of every row of X (any array of shape [N, n_features]), float64 in the
        scorer's namespace."""
        xp = self.xp
        rows = xp.asarray(X)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got {rows.shape}")
        rows = xp.astype(rows, xp.float64)
        trees = int(self._roots.shape[0])
        step = max(1, CHUNK_PAIRS // max(trees, 1))
        n = int(rows.shape[0])
        parts = [self._walk(rows[i : min(i + step, n), ...]) for i in range(0, n, step)]
        return xp.concat(parts) if parts else xp.zeros(0, dtype=xp.float64)

    def _walk(self, rows: Any) -> Any:
        xp, on = self.xp, self._on
        n, trees, f = int(rows.shape[0]), int(self._roots.shape[0]), self.n_features
        flat = xp.reshape(rows, (-1,))
        pair = xp.arange(n * trees, dtype=xp.int64)
        base = (pair // trees) * f  # where each pair's row starts in flat
        at = xp.take(self._roots, pair % trees)
        for _ in range(self.nodes.depth):
            x = xp.take(flat, base + xp.take(on["feature"], at))
            missing = xp.take(on["missing"], at)
            nan = xp.isnan(x)
            x = xp.where(nan & (missing != 2), xp.zeros_like(x), x)
            default = ((missing == 1) & (xp.abs(x) <= _ZERO)) | ((missing == 2) & nan)
            left = xp.where(
                default, xp.take(on["default_left"], at), x <= xp.take(on["threshold"], at)
            )
            at = xp.where(left, xp.take(on["left"], at), xp.take(on["right"], at))
        return xp.sum(xp.reshape(xp.take(on["value"], at), (n, trees)), axis=1)

    def score(self, X: np.ndarray) -> npt.NDArray[np.float32]:
        xp = self.xp
        raw = self.raw(X)
        p = 1.0 / (1.0 + xp.exp(-self.nodes.sigmoid * raw))
        return np.ascontiguousarray(to_numpy(p), dtype=np.float32)
