"""Evaluation metrics for RadCLIP: pure functions of embeddings and labels.

Nothing here runs the model. The caller encodes images/volumes and captions/prompts
elsewhere and passes float arrays of shape (N, D); every function normalises the
embeddings it compares (L2, rows), so cosine similarity is a dot product.

Protocols and conventions (each checked by tests/core/test_metrics.py):

* **Folds** (:func:`patient_folds`): patients, never records, are split. Patients are
  dealt into ``n_folds`` groups by a seeded permutation (stratified by each patient's
  most frequent label when labels are given). Fold ``k`` tests on group ``k`` (20 %),
  validates on half of group ``k+1`` (10 %) and trains on everything else (70 %), so
  every patient is tested exactly once across the folds. Fractions hold for patients;
  record fractions follow when patients have similar record counts.
* **Linear probe** (:func:`linear_probe`): frozen features standardised with train-part
  statistics; a single ``nn.Linear`` trained with Adam + cross-entropy, the epoch with
  the best val accuracy kept, scored on the test part (or scikit-learn's
  ``LogisticRegression`` with C picked on the val part). Accuracy and macro F1 are
  reported per fold and as mean ± sample std over folds.
* **Ties** in any ranking (top-1 matching, zero-shot top-k, retrieval Recall@K and
  rank) are resolved *in expectation under uniformly random tie-breaking*: when the
  true candidate is one of ``k`` tied maxima it scores ``1/k`` of a hit. Neither the
  optimistic (any tie is a hit) nor the pessimistic (any tie is a miss) convention
  depends on the order of the candidates, but both bias the score; the expectation
  does not. Ties are exact float equality by default (identical captions encode to
  identical embeddings, hence identical similarities).
* **Std over folds** is the sample std (``ddof=1``); a single value has std 0.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score
from torch import nn

from radclip.core.losses import MAX_LOGIT_SCALE

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
LOGISTIC_C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)  # val-selected inverse regularisation for method="sklearn"
LOGISTIC_MAX_ITER = 5000
DEFAULT_LOGIT_SCALE = MAX_LOGIT_SCALE  # CLIP's temperature ceiling, used for prompt-pair softmax
_NORM_EPS = 1e-12


# --------------------------------------------------------------------------- helpers


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64). A zero row has no direction: ValueError."""
    matrix = np.asarray(embeddings, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, D), got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("embeddings contain NaN or inf")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if np.any(norms < _NORM_EPS):
        raise ValueError("embeddings contain a zero vector, which cannot be normalised")
    return matrix / norms


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(Na, Nb) cosine similarities between the rows of ``a`` and ``b``."""
    a_n, b_n = l2_normalize(a), l2_normalize(b)
    if a_n.shape[1] != b_n.shape[1]:
        raise ValueError(f"embedding widths differ: {a_n.shape[1]} vs {b_n.shape[1]}")
    return a_n @ b_n.T


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and *sample* standard deviation (``ddof=1``) of fold scores.

    The folds are a sample of possible splits, so the unbiased-variance estimate is the
    honest spread to report as "mean ± std". One value has std 0.0; none is an error.
    """
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        raise ValueError("mean_std needs at least one value")
    std = float(np.std(array, ddof=1)) if array.size > 1 else 0.0
    return float(np.mean(array)), std


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int
) -> tuple[float, float, np.ndarray]:
    """Accuracy, macro F1 and the (n_classes, n_classes) confusion matrix (rows = truth).

    Macro F1 averages over the classes present in ``y_true`` or ``y_pred`` (scikit-learn's
    default): a class absent from a small test part would otherwise add a meaningless 0.
    A class predicted but never true scores F1 0 (``zero_division=0``).
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    accuracy = float(accuracy_score(y_true, y_pred))
    macro_f1 = float(f1_score(y_true, y_pred, average="macro", zero_division=0))
    confusion = confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))
    return accuracy, macro_f1, confusion


def _expected_hits_at_k(
    scores: np.ndarray, is_positive: np.ndarray, ks: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query expected Recall@K and expected rank of the first positive (1-based).

    ``scores`` (Q, M) and boolean ``is_positive`` (Q, M), every query with ≥ 1 positive.
    With ``g`` negatives strictly above the best positive score, ``t`` negatives tied with
    it and ``p`` positives at that score, a uniformly random order of the tied items puts
    ``X`` negatives before the first positive, with P(X ≥ x) = Π_{i<x} (t−i)/(t+p−i).
    Then Recall@K = P(g + X < K) and the expected rank is 1 + g + t/(p+1).
    """
    best_positive = np.where(is_positive, scores, -np.inf).max(axis=1, keepdims=True)
    negatives = ~is_positive
    greater = np.sum(negatives & (scores > best_positive), axis=1)
    tied_negatives = np.sum(negatives & (scores == best_positive), axis=1)
    tied_positives = np.sum(is_positive & (scores == best_positive), axis=1)

    expected_rank = 1.0 + greater + tied_negatives / (tied_positives + 1.0)
    recalls = np.zeros((scores.shape[0], len(ks)), dtype=np.float64)
    for q in range(scores.shape[0]):
        g, t, p = int(greater[q]), int(tied_negatives[q]), int(tied_positives[q])
        for j, k in enumerate(ks):
            slots = k - g  # how many tied negatives may precede the first positive, plus one
            if slots <= 0:
                continue
            # P(X >= slots): the first `slots` tied places all go to negatives
            p_miss = 1.0
            for i in range(min(slots, t + 1)):
                p_miss *= (t - i) / (t + p - i) if t - i > 0 else 0.0
            recalls[q, j] = 1.0 - p_miss
    return recalls, expected_rank


