"""Rendering one study: a scene's anatomy on a grid, its findings, then its noise.

3D findings
-----------
In a volume a finding spans ``phantoms.lesion_slices`` (e.g. 2-4 of 32)
contiguous slices at a random depth: its extent along the slice axis matches
that slab and it is drawn only into those slices. Anatomy, texture and noise
come from random streams separate from the finding's, so a study rendered with
and without its finding differs only in the slab: averaging slice embeddings
dilutes the signal, attending to the right slices does not. A diffuse finding
(``Finding.diffuse``: atrophy, emphysema) changes the whole organ through the
anatomy instead: every slice through it shows the finding, and none is recorded
as a finding slice.

2D lesion boxes
---------------
Every focal finding of a 2D study also returns where it was drawn: the boxes
(``x, y, w, h`` in image pixels, the layout of NIH ChestX-ray14's box list)
around each connected part of what its drawing changed by at least
``BOX_CHANGE_FRACTION`` of its largest change, before noise, so a box is
what an annotator would draw around the visible lesion (a bilateral effusion
gives two). A finding that lives in the anatomy (``adjust`` only, such as
cardiomegaly) or a diffuse one draws nothing and has no box.

Traits
------
``traits`` replace fields of the sampled anatomy with values the plan chose per
patient (the sex suite's head semi-axes): a whole-study property, drawn into
every slice, recorded by the plan rather than returned as finding slices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from radclip.core.records import Plane
from radclip.data.phantoms.geometry import Grid, Rng, Slab, _plane_directions
from radclip.data.phantoms.scenes import SCENES, Finding, Scene


@dataclass(frozen=True)
class RenderSettings:
    seed: int
    image_size: int
    volume_shape: tuple[int, int, int]
    lesion_slices: tuple[int, int]


BOX_CHANGE_FRACTION = 0.25  # of a finding's largest pixel change: the visible extent its box encloses

# (finding, x, y, w, h): x the left edge's column, y the top edge's row, in pixels of the stored image
LesionBox = tuple[str, float, float, float, float]


@dataclass
class Rendered:
    """One synthesized study: float32 pixels in physical units (HU for CT, MR signal,
    X-ray brightness in [0, 1]), shaped (S, H, W) (S = 1 for 2D), with its geometry."""

    pixels: np.ndarray
    grid: Grid
    finding_slices: tuple[int, ...]  # volume slices the findings were drawn into (3D)
    finding_boxes: tuple[LesionBox, ...] = ()  # 2D: where each focal finding was drawn

    @property
    def image(self) -> np.ndarray:
        return self.pixels[0]


BOX_MIN_SHARE = 0.02  # parts with less of the finding's changed pixels are edge specks, not a box
# Parts whose boxes come closer than this (fraction of the image side) are one lesion split by
# vessels or ribs, and share one box; the two sides of a bilateral effusion stay apart.
BOX_MERGE_GAP = 0.06


def _merge_close(boxes: list[list[int]], gap: float) -> list[list[int]]:
    """Union of (x0, y0, x1, y1) boxes closer than ``gap`` on both axes, until none are."""
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if max(a[0], b[0]) - min(a[2], b[2]) < gap and max(a[1], b[1]) - min(a[3], b[3]) < gap:
                    boxes[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return boxes


def drawn_boxes(name: str, before: np.ndarray, after: np.ndarray) -> list[LesionBox]:
    """Boxes around where drawing ``name`` changed a 2D image by at least ``BOX_CHANGE_FRACTION`` of
    its largest change: one per connected part (8-neighbour), specks dropped, close parts joined
    (see the constants); none when it changed nothing. Sorted by position (top, then left)."""
    change = np.abs(after.astype(np.float64) - before.astype(np.float64))
    peak = float(change.max())
    if peak <= 0.0:
        return []
    changed = change >= BOX_CHANGE_FRACTION * peak
    parts, _ = ndimage.label(changed, structure=np.ones((3, 3)))
    sizes = np.bincount(parts.ravel())
    boxes = [[found[1].start, found[0].start, found[1].stop, found[0].stop]
             for label, found in enumerate(ndimage.find_objects(parts), start=1)
             if found is not None and sizes[label] >= BOX_MIN_SHARE * changed.sum()]
    boxes = _merge_close(boxes, BOX_MERGE_GAP * max(changed.shape))
    return [(name, float(x0), float(y0), float(x1 - x0), float(y1 - y0))
            for x0, y0, x1, y1 in sorted(boxes, key=lambda b: (b[1], b[0]))]


def volume_grid(scene: Scene, shape: Sequence[int], plane: Plane, depth: float = 0.0) -> Grid:
    """A volume through the scene's field of view; slices are always the thickest axis."""
    rows, columns = scene.fov_mm / shape[1], scene.fov_mm / shape[2]
    thickness = max(scene.coverage_mm / shape[0], 1.25 * max(rows, columns))
    return Grid.build(plane, shape, (thickness, rows, columns), depth)


