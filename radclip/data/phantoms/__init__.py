"""Deterministic phantom radiology data: the embedded default dataset.

Real collections (CheXpert, brain tumour MRI, IXI, COVID-CT-MD) and real CLIP
weights cannot be downloaded in the embedded setting, so the pipeline runs on
phantoms: synthetic studies drawn with numpy and written in the real file
formats and folder layouts (PNG/JPEG, DICOM single files, series and
multi-frame, NIfTI), so every adapter, curation step and evaluation suite runs
exactly as on real data. The content is meant to be learnable from pixels: a
small CLIP trained on it can tell region, modality and condition apart.

The package, one concept a module:

* :mod:`~radclip.data.phantoms.geometry`: grids in patient coordinates, soft-edged shapes, textures;
* :mod:`~radclip.data.phantoms.noise`: the MRI, CT and X-ray noise models;
* :mod:`~radclip.data.phantoms.brain`, :mod:`~radclip.data.phantoms.chest_xray`,
  :mod:`~radclip.data.phantoms.chest_ct`, :mod:`~radclip.data.phantoms.abdomen_ct`,
  :mod:`~radclip.data.phantoms.knee`: one scene each (anatomy, renderer, findings),
  with :mod:`~radclip.data.phantoms.ct_parts` shared by the CT scenes;
* :mod:`~radclip.data.phantoms.scenes`: ``Scene``, ``Finding`` and the ``SCENES`` registry;
* :mod:`~radclip.data.phantoms.render`: drawing one study (``synthesize``);
* :mod:`~radclip.data.phantoms.writers`: the file writers and ``run_job``;
* :mod:`~radclip.data.phantoms.plan`: random streams and the training plan;
* :mod:`~radclip.data.phantoms.suites`: the evaluation suites' layouts (four focal-finding
  tasks and the sex suite, whose label is whole-volume head size and shape);
* :mod:`~radclip.data.phantoms.generation`: ``generate``, which writes it all.

Determinism
-----------
Each study has its own generator ``default_rng([seed, stream, index])``, split
into anatomy, finding and noise streams; which study gets which scene,
conditions, format and patient comes from a separate plan stream. Files carry
no timestamps (gzip mtime 0 for NIfTI, fixed DICOM dates, UIDs from
``uid_seed``), so the same params give byte-identical output whatever the
number of workers (on one platform and numpy version).
"""

from radclip.data.phantoms.generation import ANATOMY_TRUTH, LESION_TRUTH, generate
from radclip.data.phantoms.geometry import Grid, Slab
from radclip.data.phantoms.plan import (
    TRAIN_2D_MIX,
    TRAIN_3D_MIX,
    TrainRow,
    plan_training,
)
from radclip.data.phantoms.render import (
    Rendered,
    RenderSettings,
    image_grid,
    synthesize,
    volume_grid,
)
from radclip.data.phantoms.scenes import SCENES, Finding, Scene
from radclip.data.phantoms.suites import (
    CHEXPERT_5,
    CHEXPERT_OBSERVATIONS,
    SuitePlan,
    plan_suites,
)
from radclip.data.phantoms.writers import Job, run_job, write_nifti

__all__ = [
    "ANATOMY_TRUTH",
    "CHEXPERT_5",
    "CHEXPERT_OBSERVATIONS",
    "LESION_TRUTH",
    "SCENES",
    "TRAIN_2D_MIX",
    "TRAIN_3D_MIX",
    "Finding",
    "Grid",
    "Job",
    "RenderSettings",
    "Rendered",
    "Scene",
    "Slab",
    "SuitePlan",
    "TrainRow",
    "generate",
    "image_grid",
    "plan_suites",
    "plan_training",
    "run_job",
    "synthesize",
    "volume_grid",
    "write_nifti",
]
