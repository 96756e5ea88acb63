"""Evaluation metrics against hand-computed small cases (radclip.core.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from radclip.evaluation import (
    bootstrap_ci,
    classification_metrics,
    ensemble_class_embeddings,
    lesion_attention,
    linear_probe,
    matching_precision,
    mean_std,
    multilabel_auroc,
    multilabel_probabilities,
    patient_folds,
    rare_by_frequency,
    retrieval_metrics,
    top1_precision,
    zero_shot,
)


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v / np.linalg.norm(v)


# ----------------------------------------------------------------- top-1 / matching


def test_top1_precision_counts_ties_as_fractional_hits() -> None:
    similarity = np.array(
        [
            [0.9, 0.1, 0.2],  # true 0, unique max: 1
            [0.5, 0.5, 0.1],  # true 1, 2-way tie: 1/2
            [0.3, 0.3, 0.3],  # true 2, 3-way tie: 1/3
            [0.8, 0.8, 0.1],  # true 2, below the tied maxima: 0
        ]
    )
    expected = (1 + 0.5 + 1 / 3 + 0) / 4
    assert top1_precision(similarity, np.array([0, 1, 2, 2])) == pytest.approx(expected)
    assert top1_precision(similarity[:2], np.array([0, 1])) == pytest.approx(0.75)


def test_matching_precision_uses_cosine_not_raw_dot() -> None:
    # Caption 1 has a larger norm; by raw dot product it would win for image 0.
    captions = np.array([[1.0, 0.1], [3.0, 3.0]])
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert matching_precision(images, captions, np.array([0, 1])) == pytest.approx(1.0)
    # captions identical after normalisation tie exactly: each image gets half a hit
    # (image 1 is orthogonal to both, a tie at 0)
    assert matching_precision(images, np.array([[1.0, 0.0], [2.0, 0.0]]), np.array([0, 1])) == pytest.approx(0.5)


# ----------------------------------------------------------------- classification metrics


def test_macro_f1_and_confusion_match_hand_calculation() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    accuracy, macro_f1, confusion = classification_metrics(y_true, y_pred, n_classes=3)
    # class 0: P=2/2 R=2/3 F1=0.8; class 1: P=1/2 R=1/2 F1=0.5; class 2: P=1/2 R=1 F1=2/3
    assert accuracy == pytest.approx(4 / 6)
    assert macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    np.testing.assert_array_equal(confusion, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])


def test_mean_std_uses_sample_std() -> None:
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(math.sqrt(5 / 3))  # sum of squares 5, ddof=1
    assert mean_std([0.7]) == (0.7, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


# ----------------------------------------------------------------- zero-shot


def test_template_ensemble_is_renormalised_mean_and_drives_classification() -> None:
    # class 0: templates along x and y (unnormalised on purpose); class 1: two near z
    class0 = np.array([[2.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    class1 = np.array([[0.0, 0.1, 1.0], [0.0, -0.1, 1.0]])
    embeddings = ensemble_class_embeddings([class0, class1])
    np.testing.assert_allclose(embeddings[0], unit(1.0, 1.0, 0.0))
    np.testing.assert_allclose(embeddings[1], unit(0.0, 0.0, 1.0))
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0)

    # Nearest single template is class 0's x (0.95 > 0.8), but the ensemble of class 0
    # points along (1,1,0): cos 0.95/sqrt(2) = 0.67 < 0.8, so the ensemble says class 1.
    image = unit(0.95, 0.0, 0.8)[None, :]
    result = zero_shot(image, [class0, class1], np.array([1]), k=(1, 3))
    assert result["top1"] == 1.0
    assert "top3" not in result  # k above the number of classes is skipped
    assert result["n_classes"] == 2.0


def test_zero_shot_top_k() -> None:
    prompts = [np.eye(4)[c][None, :] for c in range(4)]
    images = np.array([unit(0.9, 0.5, 0.2, 0.0), unit(0.9, 0.5, 0.2, 0.0), unit(0.1, 0.2, 0.3, 0.9)])
    labels = np.array([0, 2, 1])  # ranks: 1, 3, 3
    result = zero_shot(images, prompts, labels, k=(1, 3))
    assert result["top1"] == pytest.approx(1 / 3)
    assert result["top3"] == pytest.approx(1.0)
    result2 = zero_shot(images, prompts, labels, k=(2,))
    assert result2["top2"] == pytest.approx(1 / 3)


# ----------------------------------------------------------------- retrieval


def toy_retrieval() -> tuple[np.ndarray, np.ndarray]:
    texts = np.eye(3)
    images = np.array(
        [
            [0.9, 0.3, 0.1],  # text order t0, t1, t2
            [0.2, 0.6, 0.75],  # t2, t1, t0
            [0.1, 0.7, 0.6],  # t1, t2, t0
        ]
    )
    return images, texts


def test_retrieval_recall_and_median_rank_with_shared_caption() -> None:
    images, texts = toy_retrieval()
    positives = [{0}, {0}, {2}]  # images 0 and 1 share caption t0; t1 belongs to no image
    result = retrieval_metrics(images, texts, positives, ks=(1, 2, 5))
    # image→text ranks: img0→t0 1, img1→t0 3, img2→t2 2
    assert result["i2t_recall_at_1"] == pytest.approx(1 / 3)
    assert result["i2t_recall_at_2"] == pytest.approx(2 / 3)
    assert result["i2t_recall_at_5"] == pytest.approx(1.0)
    assert result["i2t_median_rank"] == pytest.approx(2.0)
    # text→image: t0 (positives img0, img1) — cosines to x: img0 .943, img1 .204, img2 .108 → rank 1;
    # t2 (positive img2) — cosines to z: img1 .764 > img2 .647 > img0 .105 → rank 2; t1 skipped
    assert result["t2i_queries"] == 2.0
    assert result["t2i_recall_at_1"] == pytest.approx(0.5)
    assert result["t2i_recall_at_2"] == pytest.approx(1.0)
    assert result["t2i_median_rank"] == pytest.approx(1.5)


def test_retrieval_hit_if_any_positive_and_input_forms_agree() -> None:
    images, texts = toy_retrieval()
    # image 1 also owns t2 (its top text): rank 1 via ANY positive
    result = retrieval_metrics(images, texts, [{0}, [0, 2], np.array([2])], ks=(1,))
    assert result["i2t_recall_at_1"] == pytest.approx(2 / 3)
    as_matrix = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 1]], dtype=bool)
    assert retrieval_metrics(images, texts, as_matrix, ks=(1,)) == result


def test_retrieval_ties_count_in_expectation() -> None:
    texts = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # t0 and t1 identical, different captions
    images = np.array([[1.0, 0.0]])
    result = retrieval_metrics(images, texts, [{0}], ks=(1, 2))
    assert result["i2t_recall_at_1"] == pytest.approx(0.5)
    assert result["i2t_recall_at_2"] == pytest.approx(1.0)
    assert result["i2t_median_rank"] == pytest.approx(1.5)


# ----------------------------------------------------------------- multi-label AUROC


def test_multilabel_auroc_matches_hand_calculation() -> None:
    # Prompt pair per class: pos = x, neg = y, so the score rises as the image turns to x.
    pos = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    neg = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    angles = np.array([0.1, 0.3, 0.5, 0.5, 0.7])  # smaller angle = higher score
    images = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    targets = np.array(
        [
            # "a": positives at angles 0.1 and 0.5 (one tied with a negative)
            # "b": only positives, AUROC undefined
            # "c": one positive at the lowest score
            [1, 1, 0],
            [0, 1, 0],
            [1, 1, 0],
            [0, 1, 0],
            [0, 1, 1],
        ]
    )
    result = multilabel_auroc(images, pos, neg, targets, ["a", "b", "c"], rare_threshold=2)
    # "a": positives scores {s.1, s.5}, negatives {s.3, s.5, s.7}:
    # s.1 beats all 3; s.5 loses to s.3, ties s.5 (1/2), beats s.7 → (3 + 1.5) / 6
    assert result["per_class"]["a"] == pytest.approx(0.75)
    assert math.isnan(result["per_class"]["b"])
    assert result["undefined_classes"] == ["b"]
    assert result["per_class"]["c"] == pytest.approx(0.0)
    assert result["macro"] == pytest.approx(0.375)  # NaN excluded
    assert result["base_classes"] == ["a", "b"] and result["rare_classes"] == ["c"]
    assert result["macro_base"] == pytest.approx(0.75)
    assert result["macro_rare"] == pytest.approx(0.0)
    assert result["positives"] == {"a": 2, "b": 5, "c": 1}


def pairwise_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Reference AUROC: the share of (positive, negative) pairs ranked right, ties half."""
    pos, neg = scores[positive.astype(bool)], scores[~positive.astype(bool)]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_rare_by_frequency_is_a_share_below_the_fraction_and_unseen_classes_are_rare() -> None:
    counts = {"a": 1, "b": 50, "c": 2}
    # shares of 100: a 0.01 (rare), b 0.5, c 0.02 (not below 0.02), d never seen (0: rare)
    assert rare_by_frequency(["d", "c", "b", "a"], counts, 100, 0.02) == ["d", "a"]
    assert rare_by_frequency(["b"], counts, 100, 0.6) == ["b"]
    with pytest.raises(ValueError, match="total"):
        rare_by_frequency(["a"], counts, 0, 0.02)
    with pytest.raises(ValueError, match="fraction"):
        rare_by_frequency(["a"], counts, 100, 0.0)