# --------------------------------------------------------------------------- folds


def _patient_labels(patient_ids: np.ndarray, labels: np.ndarray, patients: np.ndarray) -> np.ndarray:
    """Each patient's most frequent record label (ties: the smallest label), for stratifying."""
    label_values, label_codes = np.unique(labels, return_inverse=True)
    patient_index = np.searchsorted(patients, patient_ids)
    counts = np.zeros((patients.size, label_values.size), dtype=np.int64)
    np.add.at(counts, (patient_index, label_codes), 1)
    return counts.argmax(axis=1)  # argmax takes the first maximum: deterministic


def patient_folds(
    patient_ids: np.ndarray,
    n_folds: int = 5,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    *,
    labels: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Patient-disjoint ``(train, val, test)`` record-index arrays, one triple per fold.

    Procedure (exact):

    1. The distinct patient ids (sorted) are shuffled by ``numpy.random.default_rng(seed)``.
       With ``labels`` given, patients are first grouped by their most frequent label
       (class by class, each class shuffled), which keeps every class in every group
       whenever the class has at least ``n_folds`` patients: stratification, so every
       train part sees every class.
    2. The i-th patient of that order joins group ``i % n_folds``; group sizes differ by
       at most one.
    3. Fold ``k`` tests on group ``k``; its val part is a share ``fractions[1] * n_folds``
       (a half, for 70/10/20 with 5 folds) of group ``(k + 1) % n_folds``, taken at evenly
       spaced positions of that group's order (so it stays stratified), at least one
       patient; the train part is every other patient.

    So every patient is in exactly one test part across the folds, all records of a patient
    lie in one part of each fold, and the split is a pure function of
    ``(patient_ids, labels, n_folds, fractions, seed)``. ``fractions[2]`` must equal
    ``1 / n_folds`` (the test parts rotate through the groups). Index arrays are sorted.
    """
    patient_ids = np.asarray(patient_ids)
    if patient_ids.ndim != 1:
        raise ValueError("patient_ids must be 1-D, one id per record")
    if n_folds < 2:
        raise ValueError("n_folds must be at least 2")
    train_fraction, val_fraction, test_fraction = (float(f) for f in fractions)
    if min(train_fraction, val_fraction, test_fraction) < 0 or not math.isclose(
        train_fraction + val_fraction + test_fraction, 1.0, abs_tol=1e-6
    ):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    if not math.isclose(test_fraction, 1.0 / n_folds, abs_tol=1e-6):
        raise ValueError(
            f"the test fraction must be 1/n_folds = {1.0 / n_folds:.4f} so the test parts rotate "
            f"through all patients; got {test_fraction}"
        )
    val_share_of_group = val_fraction * n_folds
    if val_share_of_group > 1.0 + 1e-9:
        raise ValueError(f"val fraction {val_fraction} exceeds one group ({1.0 / n_folds:.4f})")

    patients = np.unique(patient_ids)
    if patients.size < n_folds:
        raise ValueError(f"{patients.size} patients cannot fill {n_folds} folds")

    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(patients.size)
    else:
        labels = np.asarray(labels)
        if labels.shape != patient_ids.shape:
            raise ValueError("labels must have one entry per record, like patient_ids")
        patient_class = _patient_labels(patient_ids, labels, patients)
        order = np.concatenate(
            [rng.permutation(np.flatnonzero(patient_class == c)) for c in np.unique(patient_class)]
        )
    group_of_patient = np.empty(patients.size, dtype=np.int64)
    group_of_patient[order] = np.arange(patients.size) % n_folds
    groups = [order[g::n_folds] for g in range(n_folds)]  # patient positions, in dealing order

    record_patient = np.searchsorted(patients, patient_ids)
    folds: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for k in range(n_folds):
        val_group = groups[(k + 1) % n_folds]
        n_val = 0
        if val_share_of_group > 0:
            n_val = min(val_group.size, max(1, int(round(val_share_of_group * val_group.size))))
        positions = np.floor(np.arange(n_val) * val_group.size / max(n_val, 1)).astype(np.int64)
        patient_part = np.zeros(patients.size, dtype=np.int8)  # 0 train, 1 val, 2 test
        patient_part[val_group[positions]] = 1
        patient_part[group_of_patient == k] = 2
        record_part = patient_part[record_patient]
        train_rows, val_rows, test_rows = (np.flatnonzero(record_part == part) for part in (0, 1, 2))
        folds.append((train_rows, val_rows, test_rows))
    return folds


# --------------------------------------------------------------------------- linear probe


@dataclass(frozen=True)
class ProbeResult:
    """Cross-validated linear-probe scores.

    ``confusion`` is summed over the folds' test parts (rows = truth, columns =
    prediction, in ``class_names`` order); since every patient is tested once, it counts
    each record once. ``selected`` is the model selection per fold: the 1-based best
    epoch (torch) or the chosen ``C`` (sklearn).
    """

    method: str
    class_names: tuple[str, ...]
    fold_accuracy: tuple[float, ...]
    fold_macro_f1: tuple[float, ...]
    accuracy_mean: float
    accuracy_std: float
    macro_f1_mean: float
    macro_f1_std: float
    confusion: np.ndarray
    selected: tuple[float, ...] = field(default=())

    @property
    def n_folds(self) -> int:
        return len(self.fold_accuracy)

    def summary(self) -> str:
        return (
            f"{self.method} probe, {self.n_folds} folds: accuracy {self.accuracy_mean:.4f} ± {self.accuracy_std:.4f}, "
            f"macro F1 {self.macro_f1_mean:.4f} ± {self.macro_f1_std:.4f}"
        )

    def metrics(self, prefix: str = "probe_") -> dict[str, float]:
        """Flat float metrics (names valid for MLflow)."""
        out = {
            f"{prefix}accuracy_mean": self.accuracy_mean,
            f"{prefix}accuracy_std": self.accuracy_std,
            f"{prefix}macro_f1_mean": self.macro_f1_mean,
            f"{prefix}macro_f1_std": self.macro_f1_std,
        }
        for k, (acc, f1) in enumerate(zip(self.fold_accuracy, self.fold_macro_f1)):
            out[f"{prefix}fold{k}_accuracy"] = acc
            out[f"{prefix}fold{k}_macro_f1"] = f1
        return out


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Z-score with train-part statistics only (no test leakage); constant features stay 0."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return [(x - mean) / std for x in (train, *others)]


@contextlib.contextmanager
def _single_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, restoring the previous setting after.

    A (D, C) linear layer on minibatches of 64 is far too small to parallelise: on a
    loaded machine, intra-op threads spin-waiting for each other made a 5-fold probe
    ~60x slower (17 s vs 0.3 s per fold measured on 2 shared cores). One thread also
    makes the float summation order, hence the result, independent of the machine's
    core count. The setting is process-wide, so it is restored promptly.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fold_seed(seed: int, fold: int) -> int:
    """Independent, reproducible per-fold seed (not seed + fold, which overlaps across seeds)."""
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])


def _torch_probe_fold(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    n_classes: int,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float,
    seed: int,
) -> tuple[np.ndarray, int]:
    """Train one linear layer; return test predictions and the 1-based selected epoch."""
    generator = torch.Generator().manual_seed(seed)
    n_features = x_train.shape[1]
    layer = nn.Linear(n_features, n_classes)
    # Re-initialise from our generator (nn.Linear's default bound, 1/sqrt(fan_in)) so the
    # global torch RNG, which other code may touch, does not affect the result.
    bound = 1.0 / math.sqrt(n_features)
    with torch.no_grad():
        nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=weight_decay)

    xt = torch.as_tensor(x_train, dtype=torch.float32)
    yt = torch.as_tensor(y_train, dtype=torch.long)
    xv = torch.as_tensor(x_val, dtype=torch.float32)
    yv = torch.as_tensor(y_val, dtype=torch.long)

    best_key: tuple[float, float] | None = None
    best_state = {name: p.detach().clone() for name, p in layer.state_dict().items()}
    best_epoch = epochs
    for epoch in range(1, epochs + 1):
        layer.train()
        permutation = torch.randperm(xt.shape[0], generator=generator)
        for start in range(0, xt.shape[0], batch_size):
            batch = permutation[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(layer(xt[batch]), yt[batch]).backward()
            optimizer.step()
        if xv.shape[0] == 0:
            continue  # no val part: the last epoch is kept
        layer.eval()
        with torch.no_grad():
            logits = layer(xv)
            val_accuracy = float((logits.argmax(dim=1) == yv).float().mean())
            val_loss = float(F.cross_entropy(logits, yv))
        # Accuracy saturates (often 1.0 after a few epochs); the lower val loss breaks ties.
        key = (val_accuracy, -val_loss)
        if best_key is None or key > best_key:
            best_key, best_epoch = key, epoch
            best_state = {name: p.detach().clone() for name, p in layer.state_dict().items()}
    if xv.shape[0] > 0:
        layer.load_state_dict(best_state)
    else:
        best_epoch = epochs
    layer.eval()
    with torch.no_grad():
        predictions = layer(torch.as_tensor(x_test, dtype=torch.float32)).argmax(dim=1).numpy()
    return predictions, best_epoch


def _sklearn_probe_fold(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    *,
    seed: int,
) -> tuple[np.ndarray, float]:
    """Logistic regression with C picked on the val part (ties: the smaller C, more
    regularised); with no val part, C = 1 (scikit-learn's default)."""
    grid = LOGISTIC_C_GRID if len(y_val) else (1.0,)
    best: tuple[float, LogisticRegression, float] | None = None
    for c in grid:
        model = LogisticRegression(C=c, max_iter=LOGISTIC_MAX_ITER, random_state=seed).fit(x_train, y_train)
        score = float(accuracy_score(y_val, model.predict(x_val))) if len(y_val) else 0.0
        if best is None or score > best[0]:
            best = (score, model, c)
    assert best is not None
    return best[1].predict(x_test), best[2]


def linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    patient_ids: np.ndarray,
    *,
    n_folds: int = 5,
    epochs: int = 100,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
    method: str = "torch",
    label_order: Sequence[Any] | None = None,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    stratify: bool = True,
) -> ProbeResult:
    """Cross-validated linear probe on frozen features (the paper's protocol).

    ``labels`` are any hashable class values (e.g. class names); ``label_order`` fixes the
    class order of the confusion matrix (default: sorted distinct labels). Folds come from
    :func:`patient_folds` (stratified by label unless ``stratify=False``). Per fold the
    features are standardised with train-part statistics, then:

    * ``method="torch"``: one ``nn.Linear``, Adam (``lr``, ``weight_decay``), cross-entropy,
      minibatches of ``batch_size`` for ``epochs`` epochs; after each epoch the val part is
      scored and the weights of the best epoch (highest val accuracy, ties: lowest val
      loss, then earliest) are the ones tested. Initialisation and shuffling use a
      ``torch.Generator`` seeded per fold and torch runs on one thread while it trains,
      so results are reproducible on CPU for a seed.
    * ``method="sklearn"``: ``LogisticRegression`` (lbfgs, ``max_iter`` 5000) for each C in
      ``LOGISTIC_C_GRID``; the C with the best val accuracy (ties: smaller C) is tested.

    Both train on the train part only; the val part serves model selection.
    """
    if method not in ("torch", "sklearn"):
        raise ValueError(f"method must be 'torch' or 'sklearn', got {method!r}")
    x = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    patient_ids = np.asarray(patient_ids)
    if x.ndim != 2 or labels.shape != (x.shape[0],) or patient_ids.shape != (x.shape[0],):
        raise ValueError(
            f"features (N, D) with labels and patient_ids of shape (N,); "
            f"got {x.shape}, {labels.shape}, {patient_ids.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or inf")

    classes = list(label_order) if label_order is not None else list(np.unique(labels))
    class_index = {value: i for i, value in enumerate(classes)}
    if len(class_index) != len(classes):
        raise ValueError("label_order has duplicates")
    unknown = set(labels.tolist()) - set(class_index)
    if unknown:
        raise ValueError(f"labels not in label_order: {sorted(map(str, unknown))}")
    y = np.array([class_index[value] for value in labels.tolist()], dtype=np.int64)
    n_classes = len(classes)

    folds = patient_folds(patient_ids, n_folds, fractions, seed, labels=y if stratify else None)
    accuracies, macro_f1s, selected = [], [], []
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    choice: float  # the selected epoch (torch) or C (sklearn)
    for k, (train_idx, val_idx, test_idx) in enumerate(folds):
        x_train, x_val, x_test = _standardise(x[train_idx], x[val_idx], x[test_idx])
        fold_seed = _fold_seed(seed, k)
        if method == "torch":
            with _single_torch_thread():
                predictions, choice = _torch_probe_fold(
                    x_train, y[train_idx], x_val, y[val_idx], x_test, n_classes,
                    epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=fold_seed,
                )
        else:
            predictions, choice = _sklearn_probe_fold(
                x_train, y[train_idx], x_val, y[val_idx], x_test, seed=fold_seed % (2**31)
            )
        accuracy, macro_f1, fold_confusion = classification_metrics(y[test_idx], predictions, n_classes)
        accuracies.append(accuracy)
        macro_f1s.append(macro_f1)
        selected.append(float(choice))
        confusion += fold_confusion

    accuracy_mean, accuracy_std = mean_std(accuracies)
    macro_f1_mean, macro_f1_std = mean_std(macro_f1s)
    return ProbeResult(
        method=method,
        class_names=tuple(str(c) for c in classes),
        fold_accuracy=tuple(accuracies),
        fold_macro_f1=tuple(macro_f1s),
        accuracy_mean=accuracy_mean,
        accuracy_std=accuracy_std,
        macro_f1_mean=macro_f1_mean,
        macro_f1_std=macro_f1_std,
        confusion=confusion,
        selected=tuple(selected),
    )


