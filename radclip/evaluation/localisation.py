"""LRCLR's evaluation on a suite with lesion boxes: where the models look, and zero-shot (stage ``localise``).

Three heatmaps over the vision tower's patch grid, each scored against the curated boxes by
:mod:`radclip.core.localisation` (pointing game, top-2 hit, heatmap AUROC, IoU, each beside its
chance level with a bootstrap CI, per finding):

* ``control_rollout``: the control arm's attention rollout, the CLS row averaged over heads
  (the paper's baseline);
* ``lrclr_rollout``: the same of the LRCLR arm;
* ``lrclr_text_regions``: the LRCLR arm's cross-modal attention from t_l of the finding's
  caption ("Chest X-ray with Nodule") to its K selected regions, put on their patches (a patch
  two heads picked gets both weights; the others 0), the map LRCLR colours regions by.

Zero-shot (the paper's Table 1 claim) uses the *global* embeddings of both arms: per finding,
P(present) from the finding's caption against the normal caption (CheXzero's prompt pairs), AUROC
macro over findings, and the arms' difference with a paired bootstrap CI over images; and Table 1's
specificity, precision, recall and F1 at each finding's threshold, chosen per arm on the training
collections' validation split (the F1-best one there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from radclip.config import CaptionTemplate, LrclrThresholds, Params
from radclip.core.localisation import expected_top_k_hit, localise_image, patch_coverage, summarise_localisation
from radclip.core.metrics import bootstrap_ci, multilabel_logits, validation_thresholds
from radclip.core.models.regions import rollout_heatmap
from radclip.data.captions import make_caption
from radclip.data.shards import CuratedDataset, read_boxes, validation_query

HEATMAPS = ("control_rollout", "lrclr_rollout", "lrclr_text_regions")
LRCLR_HEATMAPS = ("lrclr_rollout", "lrclr_text_regions")
TOP_K = 2


def caption_template(params: Params, suite: str) -> CaptionTemplate:
    collection = next((c for c in params.data.collections if c.name == suite), None)
    if collection is None:
        raise ValueError(f"no collection {suite!r} in data.collections")
    return collection.caption or params.data.caption  # as curation captions it


@dataclass
class BoxedSuite:
    """A curated 2D suite with its lesion boxes: the (image, finding) pairs that have boxes."""

    name: str
    images: np.ndarray  # (N, H, W) uint8, curated
    conditions: list[tuple[str, ...]]  # per image
    pairs: list[tuple[int, str]]  # (image row, finding) with at least one box
    boxes: dict[tuple[int, str], list[tuple[float, float, float, float]]]
    region: str
    modality: str
    template: CaptionTemplate
    image_size: int = field(init=False)

    def __post_init__(self) -> None:
        self.image_size = int(self.images.shape[-1])

    def caption(self, conditions: Sequence[str]) -> str:
        return make_caption(self.template, self.region, self.modality, tuple(conditions))


def boxed_suite(params: Params, suite: str) -> BoxedSuite:
    """The curated records of ``suite`` and their boxes (lesion_boxes.csv); it must have some."""
    curated = params.resolve(params.paths.curated)
    data = CuratedDataset(curated, query=f"collection == '{suite}' and kind == '2d'")
    if not len(data):
        raise ValueError(f"suite {suite!r} has no curated 2D records in {curated}")
    manifest = data.manifest
    rows = {record: row for row, record in enumerate(manifest["record_id"])}
    boxes: dict[tuple[int, str], list[tuple[float, float, float, float]]] = {}
    table = read_boxes(curated)
    for box in table[table["collection"] == suite].itertuples():
        boxes.setdefault((rows[box.record_id], str(box.condition)), []).append((box.x, box.y, box.w, box.h))
    if not boxes:
        raise ValueError(f"suite {suite!r} has no lesion boxes in {curated / 'lesion_boxes.csv'}")
    images = np.stack([data.array(i) for i in range(len(data))])
    return BoxedSuite(name=suite, images=images,
                      conditions=[tuple(c for c in str(v).split("|") if c) for v in manifest["conditions"].fillna("")],
                      pairs=sorted(boxes), boxes=boxes,
                      region=str(manifest["region"].iloc[0]), modality=str(manifest["modality"].iloc[0]),
                      template=caption_template(params, suite))


def patch_grid(model) -> int:
    vision = model.clip.config.vision_config
    return int(vision.image_size) // int(vision.patch_size)


def regions_to_patches(indices: torch.Tensor, weights: torch.Tensor, patches: int) -> torch.Tensor:
    """``(B, K)`` selected patch indices and their weights → ``(B, patches)``: each patch the sum of the
    weights of the heads that picked it, 0 where none did."""
    heatmap = torch.zeros(indices.shape[0], patches, dtype=weights.dtype, device=weights.device)
    return heatmap.scatter_add_(1, indices, weights)


@dataclass
class ModelMaps:
    rollout: np.ndarray  # (N, P) per image
    selected: np.ndarray  # (N, K) selected patch indices per image
    text_regions: np.ndarray | None = None  # (pairs, P) per (image, finding) pair; None without cross-modal


@torch.no_grad()
def model_maps(model, suite: BoxedSuite, *, batch_size: int = 64) -> ModelMaps:
    """Rollout heatmaps and selected regions of every image; with a cross-modal transformer, the text→region
    heatmap of every (image, finding) pair, t_l from that finding's caption."""
    model.eval()
    patches = patch_grid(model) ** 2
    rollouts, selected = [], []
    for start in range(0, len(suite.images), batch_size):
        regions = model.encode_regions(suite.images[start:start + batch_size])
        rollouts.append(rollout_heatmap(regions.rollout).float().cpu().numpy())
        selected.append(regions.indices.cpu().numpy())
    maps = ModelMaps(np.concatenate(rollouts), np.concatenate(selected))
    if model.cross_modal is None:
        return maps
    heat = []
    for start in range(0, len(suite.pairs), batch_size):
        chunk = suite.pairs[start:start + batch_size]
        regions = model.encode_regions(suite.images[[row for row, _ in chunk]])
        local = model.local_features(regions, [suite.caption((finding,)) for _, finding in chunk])
        heat.append(regions_to_patches(regions.indices, local.text_to_regions.float(), patches).cpu().numpy())
    maps.text_regions = np.concatenate(heat)
    return maps