def test_multilabel_auroc_rare_split_follows_training_counts_not_the_suite() -> None:
    """A class frequent in the suite but rare in training is rare; a class with few positives in the
    suite but frequent in training is base. The averages are the reference AUROCs of each."""
    rng = np.random.default_rng(0)
    n = 60
    images = rng.normal(size=(n, 4))
    targets = np.zeros((n, 2), dtype=int)
    targets[:30, 0] = 1  # "suite_frequent": 30 positives here...
    targets[30:33, 1] = 1  # "suite_rare": 3 positives here...
    images[:30, 0] += 0.8  # some signal along the positive prompt of class 0
    pos = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    neg = np.array([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    names = ["suite_frequent", "suite_rare"]
    training = {"suite_frequent": 5, "suite_rare": 300}  # ...but the reverse in 1000 training images
    rare = rare_by_frequency(names, training, 1000, 0.02)
    assert rare == ["suite_frequent"]

    result = multilabel_auroc(images, pos, neg, targets, names, rare_classes=rare, logit_scale=10.0)
    unit_images = images / np.linalg.norm(images, axis=1, keepdims=True)
    reference = [pairwise_auroc(unit_images @ pos[c] - unit_images @ neg[c], targets[:, c]) for c in range(2)]
    assert result["rare_classes"] == ["suite_frequent"] and result["base_classes"] == ["suite_rare"]
    assert result["macro_rare"] == pytest.approx(reference[0])
    assert result["macro_base"] == pytest.approx(reference[1])
    assert result["macro"] == pytest.approx(np.mean(reference))

    by_suite = multilabel_auroc(images, pos, neg, targets, names, rare_threshold=10, logit_scale=10.0)
    assert by_suite["rare_classes"] == ["suite_rare"] and by_suite["base_classes"] == ["suite_frequent"]
    assert by_suite["macro_rare"] == pytest.approx(reference[1])

    none_rare = multilabel_auroc(images, pos, neg, targets, names, rare_classes=[], logit_scale=10.0)
    assert none_rare["rare_classes"] == [] and math.isnan(none_rare["macro_rare"])


def test_multilabel_auroc_takes_exactly_one_known_rare_rule() -> None:
    images, prompts, targets = np.eye(2), np.eye(2), np.eye(2, dtype=int)
    with pytest.raises(ValueError, match="exactly one"):
        multilabel_auroc(images, prompts, prompts[::-1], targets, ["a", "b"])
    with pytest.raises(ValueError, match="exactly one"):
        multilabel_auroc(images, prompts, prompts[::-1], targets, ["a", "b"], rare_classes=["a"], rare_threshold=2)
    with pytest.raises(ValueError, match="not among"):
        multilabel_auroc(images, prompts, prompts[::-1], targets, ["a", "b"], rare_classes=["z"])


def test_multilabel_probability_is_softmax_over_prompt_pair() -> None:
    image = unit(0.6, 0.8)[None, :]
    probabilities = multilabel_probabilities(image, np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), logit_scale=10.0)
    logits = 10.0 * np.array([0.6, 0.8])
    expected = np.exp(logits[0]) / np.exp(logits).sum()
    assert probabilities[0, 0] == pytest.approx(expected)


# ----------------------------------------------------------------- folds


def patients_with_varied_records(n_patients: int = 50) -> np.ndarray:
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 4, size=n_patients)
    return np.repeat(np.array([f"P{i:03d}" for i in range(n_patients)]), counts)