# --------------------------------------------------------------------------- matching / zero-shot


def top1_precision(similarity: np.ndarray, true_index: np.ndarray) -> float:
    """Share of rows whose true candidate has the highest score; ties in expectation.

    ``similarity`` (N, C), ``true_index`` (N,) column of the correct candidate per row.
    When the true candidate is one of ``k`` exactly-tied maxima the row counts ``1/k`` of
    a hit (the expected accuracy under random tie-breaking); below the maximum, 0.
    """
    scores = np.asarray(similarity, dtype=np.float64)
    truth = np.asarray(true_index, dtype=np.int64)
    if scores.ndim != 2 or truth.shape != (scores.shape[0],):
        raise ValueError(f"similarity (N, C) and true_index (N,); got {scores.shape}, {truth.shape}")
    if scores.shape[0] == 0:
        raise ValueError("no rows to score")
    if np.any((truth < 0) | (truth >= scores.shape[1])):
        raise ValueError("true_index out of range")
    if not np.all(np.isfinite(scores)):
        raise ValueError("similarity contains NaN or inf")
    is_max = scores == scores.max(axis=1, keepdims=True)
    true_is_max = is_max[np.arange(scores.shape[0]), truth]
    return float(np.mean(true_is_max / is_max.sum(axis=1)))