def pair_heatmaps(suite: BoxedSuite, control: ModelMaps, lrclr: ModelMaps) -> dict[str, np.ndarray]:
    """Each heatmap per (image, finding) pair, ``(pairs, P)``, in ``suite.pairs`` order."""
    rows = [row for row, _ in suite.pairs]
    if lrclr.text_regions is None:
        raise ValueError("the LRCLR arm has no cross-modal transformer: was it trained with λ = 0?")
    return {"control_rollout": control.rollout[rows], "lrclr_rollout": lrclr.rollout[rows],
            "lrclr_text_regions": lrclr.text_regions}


def regions_hit(selected: np.ndarray, boxes, image_size: float, grid: int) -> dict[str, float]:
    """Whether any of an image's selected regions (patch indices, repeats allowed) touches the finding's
    boxes, and the chance of that for as many distinct patches drawn at random: the regions LRCLR's
    text→region attention can choose from, so its ceiling."""
    hits = patch_coverage(boxes, image_size, grid) > 0
    chosen = np.zeros(grid * grid)
    chosen[np.unique(selected)] = 1.0
    k = int(chosen.sum())
    return {"regions_hit": expected_top_k_hit(chosen, hits, k),
            "regions_hit_chance": expected_top_k_hit(np.zeros_like(chosen), hits, k)}


