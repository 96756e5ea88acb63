"""radclip.core.preprocessing: the intensity mapping shared by 2D images and volume slices.

(The contract curation writes and serving reads back is tested end to end in tests/data/test_curate.py
and tests/test_serving.py; pixel normalisation from a checkpoint in tests/core/test_models.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from radclip.core.preprocessing import normalise_volume, to_display_range


@pytest.mark.parametrize("window", [(-600.0, 1500.0), None])
def test_volume_display_range_gives_back_what_a_2d_image_of_the_same_values_shows(window):
    """A slice mapped to [0, 1] by the recorded range equals the 2D display mapping of the same
    values (CT window, else 0.5/99.5 percentiles): the 2D encoder sees 3D slices as it saw 2D images."""
    rng = np.random.default_rng(0)
    hu = rng.choice([-1024.0, -850.0, -500.0, 40.0, 700.0], size=(4, 8, 8)) + rng.normal(0, 5, (4, 8, 8))
    volume, (low, high) = normalise_volume(hu, 4, 8, window, "ct.nii.gz")  # same shape: no resampling
    unit = np.clip((volume.astype(np.float32) - low) / (high - low), 0.0, 1.0)
    np.testing.assert_allclose(unit, to_display_range(hu, window, eight_bit=False), atol=5e-3)