def test_folds_patient_disjoint_rotating_and_70_10_20() -> None:
    patient_ids = patients_with_varied_records(50)
    folds = patient_folds(patient_ids, n_folds=5, seed=0)
    assert len(folds) == 5
    tested = []
    for train, val, test in folds:
        parts = [set(patient_ids[idx]) for idx in (train, val, test)]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(patient_ids.size))
        assert [len(p) for p in parts] == [35, 5, 10]  # 70/10/20 of 50 patients
        tested.extend(parts[2])
    assert sorted(tested) == sorted(set(patient_ids))  # every patient tested exactly once


def test_folds_reproducible_for_a_seed() -> None:
    patient_ids = patients_with_varied_records(40)
    first, again = patient_folds(patient_ids, seed=7), patient_folds(patient_ids, seed=7)
    other = patient_folds(patient_ids, seed=8)
    for a, b in zip(first, again):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(a[2], b[2]) for a, b in zip(first, other))


def test_folds_stratified_keep_every_class_in_every_train_part() -> None:
    patient_ids = np.repeat(np.arange(30), 2)
    labels = np.repeat(np.array([0] * 20 + [1] * 5 + [2] * 5), 2)  # classes 1 and 2: 5 patients each
    for train, val, test in patient_folds(patient_ids, labels=labels, seed=1):
        assert set(labels[train]) == {0, 1, 2}
        assert set(labels[test]) == {0, 1, 2}


