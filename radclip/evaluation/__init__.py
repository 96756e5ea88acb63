"""RadCLIP evaluation: metrics on precomputed embeddings (no model inside).

* :func:`linear_probe` — frozen-feature linear probe, patient-level 5-fold CV
  (70/10/20 via :func:`patient_folds`), accuracy and macro F1 as mean ± std.
* :func:`matching_precision` / :func:`top1_precision` — image–text matching, top-1.
* :func:`zero_shot` — prompt-template-ensemble zero-shot classification, top-k.
* :func:`retrieval_metrics` — image↔text Recall@K and median rank with shared captions.
* :func:`multilabel_auroc` — positive/negative prompt-pair AUROC, base vs rare classes
  (:func:`rare_by_frequency`: rare = a small share of the training images).
* :func:`lesion_attention` — how the adapter's slice weights find the finding slices.
* :func:`bootstrap_ci`, :func:`mean_std` — uncertainty.

Conventions (ties in expectation, sample std, patient-disjoint folds) are documented in
:mod:`radclip.core.metrics`.
"""

from radclip.core.metrics import (
    ProbeResult,
    bootstrap_ci,
    classification_metrics,
    cosine_similarity,
    ensemble_class_embeddings,
    l2_normalize,
    lesion_attention,
    linear_probe,
    matching_precision,
    mean_std,
    multilabel_auroc,
    multilabel_logits,
    multilabel_probabilities,
    patient_folds,
    rare_by_frequency,
    retrieval_metrics,
    top1_precision,
    zero_shot,
    zero_shot_predict,
)

__all__ = [
    "ProbeResult",
    "bootstrap_ci",
    "classification_metrics",
    "cosine_similarity",
    "ensemble_class_embeddings",
    "l2_normalize",
    "lesion_attention",
    "linear_probe",
    "matching_precision",
    "mean_std",
    "multilabel_auroc",
    "multilabel_logits",
    "multilabel_probabilities",
    "patient_folds",
    "rare_by_frequency",
    "retrieval_metrics",
    "top1_precision",
    "zero_shot",
    "zero_shot_predict",
]
