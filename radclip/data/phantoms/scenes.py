"""Scenes and findings: one region x modality each, and the ``SCENES`` registry.

Each scene's anatomy, renderer and findings live in its own module
(:mod:`~radclip.data.phantoms.brain`, :mod:`~radclip.data.phantoms.chest_xray`,
:mod:`~radclip.data.phantoms.chest_ct`, :mod:`~radclip.data.phantoms.abdomen_ct`,
:mod:`~radclip.data.phantoms.knee`), its noise model in
:mod:`~radclip.data.phantoms.noise`.

Sizes, positions, tissue contrast and texture are drawn per study, so only the
findings separate the classes. Condition frequencies are long-tailed and a
minority of chest X-rays carry two findings (see ``SCENES``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from radclip.core.records import Plane
from radclip.data.phantoms.abdomen_ct import (
    _draw_kidney_cyst,
    _draw_liver_lesion,
    _kidney_depth,
    _liver_depth,
    _place_kidney_cyst,
    _place_liver_lesion,
    _render_abdomen_ct,
    _sample_abdomen_ct,
)
from radclip.data.phantoms.brain import (
    _adjust_atrophy,
    _brain_slice_range,
    _draw_glioma,
    _draw_meningioma,
    _draw_pituitary,
    _glioma_depth,
    _meningioma_depth,
    _pituitary_depth,
    _place_glioma,
    _place_meningioma,
    _place_pituitary,
    _render_brain,
    _sample_brain,
)
from radclip.data.phantoms.chest_ct import (
    _adjust_emphysema,
    _draw_covid,
    _draw_ct_nodule,
    _draw_pneumonia,
    _lung_depth,
    _place_covid,
    _place_ct_nodule,
    _place_pneumonia,
    _render_chest_ct,
    _sample_chest_ct,
)
from radclip.data.phantoms.chest_xray import (
    _adjust_atelectasis,
    _adjust_cardiomegaly,
    _draw_atelectasis,
    _draw_consolidation,
    _draw_edema,
    _draw_effusion,
    _draw_granuloma,
    _draw_hiatal_hernia,
    _draw_mass,
    _draw_nothing,
    _draw_pneumothorax,
    _draw_rib_fracture,
    _draw_subcutaneous_emphysema,
    _draw_xray_nodule,
    _place_atelectasis,
    _place_consolidation,
    _place_edema,
    _place_effusion,
    _place_granuloma,
    _place_hiatal_hernia,
    _place_mass,
    _place_nothing,
    _place_pneumothorax,
    _place_rib_fracture,
    _place_subcutaneous_emphysema,
    _place_xray_nodule,
    _render_chest_xray,
    _sample_chest_xray,
)
from radclip.data.phantoms.geometry import Grid, Rng
from radclip.data.phantoms.knee import (
    _draw_effusion_knee,
    _draw_meniscal_tear,
    _place_effusion_knee,
    _place_meniscal_tear,
    _render_knee,
    _sample_knee,
)
from radclip.data.phantoms.noise import _finish_ct, _finish_mr, _finish_xray


@dataclass(frozen=True)
class Finding:
    """A condition drawer.

    ``place(anatomy, slab, rng)`` decides where and how big (a spec);
    ``draw(image, grid, anatomy, spec)`` paints it in place. ``depth(anatomy,
    axis)`` gives the (lo, hi) patient coordinates along a slice axis where the
    finding can sit (None: projection or fixed-plane scenes). ``adjust`` changes
    the anatomy itself (an enlarged heart) before rendering. A ``diffuse`` finding
    is such a change of a whole organ (brain atrophy, emphysema): a volume shows it
    in every slice through the organ, so it has no depth or slab and adds no
    finding slices; a 2D slice of it lies anywhere in the scene's slice range.
    """

    name: str
    weight: float  # relative frequency among the scene's studies
    # The slab is a Slab in sectional scenes and None in projection/fixed-plane ones, and each
    # scene's place functions are typed for their own case, so it is Any here (like the anatomy).
    place: Callable[[Any, Any, Rng], Any]
    draw: Callable[[np.ndarray, Grid, Any, Any], None]
    depth: Callable[[Any, int], tuple[float, float]] | None = None
    adjust: Callable[[Any, Rng], Any] | None = None
    diffuse: bool = False


@dataclass(frozen=True)
class Scene:
    """One region x modality: anatomy sampler, renderer, noise model, findings."""

    key: str
    region: str
    modality: str
    sample: Callable[[Rng], Any]
    render: Callable[[Any, Grid, Rng], np.ndarray]
    finish: Callable[[np.ndarray, Grid, Rng], np.ndarray]
    findings: tuple[Finding, ...]
    normal_weight: float
    signal: Literal["mr", "ct", "xray"]
    fov_mm: float  # in-plane field of view
    coverage_mm: float = 160.0  # volumes: extent along the slice axis
    plane_2d: Plane = "axial"
    planes_3d: tuple[Plane, ...] = ()  # () = no volumes of this scene
    # Where a normal study's 2D slice may lie along a patient axis (2 = z for axial; sectional
    # scenes are cut in any of planes_3d); None: projection or fixed-plane scene.
    slice_range: Callable[[Any, int], tuple[float, float]] | None = None
    combos: tuple[tuple[tuple[str, ...], float], ...] = ()  # multi-label studies (2D)
    window: tuple[float, float] | None = None  # CT display window (centre, width)

    def finding(self, name: str) -> Finding:
        for candidate in self.findings:
            if candidate.name == name:
                return candidate
        raise KeyError(f"{self.region} {self.modality} has no condition {name!r}")

    def label_weights(self, kind: str) -> dict[tuple[str, ...], float]:
        """Relative frequency of each label set; volumes carry at most one finding."""
        weights: dict[tuple[str, ...], float] = {(): self.normal_weight}
        weights.update({(f.name,): f.weight for f in self.findings if f.weight > 0})
        if kind == "2d":
            weights.update(dict(self.combos))
        return weights


# --------------------------------------------------------------------------- registry


SCENES: dict[str, Scene] = {
    scene.key: scene
    for scene in (
        Scene(
            key="brain_mri",
            region="Brain",
            modality="MRI",
            sample=_sample_brain,
            render=_render_brain,
            finish=_finish_mr,
            findings=(
                Finding("Glioma", 0.26, _place_glioma, _draw_glioma, _glioma_depth),
                Finding("Meningioma", 0.26, _place_meningioma, _draw_meningioma, _meningioma_depth),
                Finding("Pituitary Tumor", 0.20, _place_pituitary, _draw_pituitary, _pituitary_depth),
                # Whole-volume findings, as real 3D training reports have them (atrophy, emphysema): without
                # one, nothing the adapter trains or is validated on asks it to keep what every slice shows.
                Finding("Atrophy", 0.14, _place_nothing, _draw_nothing, adjust=_adjust_atrophy, diffuse=True),
            ),
            normal_weight=0.28,
            signal="mr",
            fov_mm=220.0,
            coverage_mm=160.0,
            planes_3d=("axial", "sagittal"),
            slice_range=_brain_slice_range,
        ),
        Scene(
            key="chest_xray",
            region="Chest",
            modality="X-ray",
            sample=_sample_chest_xray,
            render=_render_chest_xray,
            finish=_finish_xray,
            findings=(
                Finding("Atelectasis", 0.12, _place_atelectasis, _draw_atelectasis, adjust=_adjust_atelectasis),
                Finding("Cardiomegaly", 0.12, _place_nothing, _draw_nothing, adjust=_adjust_cardiomegaly),
                Finding("Consolidation", 0.12, _place_consolidation, _draw_consolidation),
                Finding("Edema", 0.12, _place_edema, _draw_edema),
                Finding("Pleural Effusion", 0.12, _place_effusion, _draw_effusion),
                Finding("Pneumothorax", 0.025, _place_pneumothorax, _draw_pneumothorax),
                Finding("Nodule", 0.025, _place_xray_nodule, _draw_xray_nodule),
                # The long-tail collection's rare findings (CXR-LT): weight 0 keeps them out of the general
                # training mix, which draws from label_weights; the long-tail plan has its own weights.
                *(Finding(name, 0.0, place, draw) for name, place, draw in (
                    ("Rib Fracture", _place_rib_fracture, _draw_rib_fracture),
                    ("Mass", _place_mass, _draw_mass),
                    ("Calcified Granuloma", _place_granuloma, _draw_granuloma),
                    ("Hiatal Hernia", _place_hiatal_hernia, _draw_hiatal_hernia),
                    ("Subcutaneous Emphysema", _place_subcutaneous_emphysema, _draw_subcutaneous_emphysema),
                )),
            ),
            normal_weight=0.22,
            combos=(
                (("Cardiomegaly", "Edema"), 0.04),
                (("Edema", "Pleural Effusion"), 0.04),
                (("Cardiomegaly", "Pleural Effusion"), 0.02),
                (("Atelectasis", "Pleural Effusion"), 0.02),
            ),
            signal="xray",
            fov_mm=400.0,
            plane_2d="coronal",
        ),
        Scene(
            key="chest_ct",
            region="Chest",
            modality="CT",
            sample=_sample_chest_ct,
            render=_render_chest_ct,
            finish=_finish_ct,
            findings=(
                Finding("COVID-19", 0.28, _place_covid, _draw_covid, _lung_depth),
                Finding("Community-Acquired Pneumonia", 0.24, _place_pneumonia, _draw_pneumonia, _lung_depth),
                Finding("Nodule", 0.14, _place_ct_nodule, _draw_ct_nodule, _lung_depth),
                Finding("Emphysema", 0.14, _place_nothing, _draw_nothing, adjust=_adjust_emphysema, diffuse=True),
            ),
            normal_weight=0.34,
            signal="ct",
            fov_mm=380.0,
            coverage_mm=256.0,
            planes_3d=("axial",),
            slice_range=lambda a, axis: (a.domes[0] + 10.0, a.apex - 20.0),
            window=(-600.0, 1500.0),  # lung window
        ),
        Scene(
            key="abdomen_ct",
            region="Abdomen",
            modality="CT",
            sample=_sample_abdomen_ct,
            render=_render_abdomen_ct,
            finish=_finish_ct,
            findings=(
                Finding("Liver Lesion", 0.35, _place_liver_lesion, _draw_liver_lesion, _liver_depth),
                Finding("Kidney Cyst", 0.10, _place_kidney_cyst, _draw_kidney_cyst, _kidney_depth),
            ),
            normal_weight=0.55,
            signal="ct",
            fov_mm=380.0,
            coverage_mm=256.0,
            planes_3d=("axial",),
            slice_range=lambda a, axis: (-60.0, 80.0),
            window=(50.0, 400.0),  # soft-tissue window
        ),
        Scene(
            key="knee_mri",
            region="Knee",
            modality="MRI",
            sample=_sample_knee,
            render=_render_knee,
            finish=_finish_mr,
            findings=(
                Finding("Joint Effusion", 0.35, _place_effusion_knee, _draw_effusion_knee),
                Finding("Meniscal Tear", 0.10, _place_meniscal_tear, _draw_meniscal_tear),
            ),
            normal_weight=0.55,
            signal="mr",
            fov_mm=160.0,
            plane_2d="sagittal",
        ),
    )
}