def test_folds_reject_bad_fractions() -> None:
    with pytest.raises(ValueError):
        patient_folds(np.arange(20), fractions=(0.6, 0.1, 0.3))
    with pytest.raises(ValueError):
        patient_folds(np.arange(3), n_folds=5)


# ----------------------------------------------------------------- linear probe


def synthetic_features(n: int = 200, dim: int = 16, n_classes: int = 4, separation: float = 6.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n // n_classes)
    centres = rng.normal(size=(n_classes, dim))
    centres *= separation / np.linalg.norm(centres, axis=1, keepdims=True)
    features = centres[labels] + rng.normal(scale=0.5, size=(labels.size, dim))
    names = np.array(["normal", "pneumonia", "effusion", "nodule"])[labels]
    patient_ids = np.arange(labels.size) // 2  # two records of the same class per patient
    return features, names, patient_ids


@pytest.mark.parametrize("method", ["torch", "sklearn"])
def test_linear_probe_separable_reaches_full_accuracy(method: str) -> None:
    features, labels, patient_ids = synthetic_features()
    result = linear_probe(features, labels, patient_ids, method=method)  # paper: 100 epochs
    assert result.accuracy_mean == pytest.approx(1.0)
    assert result.macro_f1_mean == pytest.approx(1.0)
    assert result.n_folds == 5 and result.method == method
    assert result.class_names == ("effusion", "nodule", "normal", "pneumonia")  # sorted labels
    # every record is tested once: the summed confusion matrix is diagonal with class counts
    np.testing.assert_array_equal(result.confusion, np.diag([50, 50, 50, 50]))


def test_linear_probe_random_labels_near_chance() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(400, 16))
    labels = rng.integers(0, 4, size=400)
    result = linear_probe(features, labels, np.arange(400), epochs=20)
    assert abs(result.accuracy_mean - 0.25) < 0.1
    assert result.confusion.sum() == 400


def test_linear_probe_is_deterministic_and_respects_label_order() -> None:
    features, labels, patient_ids = synthetic_features(separation=1.0, seed=2)  # imperfect: decimals matter
    order = ["normal", "pneumonia", "effusion", "nodule"]
    first = linear_probe(features, labels, patient_ids, epochs=15, seed=3, label_order=order)
    again = linear_probe(features, labels, patient_ids, epochs=15, seed=3, label_order=order)
    assert first.fold_accuracy == again.fold_accuracy
    assert first.fold_macro_f1 == again.fold_macro_f1
    assert first.selected == again.selected
    np.testing.assert_array_equal(first.confusion, again.confusion)
    assert first.class_names == tuple(order)
    assert first.confusion.sum(axis=1).tolist() == [50, 50, 50, 50]
    assert first.accuracy_std == pytest.approx(np.std(first.fold_accuracy, ddof=1))


# ----------------------------------------------------------------- bootstrap


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(y_true == y_pred))


def noisy_predictions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, size=n)
    wrong = rng.random(n) < 0.2
    return y_true, np.where(wrong, (y_true + 1) % 3, y_true)


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_data() -> None:
    small = noisy_predictions(60, seed=0)
    large = noisy_predictions(2000, seed=1)
    low_s, high_s = bootstrap_ci(accuracy, *small, n_boot=400, seed=0)
    low_l, high_l = bootstrap_ci(accuracy, *large, n_boot=400, seed=0)
    assert low_s <= accuracy(*small) <= high_s
    assert low_l <= accuracy(*large) <= high_l
    assert (high_l - low_l) < 0.5 * (high_s - low_s)
    assert bootstrap_ci(accuracy, *small, n_boot=400, seed=0) == (low_s, high_s)  # reproducible