def matching_precision(image_emb: np.ndarray, caption_emb: np.ndarray, true_index: np.ndarray) -> float:
    """Image–text matching top-1 precision: cosine of every image to every candidate caption.

    Both embedding sets are L2-normalised here (idempotent for already-normalised input),
    so the similarity is cosine; ties follow :func:`top1_precision`.
    """
    return top1_precision(cosine_similarity(image_emb, caption_emb), true_index)


def ensemble_class_embeddings(class_prompt_embs: Sequence[np.ndarray]) -> np.ndarray:
    """(C, D) class embeddings: per class, the mean of its L2-normalised prompt-template
    embeddings, renormalised (CLIP's prompt ensembling)."""
    if len(class_prompt_embs) == 0:
        raise ValueError("no classes")
    rows = []
    for c, prompts in enumerate(class_prompt_embs):
        prompts = np.asarray(prompts, dtype=np.float64)
        if prompts.ndim == 1:
            prompts = prompts[None, :]
        if prompts.shape[0] == 0:
            raise ValueError(f"class {c} has no prompt embeddings")
        rows.append(l2_normalize(prompts).mean(axis=0))
    return l2_normalize(np.stack(rows))


def zero_shot_predict(image_emb: np.ndarray, class_embeddings: np.ndarray) -> np.ndarray:
    """(N,) class index of the most cosine-similar class embedding (first on exact ties)."""
    return cosine_similarity(image_emb, class_embeddings).argmax(axis=1)


