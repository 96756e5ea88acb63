"""CXR-CML's training pieces (paper 003): its arms, its data and the pseudo-labels of each epoch.

The arms differ in the captions they train on and in the metric loss; everything else (start model,
epochs, data order, seeds) is the same, so a difference between two arms is the method's:

* ``control``: InfoNCE on template captions ("Chest X-ray with Edema") — CheXzero fine-tuned again;
* ``meta``: InfoNCE on meta-label captions ("Chest X-ray: edema is present") — the paper's first gain;
* ``gauss``: meta + triplets on a Gaussian mixture's pseudo-labels (ν = ∞);
* ``t``: meta + triplets on a Student-t mixture's pseudo-labels (ν = ``cml.nu``) — CXR-CML.

Choices the paper leaves open, made here: the mixture is fitted on the whole training split, not per
batch (a batch of 32 cannot hold 12 components), every ``cml.refit_every`` epochs on the current
encoder's embeddings of every training image; diagonal covariances after a PCA to ``cml.pca_dims``
components (full 128-dimensional covariances of 12 components would need more images than the
collection has); as many components as the collection has classes (the paper's N = 40 classes);
semi-hard triplets within a worker's batch, Euclidean on normalised embeddings; only the image tower
trains (the text tower is frozen, as in every RadCLIP stage).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from radclip.config import CaptionTemplate, Params

Arm = Literal["control", "meta", "gauss", "t"]


@dataclass(frozen=True)
class ArmSpec:
    captions: Literal["template", "meta"]
    mixture: Literal["gauss", "t"] | None  # None: no metric loss


ARMS: dict[str, ArmSpec] = {
    "control": ArmSpec("template", None),
    "meta": ArmSpec("meta", None),
    "gauss": ArmSpec("meta", "gauss"),
    "t": ArmSpec("meta", "t"),
}


def arm_spec(arm: str) -> ArmSpec:
    if arm not in ARMS:
        raise ValueError(f"unknown CXR-CML arm {arm!r}: expected one of {sorted(ARMS)}")
    return ARMS[arm]


def arm_caption_template(params: Params, arm: str) -> CaptionTemplate:
    """The captions an arm trains and is scored with: the collection's own template for ``control``, CXR-CML's
    meta labels for the others."""
    if arm_spec(arm).captions == "meta":
        return CaptionTemplate(style="meta")
    collection = next((c for c in params.data.collections if c.name == params.cml.collection), None)
    return (collection.caption if collection is not None else None) or params.data.caption


def collection_query(params: Params, split: str) -> str:
    return f"collection == '{params.cml.collection}' and kind == '2d' and split == '{split}'"


class LongTailDataset(Dataset):
    """The long-tail collection's 2D records of one split, captioned by the arm: (uint8 image, caption id,
    index); the index finds the record's pseudo-label."""

    def __init__(self, params: Params, curated_dir: str, split: str, arm: str):
        from radclip.data.captions import make_caption
        from radclip.data.shards import CuratedDataset

        self.data = CuratedDataset(curated_dir, query=collection_query(params, split))
        if not len(self.data):
            raise ValueError(f"cml.collection {params.cml.collection!r} has no curated 2D records in split {split!r} "
                             f"of {curated_dir} (is it in data.collections, with role finetune?)")
        template = arm_caption_template(params, arm)
        manifest = self.data.manifest
        self.label_sets = [str(v) if isinstance(v, str) else "" for v in manifest["conditions"]]
        texts = [make_caption(template, region, modality, tuple(c for c in conditions.split("|") if c))
                 for region, modality, conditions in zip(manifest["region"], manifest["modality"], self.label_sets)]
        self.captions = sorted(set(texts))
        lookup = {caption: index for index, caption in enumerate(self.captions)}
        self.caption_ids = np.array([lookup[t] for t in texts])

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return torch.from_numpy(np.array(self.data.array(index))), int(self.caption_ids[index]), index

    def classes(self) -> list[str]:
        return sorted({c for value in self.label_sets for c in value.split("|") if c})


def mixture_components(params: Params, dataset: LongTailDataset) -> int:
    """``cml.components``, or one per class of the collection (normal included)."""
    components = params.cml.components or len(dataset.classes()) + 1
    if components >= len(dataset):
        raise ValueError(f"cml: {components} mixture components need more than the {len(dataset)} training "
                         f"records of {params.cml.collection!r} (set cml.components lower or add data)")
    return components


@dataclass(frozen=True)
class PseudoLabels:
    labels: np.ndarray  # (N,) mixture component per training record
    nmi: float  # normalised mutual information with the true label sets (a diagnostic)
    explained_variance: float  # of the embeddings, by the principal components the mixture saw


def pseudo_labels(embeddings: np.ndarray, label_sets: list[str], params: Params, arm: str, seed: int,
                  components: int) -> PseudoLabels:
    """Fit the arm's mixture on the training embeddings and take each record's most responsible component."""
    from sklearn.metrics import normalized_mutual_info_score

    from radclip.core.mixtures import cluster_embeddings

    mixture = arm_spec(arm).mixture
    if mixture is None:
        raise ValueError(f"arm {arm!r} has no mixture")
    nu = math.inf if mixture == "gauss" else params.cml.nu
    clustering = cluster_embeddings(embeddings, components, nu=nu, pca_dims=params.cml.pca_dims, seed=seed,
                                    max_iter=params.cml.mixture_iterations)
    nmi = float(normalized_mutual_info_score(label_sets, clustering.labels))
    return PseudoLabels(clustering.labels, nmi, clustering.explained_variance)


def embed_all(model, dataset: LongTailDataset, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Normalised image embeddings of every record of ``dataset``, in its order (eval mode, no gradient)."""
    was_training = model.training
    model.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            images = torch.stack([dataset[i][0] for i in range(start, min(len(dataset), start + batch_size))])
            chunks.append(model.encode_image(images.to(device)).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(chunks)