# ----------------------------------------------------------------- slice attention on finding slices


def test_lesion_attention_mass_uniform_baseline_and_auroc_match_hand_calculation() -> None:
    weights = [np.array([0.1, 0.6, 0.3]), np.array([0.5, 0.25, 0.25]), np.array([0.5, 0.5])]
    lesions = [[1], [1, 2], [0, 1]]
    scores = lesion_attention(weights, lesions)
    assert scores["attention_lesion_mass"] == pytest.approx((0.6 + 0.5 + 1.0) / 3)
    assert scores["attention_lesion_mass_uniform"] == pytest.approx((1 / 3 + 2 / 3 + 1) / 3)
    # volume 0 ranks its finding slice first (1.0), volume 1 last (0.0); volume 2 is all finding: no AUROC
    assert scores["attention_lesion_auroc"] == pytest.approx(0.5)


def test_lesion_attention_of_average_pooling_is_blind() -> None:
    scores = lesion_attention([np.full(8, 1 / 8), np.full(4, 1 / 4)], [[2, 3], [0]])
    assert scores["attention_lesion_mass"] == pytest.approx(scores["attention_lesion_mass_uniform"])
    assert scores["attention_lesion_auroc"] == pytest.approx(0.5)  # all ties


def test_lesion_attention_rejects_slices_outside_the_volume_naming_it() -> None:
    with pytest.raises(ValueError, match="volume 1"):
        lesion_attention([np.full(4, 0.25), np.full(4, 0.25)], [[0], [4]])


# --------------------------------------------------------------------------- thresholded detection (LRCLR Table 1)


def test_f1_threshold_picks_the_best_cut_and_the_higher_one_on_ties():
    from radclip.core.metrics import f1_threshold

    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    targets = np.array([1, 0, 1, 1, 0, 0])
    # cuts (called, tp) and F1 = 2 tp / (called + 3): 0.9 (1,1) 0.5; 0.8 (2,1) 0.4; 0.7 (3,2) 0.667;
    # 0.6 (4,3) 0.857; 0.5 (5,3) 0.75; 0.4 (6,3) 0.667
    assert f1_threshold(scores, targets) == 0.6
    # 0.9 (1,1): 2/3 and 0.6 (4,2): 4/6 tie: the higher threshold (fewer called) wins
    assert f1_threshold(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 0, 1])) == 0.9
    assert f1_threshold(np.array([0.5, 0.5, 0.1]), np.array([1, 0, 0])) == 0.5  # equal scores: one cut
    assert f1_threshold(np.array([0.3, 0.2]), np.array([0, 0])) is None  # nothing to find


def test_detection_metrics_count_the_confusion_at_the_threshold():
    from radclip.core.metrics import detection_metrics, detection_table

    scores = np.array([0.9, 0.8, 0.6, 0.4, 0.3, 0.1])
    targets = np.array([1, 0, 1, 0, 1, 0])
    got = detection_metrics(scores, targets, 0.5)  # called: 0.9, 0.8, 0.6 -> tp 2, fp 1, fn 1, tn 2
    assert got["specificity"] == pytest.approx(2 / 3) and got["precision"] == pytest.approx(2 / 3)
    assert got["recall"] == pytest.approx(2 / 3) and got["f1"] == pytest.approx(2 / 3)
    assert got["auc"] == pytest.approx(roc_auc_score(targets, scores))
    none_called = detection_metrics(scores, targets, 2.0)
    assert np.isnan(none_called["precision"]) and none_called["recall"] == 0 and none_called["specificity"] == 1
    table = detection_table(np.column_stack([scores, scores]), np.column_stack([targets, np.ones(6, int)]),
                            [0.5, 0.5], ["A", "B"])
    assert np.isnan(table["per_class"]["B"]["specificity"]) and np.isnan(table["per_class"]["B"]["auc"])
    assert table["mean"]["specificity"] == pytest.approx(2 / 3)  # B has no negatives: left out of the mean
    assert table["mean"]["recall"] == pytest.approx((2 / 3 + 3 / 6) / 2)
    assert table["per_class"]["A"]["threshold"] == 0.5