def zero_shot(
    image_emb: np.ndarray,
    class_prompt_embs: Sequence[np.ndarray],
    labels: np.ndarray,
    k: Sequence[int] = (1, 3),
) -> dict[str, float]:
    """Zero-shot classification with prompt-template ensembles.

    ``class_prompt_embs[c]`` is (n_templates_c, D); ``labels`` (N,) are class indices.
    Returns ``top{k}`` accuracy for every requested k ≤ number of classes (larger k are
    skipped: with C classes top-C is trivially 1), ties counted in expectation (see the
    module docstring), plus ``macro_f1`` of the argmax predictions and ``n_classes``.
    """
    class_embeddings = ensemble_class_embeddings(class_prompt_embs)
    similarity = cosine_similarity(image_emb, class_embeddings)
    truth = np.asarray(labels, dtype=np.int64)
    n_classes = class_embeddings.shape[0]
    if truth.shape != (similarity.shape[0],) or np.any((truth < 0) | (truth >= n_classes)):
        raise ValueError("labels must be (N,) class indices into class_prompt_embs")
    ks = sorted({int(v) for v in k if 1 <= int(v) <= n_classes})
    is_true = np.zeros_like(similarity, dtype=bool)
    is_true[np.arange(truth.size), truth] = True
    recalls, _ = _expected_hits_at_k(similarity, is_true, ks)
    result: dict[str, float] = {f"top{kk}": float(recalls[:, j].mean()) for j, kk in enumerate(ks)}
    result["macro_f1"] = float(f1_score(truth, similarity.argmax(axis=1), average="macro", zero_division=0))
    result["n_classes"] = float(n_classes)
    return result