def localisation_table(suite: BoxedSuite, heatmaps: Mapping[str, np.ndarray], grid: int, *, level: float,
                       n_boot: int, seed: int, selected: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Per finding and heatmap the summary of :func:`summarise_localisation` (pairs of that finding),
    each finding's mean box area in patches (below 1: smaller than one patch) and, per arm in
    ``selected`` (its selected patches per image row), how often a selected region touches a box."""
    findings = sorted({finding for _, finding in suite.pairs})
    patch_area = (suite.image_size / grid) ** 2
    table: dict[str, Any] = {}
    for finding in findings:
        indices = [i for i, (_, f) in enumerate(suite.pairs) if f == finding]
        entry: dict[str, Any] = {"pairs": len(indices)}
        for name, maps in heatmaps.items():
            scores = [localise_image(maps[i], suite.boxes[suite.pairs[i]], suite.image_size, grid, top_k=TOP_K)
                      for i in indices]
            entry[name] = summarise_localisation(scores, level=level, n_boot=n_boot, seed=seed)
        for arm, rows in (selected or {}).items():
            scores = [regions_hit(rows[suite.pairs[i][0]], suite.boxes[suite.pairs[i]], suite.image_size, grid)
                      for i in indices]
            entry[f"{arm}_regions"] = summarise_localisation(scores, level=level, n_boot=n_boot, seed=seed)
        areas = [sum(w * h for _, _, w, h in suite.boxes[suite.pairs[i]]) for i in indices]
        entry["box_area_patches"] = float(np.mean(areas) / patch_area)
        table[finding] = entry
    return table


@dataclass
class SuiteImages:
    """A curated 2D suite's images and findings, and how curation captions them (zero-shot inputs)."""

    images: np.ndarray  # (N, H, W) uint8
    conditions: list[tuple[str, ...]]
    caption: Callable[[Sequence[str]], str]


def _images_of(data: CuratedDataset, caption: Callable[[Sequence[str]], str]) -> SuiteImages:
    manifest = data.manifest
    return SuiteImages(np.stack([data.array(i) for i in range(len(data))]),
                       [tuple(c for c in str(v).split("|") if c) for v in manifest["conditions"].fillna("")], caption)


def suite_images(params: Params, suite: str) -> SuiteImages:
    data = CuratedDataset(params.resolve(params.paths.curated), query=f"collection == '{suite}' and kind == '2d'")
    if not len(data):
        raise ValueError(f"zero-shot suite {suite!r} has no curated 2D records")
    template = caption_template(params, suite)
    region, modality = str(data.manifest["region"].iloc[0]), str(data.manifest["modality"].iloc[0])
    return _images_of(data, lambda conditions: make_caption(template, region, modality, tuple(conditions)))


def validation_images(params: Params, like: SuiteImages, region: str, modality: str) -> SuiteImages | None:
    """The training collections' validation split of one region/modality (2D), captioned like ``like``:
    where zero-shot thresholds are chosen (never on an evaluation suite); None if it has none."""
    query = f"{validation_query(region, modality)} and kind == '2d'"
    data = CuratedDataset(params.resolve(params.paths.curated), query=query)
    return _images_of(data, like.caption) if len(data) else None


def zero_shot_logits(model, suite: SuiteImages, findings: Sequence[str] | None = None, *, batch_size: int = 128
                     ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Global-embedding zero-shot: ``(N, C)`` logits of "finding present" (its caption against the
    normal caption), ``(N, C)`` 0/1 targets, and the C findings (default: the suite's, sorted)."""
    findings = sorted({c for value in suite.conditions for c in value}) if findings is None else list(findings)
    with torch.no_grad():
        features = np.concatenate([model.encode_image(suite.images[i:i + batch_size]).float().cpu().numpy()
                                   for i in range(0, len(suite.images), batch_size)])
        positive = model.encode_text([suite.caption((f,)) for f in findings]).float().cpu().numpy()
        negative = np.repeat(model.encode_text([suite.caption(())]).float().cpu().numpy(), len(findings), axis=0)
        scale = float(model.logit_scale_exp().detach())
    targets = np.array([[int(f in value) for f in findings] for value in suite.conditions])
    return multilabel_logits(features, positive, negative, logit_scale=scale), targets, findings


def detection_thresholds(model, validation: SuiteImages | None, findings: Sequence[str]) -> list[float]:
    """Per finding the logit threshold with the best F1 on the validation images; 0 (P(present) = 0.5)
    for a finding the validation split does not show (every finding, without validation images)."""
    if validation is None:
        return [0.0] * len(findings)
    logits, targets, _ = zero_shot_logits(model, validation, findings)
    return validation_thresholds(logits, targets)


def macro_auroc(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean over findings with both classes present of the AUROC; NaN if none has."""
    values = [roc_auc_score(targets[:, c], logits[:, c]) for c in range(targets.shape[1])
              if 0 < targets[:, c].sum() < len(targets)]
    return float(np.mean(values)) if values else float("nan")


def paired_auroc_difference(lrclr: np.ndarray, control: np.ndarray, targets: np.ndarray, *, n_boot: int,
                            level: float, seed: int) -> dict[str, float]:
    """Macro AUROC of each arm and lrclr − control with a paired bootstrap CI (images resampled jointly)."""
    low, high = bootstrap_ci(lambda a, b, t: macro_auroc(a, t) - macro_auroc(b, t), lrclr, control, targets,
                             n_boot=n_boot, alpha=1 - level, seed=seed)
    first, second = macro_auroc(lrclr, targets), macro_auroc(control, targets)
    return {"lrclr": first, "control": second, "difference": first - second, "ci_low": low, "ci_high": high}


def verdicts(table: Mapping[str, Any], zero_shot: Mapping[str, Mapping[str, Any]],
             thresholds: LrclrThresholds) -> dict[str, Any]:
    """Issue 12's pre-registered criteria (a)–(c) from the localisation table and the zero-shot comparison.

    (a) per finding: LRCLR's text→region top-2 hit and pointing game CIs exclude chance; a finding whose
    boxes average less than one patch is marked excusable, not passed. (b) mean over findings of LRCLR's
    best heatmap's pointing − the control rollout's ≥ ``pointing_gain`` (best: the LRCLR heatmap with the
    higher mean). (c) mean over the zero-shot suites of lrclr − control macro AUROC ≥ −margin.
    """
    per_finding = {}
    for finding, entry in table.items():
        text = entry["lrclr_text_regions"]
        passed = bool(text[f"top{TOP_K}"]["beats_chance"] and text["pointing"]["beats_chance"])
        per_finding[finding] = {"pass": passed, "excusable": not passed and entry["box_area_patches"] < 1.0,
                                f"top{TOP_K}_ci_low": text[f"top{TOP_K}"]["ci_low"],
                                f"top{TOP_K}_chance": text[f"top{TOP_K}"]["chance"],
                                "pointing_ci_low": text["pointing"]["ci_low"],
                                "pointing_chance": text["pointing"]["chance"]}
    mean_pointing = {name: float(np.mean([entry[name]["pointing"]["mean"] for entry in table.values()]))
                     for name in HEATMAPS}
    best = max(LRCLR_HEATMAPS, key=lambda name: mean_pointing[name])
    gain = mean_pointing[best] - mean_pointing["control_rollout"]
    difference = float(np.mean([values["difference"] for values in zero_shot.values()]))
    a_pass = all(v["pass"] or v["excusable"] for v in per_finding.values())
    return {
        "a_text_regions_beat_chance": {"pass": a_pass, "findings": per_finding,
                                       "excused": sorted(f for f, v in per_finding.items() if v["excusable"])},
        "b_pointing_gain": {"pass": bool(gain >= thresholds.pointing_gain), "gain": gain, "best_heatmap": best,
                            "threshold": thresholds.pointing_gain, "mean_pointing": mean_pointing},
        "c_zero_shot_auroc": {"pass": bool(difference >= -thresholds.zero_shot_auroc_margin),
                              "difference": difference, "margin": thresholds.zero_shot_auroc_margin},
    }