def image_grid(scene: Scene, size: int, depth: float = 0.0, plane: Plane | None = None) -> Grid:
    """One 2D slice; ``depth`` is the slice's patient coordinate along its normal axis."""
    plane = plane or scene.plane_2d
    step = scene.fov_mm / size
    normal = _plane_directions(plane)[0]
    sign = float(normal[int(np.argmax(np.abs(normal)))])  # Grid offsets run along the (signed) normal
    return Grid.build(plane, (1, size, size), (5.0, step, step), depth * sign)


def _pick_slab(
    finding: Finding, anatomy: Any, grid: Grid, rng: Rng, lesion_slices: tuple[int, int]
) -> tuple[int, int, Slab]:
    """Choose ``n`` contiguous slices at a random depth the finding allows."""
    positions = grid.slice_positions
    n = min(int(rng.integers(lesion_slices[0], lesion_slices[1] + 1)), len(positions))
    assert finding.depth is not None  # only volumes pick slabs, and every finding of a volume scene has a depth
    low, high = finding.depth(anatomy, grid.slice_axis)
    target = rng.uniform(min(low, high), max(low, high))
    nearest = int(np.argmin(np.abs(positions - target)))
    start = int(np.clip(nearest - (n - 1) // 2 - int(n % 2 == 0 and rng.uniform() < 0.5), 0, len(positions) - n))
    center = float(positions[start : start + n].mean())
    half = (n / 2 + 0.4) * grid.spacing[0]  # every slice of the slab cuts the finding
    return start, start + n, Slab(grid.slice_axis, center, half)


def synthesize(
    scene_key: str,
    conditions: Sequence[str],
    *,
    kind: Literal["2d", "3d"],
    rng: Rng,
    settings: RenderSettings,
    plane: Plane = "axial",
    traits: Mapping[str, Any] | None = None,
) -> Rendered:
    """Draw one study of a scene with the given conditions (none: normal).

    The generator is split into anatomy, finding and noise streams, so the same
    generator state with and without a finding gives the same anatomy and noise.
    ``traits`` (anatomy field -> value) replace what the anatomy sampler drew for
    those fields, after it drew them all (the other fields do not change).
    """
    scene = SCENES[scene_key]
    anatomy_rng, finding_rng, noise_rng = rng.spawn(3)
    anatomy = scene.sample(anatomy_rng)
    if traits:
        anatomy = dataclasses.replace(anatomy, **traits)
    findings = [scene.finding(name) for name in conditions]
    for finding in findings:
        if finding.adjust is not None:
            anatomy = finding.adjust(anatomy, finding_rng)

    slabs: list[tuple[int, int, Slab | None]]
    if kind == "3d":
        if plane not in scene.planes_3d:
            raise ValueError(f"{scene.region} {scene.modality} volumes are not drawn in the {plane} plane")
        grid = volume_grid(scene, settings.volume_shape, plane)
        slabs = [(0, grid.shape[0], None) if f.diffuse else _pick_slab(f, anatomy, grid, finding_rng,
                                                                       settings.lesion_slices) for f in findings]
    elif scene.slice_range is None:  # projection or fixed-plane 2D scene: findings need no depth
        grid = image_grid(scene, settings.image_size)
        slabs = [(0, 1, None) for _ in findings]
    else:  # a slice through the first finding (or anywhere in range for a normal study)
        # Sectional scenes are cut in any plane their volumes have (brain: axial or sagittal),
        # so the 2D encoder has seen every plane the adapter will get slices of.
        plane_2d = plane if plane in scene.planes_3d else scene.plane_2d
        axis = image_grid(scene, 1, 0.0, plane_2d).slice_axis
        # every focal finding of a sectional scene (slice_range set) has a depth; a diffuse one is everywhere
        focal = [f for f in findings if not f.diffuse]
        depth_range = focal[0].depth if focal else scene.slice_range
        assert depth_range is not None
        low, high = depth_range(anatomy, axis)
        depth = finding_rng.uniform(min(low, high), max(low, high))
        grid = image_grid(scene, settings.image_size, depth, plane_2d)
        slabs = [(0, 1, Slab(axis, depth)) for _ in findings]

    image = scene.render(anatomy, grid, anatomy_rng)
    touched: set[int] = set()
    boxes: list[LesionBox] = []
    for finding, (start, stop, slab) in zip(findings, slabs):
        spec = finding.place(anatomy, slab, finding_rng)
        before = image[0].copy() if kind == "2d" else None
        finding.draw(image[start:stop], grid.slices(start, stop), anatomy, spec)
        if before is not None and not finding.diffuse:
            boxes.extend(drawn_boxes(finding.name, before, image[0]))
        if not finding.diffuse:
            touched.update(range(start, stop))
    pixels = scene.finish(image, grid, noise_rng).astype(np.float32)
    return Rendered(pixels, grid, tuple(sorted(touched)) if kind == "3d" else (), tuple(boxes))