# --------------------------------------------------------------------------- retrieval


def _positive_matrix(positives: Any, n_images: int, n_texts: int) -> np.ndarray:
    """Boolean (n_images, n_texts) from a bool matrix, an (N,) index array, or a list of index sets."""
    if isinstance(positives, np.ndarray) and positives.dtype == bool:
        if positives.shape != (n_images, n_texts):
            raise ValueError(f"boolean positives must be {(n_images, n_texts)}, got {positives.shape}")
        matrix = positives.copy()
    else:
        if len(positives) != n_images:
            raise ValueError(f"positives must list {n_images} entries, one per image")
        matrix = np.zeros((n_images, n_texts), dtype=bool)
        for i, entry in enumerate(positives):
            indices = np.atleast_1d(
                np.asarray(list(entry) if isinstance(entry, (set, frozenset)) else entry, dtype=np.int64)
            )
            if np.any((indices < 0) | (indices >= n_texts)):
                raise ValueError(f"image {i}: text index out of range")
            matrix[i, indices] = True
    if not np.all(matrix.any(axis=1)):
        raise ValueError("every image needs at least one positive text")
    return matrix


def retrieval_metrics(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    positives: Any,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Image→text and text→image Recall@K and median rank (1-based), cosine similarity.

    ``positives`` gives each image's correct texts: a list of index sets/arrays, an (N,)
    int array (one each), or a boolean (N_images, N_texts) matrix. Several images may
    share one caption. A query is a hit at K if ANY of its correct candidates ranks within
    K; its rank is that of its best-ranked correct candidate. Text→image queries are the
    texts that are positive for at least one image (its positives: those images); other
    texts are skipped (``t2i_queries`` counts the rest). Ties count in expectation (module
    docstring), so ranks may be fractional; the median is over queries.

    Keys: ``i2t_recall_at_{k}``, ``i2t_median_rank``, ``t2i_recall_at_{k}``,
    ``t2i_median_rank``, ``i2t_queries``, ``t2i_queries``.
    """
    similarity = cosine_similarity(image_emb, text_emb)
    is_positive = _positive_matrix(positives, *similarity.shape)
    ks = [int(k) for k in ks]
    result: dict[str, float] = {}
    text_queries = is_positive.any(axis=0)
    for direction, scores, positive in (
        ("i2t", similarity, is_positive),
        ("t2i", similarity.T[text_queries], is_positive.T[text_queries]),
    ):
        recalls, ranks = _expected_hits_at_k(scores, positive, ks)
        for j, k in enumerate(ks):
            result[f"{direction}_recall_at_{k}"] = float(recalls[:, j].mean())
        result[f"{direction}_median_rank"] = float(np.median(ranks))
        result[f"{direction}_queries"] = float(scores.shape[0])
    return result


# --------------------------------------------------------------------------- multi-label


def multilabel_logits(
    image_emb: np.ndarray,
    positive_prompt_emb: np.ndarray,
    negative_prompt_emb: np.ndarray,
    logit_scale: float = DEFAULT_LOGIT_SCALE,
) -> np.ndarray:
    """(N, C) logit of "present": ``logit_scale * (cos(img, pos_c) - cos(img, neg_c))``.

    A softmax over the two scaled cosines [pos, neg] gives P(present) = sigmoid(this).
    """
    pos = cosine_similarity(image_emb, positive_prompt_emb)
    neg = cosine_similarity(image_emb, negative_prompt_emb)
    if pos.shape != neg.shape:
        raise ValueError("positive and negative prompt embeddings must both be (C, D)")
    return logit_scale * (pos - neg)


def multilabel_probabilities(
    image_emb: np.ndarray,
    positive_prompt_emb: np.ndarray,
    negative_prompt_emb: np.ndarray,
    logit_scale: float = DEFAULT_LOGIT_SCALE,
) -> np.ndarray:
    """(N, C) P(present): softmax over the scaled [positive, negative] prompt cosines."""
    return expit(multilabel_logits(image_emb, positive_prompt_emb, negative_prompt_emb, logit_scale))


def rare_by_frequency(
    class_names: Sequence[str], counts: Mapping[str, float], total: float, fraction: float
) -> list[str]:
    """The classes whose share ``counts[c] / total`` is below ``fraction`` (e.g. of the training
    images: a class the model rarely saw), in ``class_names`` order. A class missing from ``counts``
    has share 0, so it is rare (never seen)."""
    if not total > 0:
        raise ValueError(f"total must be positive to give shares, got {total}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return [str(name) for name in class_names if counts.get(name, 0) / total < fraction]


def multilabel_auroc(
    image_emb: np.ndarray,
    positive_prompt_emb: np.ndarray,
    negative_prompt_emb: np.ndarray,
    targets: np.ndarray,
    class_names: Sequence[str],
    *,
    rare_classes: Sequence[str] | None = None,
    rare_threshold: int | None = None,
    logit_scale: float = DEFAULT_LOGIT_SCALE,
) -> dict[str, Any]:
    """Per-class and macro AUROC of zero-shot multi-label detection with prompt pairs.

    The score of class c is P(present) from a softmax over [cos(img, pos_c), cos(img,
    neg_c)] × ``logit_scale``. AUROC is computed on the logit difference, which ranks
    identically but does not saturate (at scale 100, sigmoid rounds to exactly 1.0 for
    cosine gaps above ~0.37, which would create false ties).

    A class whose targets are all 0 or all 1 has no AUROC: NaN in ``per_class``, listed in
    ``undefined_classes``, excluded from every macro. The rare classes are given by exactly one
    of ``rare_classes`` (names, e.g. from :func:`rare_by_frequency` over training counts) or
    ``rare_threshold`` (fewer positive ``targets`` than this: rare in the evaluated set itself);
    ``base_classes`` are the others. ``macro_base`` / ``macro_rare`` average the defined AUROCs
    of each (NaN if none).
    """
    if (rare_classes is None) == (rare_threshold is None):
        raise ValueError("give exactly one of rare_classes and rare_threshold")
    targets = np.asarray(targets)
    logits = multilabel_logits(image_emb, positive_prompt_emb, negative_prompt_emb, logit_scale)
    names = [str(n) for n in class_names]
    if targets.shape != logits.shape or len(names) != logits.shape[1]:
        raise ValueError(
            f"targets must be (N, C) = {logits.shape} with C class names; got {targets.shape}, {len(names)} names"
        )
    if not np.all(np.isin(targets, (0, 1))):
        raise ValueError("targets must be binary (0/1)")
    targets = targets.astype(np.int64)

    positives_per_class = targets.sum(axis=0)
    per_class: dict[str, float] = {}
    undefined: list[str] = []
    for c, name in enumerate(names):
        column = targets[:, c]
        if column.min() == column.max():
            per_class[name] = float("nan")
            undefined.append(name)
        else:
            per_class[name] = float(roc_auc_score(column, logits[:, c]))

    def macro(selected: list[str]) -> float:
        values = [per_class[n] for n in selected if not math.isnan(per_class[n])]
        return float(np.mean(values)) if values else float("nan")

    if rare_classes is not None:
        unknown = sorted(set(map(str, rare_classes)) - set(names))
        if unknown:
            raise ValueError(f"rare_classes not among the class names: {unknown}")
        is_rare = [n in set(map(str, rare_classes)) for n in names]
    else:
        assert rare_threshold is not None  # exactly one is given (checked above)
        is_rare = [bool(positives_per_class[c] < rare_threshold) for c in range(len(names))]
    base = [n for n, flag in zip(names, is_rare) if not flag]
    rare = [n for n, flag in zip(names, is_rare) if flag]
    return {
        "per_class": per_class,
        "macro": macro(names),
        "macro_base": macro(base),
        "macro_rare": macro(rare),
        "base_classes": base,
        "rare_classes": rare,
        "undefined_classes": undefined,
        "positives": {n: int(positives_per_class[c]) for c, n in enumerate(names)},
    }


# --------------------------------------------------------------------------- thresholded detection (LRCLR Table 1)

DETECTION_METRICS = ("specificity", "precision", "recall", "f1", "auc")


def f1_threshold(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """The score threshold (predict present when ``score >= t``) with the highest F1 on these
    (validation) scores: each distinct score is a candidate; ties go to the higher threshold (fewer
    positives called). None when there is no positive to find."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets).astype(bool)
    if targets.shape != scores.shape or scores.ndim != 1:
        raise ValueError(f"scores and targets must be 1D of one length, got {scores.shape} and {targets.shape}")
    if not targets.any():
        return None
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], np.cumsum(targets[order])
    last = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]  # the last index of each distinct score
    called = np.arange(1, len(scores) + 1)[last]
    true_positive = hits[last]
    f1 = 2 * true_positive / (called + targets.sum())
    best = np.flatnonzero(f1 == f1.max())[0]  # the first maximum: the highest threshold
    return float(sorted_scores[last][best])


