"""Decision thresholds of binary and multi-label classifiers, chosen on the validation set.

``inference.threshold``:

* ``argmax``: the model's plain decision (binary: the more probable class; multi-label: each
  label at ``inference.binarize_threshold``);
* ``youden``: the threshold maximising sensitivity + specificity - 1 on the validation set;
* ``f1``: the threshold maximising the F1 score of the positive class on the validation set;
* ``auto``: ``youden`` for binary and multi-label models, ``argmax`` for multi-class ones;
* a number in (0, 1): that threshold.

Binary models threshold the probability of the second class (``class_names[1]``, the positive
one); multi-label models threshold each label's probability, one threshold per label. A sample
is positive when its probability is ``>=`` the threshold.

The train stage calls :func:`validation_record` on the validation probabilities of every
epoch; the record of the best epoch travels in the checkpoint (``hyper_parameters.validation``,
plain data), and prediction turns ``inference.threshold`` into thresholds with :func:`resolve`.
So a changed ``inference.threshold`` reruns prediction, never training, and the test set chooses
nothing. Pure numpy: imported by training and inference.
"""

from __future__ import annotations

import logging

import numpy as np

from bioflow.errors import BioflowError

log = logging.getLogger(__name__)

METHODS = ("youden", "f1")


def _scores(tp, fp, n_pos: int, n_neg: int, method: str) -> np.ndarray:
    if method == "youden":
        return tp / n_pos - fp / n_neg
    fn = n_pos - tp
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)


def choose(scores, y, method: str) -> tuple[float, float] | None:
    """(threshold, its value of ``method``) maximising ``method`` on scores ``(N,)`` with 0/1
    targets ``y``; None when ``y`` holds one class only (nothing to choose from).

    Candidates are the midpoints between neighbouring distinct scores (plus one below the lowest
    and one above the highest), so a test score equal to a validation score is not on the edge.
    Ties go to the candidate nearest 0.5 (the least departure from the plain decision).
    """
    if method not in METHODS:
        raise ValueError(f"unknown threshold method {method!r}; one of {METHODS}")
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(y).astype(bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    u = np.unique(s)
    cand = np.concatenate([[u[0] / 2], (u[:-1] + u[1:]) / 2, [(u[-1] + 1) / 2]])
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    tp = n_pos - np.searchsorted(pos, cand, side="left")  # positives with score >= candidate
    fp = n_neg - np.searchsorted(neg, cand, side="left")
    value = _scores(tp.astype(np.float64), fp.astype(np.float64), n_pos, n_neg, method)
    best = np.flatnonzero(np.isclose(value, value.max(), rtol=0, atol=1e-12))
    i = best[np.argmin(np.abs(cand[best] - 0.5))]
    return float(cand[i]), float(value[i])


def validation_record(probs, target, multilabel: bool) -> dict | None:
    """What the checkpoint keeps of a validation pass for choosing thresholds later:
    ``{"kind": "binary" | "multilabel", "n_val": N, "youden": {...}, "f1": {...}}`` with
    ``{"threshold": t, "value": v}`` per method (lists per label for multi-label; None where
    the validation set has one class only). None for multi-class models (no threshold)."""
    probs = np.asarray(probs, dtype=np.float64)
    target = np.asarray(target)
    if multilabel:
        per = {m: [choose(probs[:, j], target[:, j], m) for j in range(probs.shape[1])] for m in METHODS}
        return {"kind": "multilabel", "n_val": int(len(probs)),
                **{m: {"threshold": [None if c is None else c[0] for c in cs],
                       "value": [None if c is None else c[1] for c in cs]} for m, cs in per.items()}}
    if probs.ndim != 2 or probs.shape[1] != 2:
        return None
    out = {"kind": "binary", "n_val": int(len(probs))}
    for m in METHODS:
        c = choose(probs[:, 1], target == 1, m)
        out[m] = {"threshold": None if c is None else c[0], "value": None if c is None else c[1]}
    return out


def resolve(setting, record: dict | None, n_classes: int, multilabel: bool, ckpt) -> dict | None:
    """``inference.threshold`` -> ``{"method", "threshold"}`` (a float, or one per label for
    multi-label), or None for ``argmax``. ``record``: the checkpoint's ``validation``."""
    if setting == "auto":  # Youden's J does not depend on the class priors, unlike the argmax
        setting = "youden" if multilabel or n_classes == 2 else "argmax"
    if setting == "argmax":
        return None
    if not multilabel and n_classes != 2:
        raise BioflowError(f"inference.threshold: {setting} is for binary and multi-label models but {ckpt} "
                           f"has {n_classes} classes; set inference.threshold: argmax")
    n = n_classes if multilabel else 1
    if not isinstance(setting, str):  # a number
        t = float(setting)
        return {"method": "fixed", "threshold": [t] * n if multilabel else t}
    chosen = (record or {}).get(setting)
    if chosen is None:
        raise BioflowError(f"inference.threshold: {setting} is chosen on the validation set during training, "
                           f"and {ckpt} holds no validation record (trained by an older bioflow); retrain "
                           f"it, or set inference.threshold: argmax or a number")
    ts = chosen["threshold"] if multilabel else [chosen["threshold"]]
    if any(t is None for t in ts):
        log.warning("inference.threshold: %s undefined where the validation set had one class only; "
                    "0.5 used there", setting)
        ts = [0.5 if t is None else t for t in ts]
    return {"method": setting, "threshold": [float(t) for t in ts] if multilabel else float(ts[0])}