def validation_thresholds(logits: np.ndarray, targets: np.ndarray) -> list[float]:
    """Per class (column) the :func:`f1_threshold` of validation ``logits``; 0 (P(present) = 0.5) for a
    class without a positive there."""
    chosen = [f1_threshold(logits[:, c], targets[:, c]) for c in range(logits.shape[1])]
    return [0.0 if value is None else value for value in chosen]


def detection_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float) -> dict[str, float]:
    """One class's specificity, precision, recall, F1 at ``score >= threshold`` and its AUC (NaN where
    undefined: no negatives for specificity, nothing called for precision, one class for the AUC)."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets).astype(bool)
    called = scores >= threshold
    tp, fp = int((called & targets).sum()), int((called & ~targets).sum())
    fn, tn = int((~called & targets).sum()), int((~called & ~targets).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    auc = float(roc_auc_score(targets, scores)) if 0 < targets.sum() < len(targets) else float("nan")
    return {"specificity": ratio(tn, tn + fp), "precision": precision, "recall": recall, "f1": f1, "auc": auc}


def detection_table(scores: np.ndarray, targets: np.ndarray, thresholds: Sequence[float],
                    class_names: Sequence[str]) -> dict[str, Any]:
    """LRCLR's Table 1: per class :func:`detection_metrics` at its threshold and the mean of each metric
    over the classes where it is defined."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    if scores.shape != targets.shape or scores.shape[1] != len(class_names) or len(thresholds) != len(class_names):
        raise ValueError(f"scores and targets must be (N, C) with C = {len(class_names)} names and thresholds")
    per_class = {str(name): {**detection_metrics(scores[:, c], targets[:, c], thresholds[c]),
                             "threshold": float(thresholds[c])} for c, name in enumerate(class_names)}
    mean = {}
    for metric in DETECTION_METRICS:
        values = [row[metric] for row in per_class.values() if not math.isnan(row[metric])]
        mean[metric] = float(np.mean(values)) if values else float("nan")
    return {"per_class": per_class, "mean": mean}


# --------------------------------------------------------------------------- slice attention


def lesion_attention(weights: Sequence[np.ndarray], lesion_slices: Sequence[Sequence[int]]) -> dict[str, float]:
    """How well an adapter's slice weights find the slices that show the finding.

    ``weights[k]`` are volume k's pooling weights over its valid slices (summing to 1),
    ``lesion_slices[k]`` the indices of its finding slices. Returns, averaged over volumes:
    ``attention_lesion_mass`` (weight on the finding slices), ``attention_lesion_mass_uniform``
    (what average pooling puts there) and ``attention_lesion_auroc`` (within-volume AUROC of
    the weights, finding vs other slices: 0.5 = blind, ties count half; volumes whose every
    slice shows the finding have no AUROC and are left out of it only).
    """
    if len(weights) != len(lesion_slices):
        raise ValueError(f"{len(weights)} weight vectors for {len(lesion_slices)} lesion lists")
    if not len(weights):
        raise ValueError("lesion_attention needs at least one volume")
    mass, uniform, aurocs = [], [], []
    for k, (w, lesions) in enumerate(zip(weights, lesion_slices)):
        w = np.asarray(w, dtype=np.float64)
        positive = np.zeros(len(w), dtype=bool)
        index = np.asarray(list(lesions), dtype=int)
        if index.size == 0 or index.min() < 0 or index.max() >= len(w):
            raise ValueError(
                f"volume {k}: lesion slices {list(lesions)} must be non-empty and within its {len(w)} slices"
            )
        positive[index] = True
        mass.append(float(w[positive].sum()))
        uniform.append(float(positive.mean()))
        if not positive.all():
            aurocs.append(float(roc_auc_score(positive, w)))
    return {
        "attention_lesion_mass": float(np.mean(mass)),
        "attention_lesion_mass_uniform": float(np.mean(uniform)),
        "attention_lesion_auroc": float(np.mean(aurocs)) if aurocs else float("nan"),
    }


# --------------------------------------------------------------------------- uncertainty


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap (1 − alpha) confidence interval of ``metric_fn(*arrays)``.

    Rows (first axis) are resampled with replacement *jointly* across all arrays, so paired
    data (scores with their targets) stay paired. Resamples on which the metric is NaN
    (e.g. AUROC of a resample with one class) are dropped; if all are, (NaN, NaN).
    Resampling is by record: for patient-level intervals pass per-patient aggregates.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    arrays = tuple(np.asarray(a) for a in arrays)
    n = arrays[0].shape[0]
    if n == 0 or any(a.shape[0] != n for a in arrays):
        raise ValueError("arrays must be non-empty and share their first dimension")
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot, dtype=np.float64)
    for b in range(n_boot):
        rows = rng.integers(0, n, size=n)
        values[b] = float(metric_fn(*(a[rows] for a in arrays)))
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)
