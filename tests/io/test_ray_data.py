"""embed_slices on Ray Data (radclip.io.ray_data): encoder actors on the local Ray build the very cache one process
builds, and the results come back in input order whatever order the actors finish in."""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import assert_same_cache, tiny_params

from radclip.config import Params

pytestmark = pytest.mark.slow


def _model(params: Params):
    from radclip.core.preprocessing import Preprocessing
    from radclip.jobs.common import vocabulary
    from radclip.training.build import build_model

    return build_model(params, vocabulary(params), Preprocessing.read_if_saved(params.resolve(params.paths.curated)))


@pytest.fixture(scope="module")
def in_process(tiny_curated, tmp_path_factory):
    from radclip.jobs.embed_slices import build_cache

    workspace = tiny_curated.workspace(tmp_path_factory.mktemp("ray-data"))
    params = tiny_params(workspace, embed={"engine": "local", "batch_volumes": 3})
    out = workspace / "in-process"
    build_cache(params, _model(params), out, meta={"engine": "any"}, progress=False)
    return workspace, out


def test_ray_data_actors_build_the_same_cache_as_one_process(in_process):
    from radclip.jobs.embed_slices import build_cache

    workspace, reference = in_process
    params = tiny_params(workspace, embed={"engine": "ray", "concurrency": 2, "batch_volumes": 3})
    info = build_cache(params, _model(params), workspace / "ray-data", meta={"engine": "any"}, progress=False)
    assert info["count"] > 3 and len(info["shards"]) >= 1
    assert_same_cache(workspace / "ray-data", reference)


def test_results_come_back_in_input_order_when_actors_finish_out_of_order(tiny_curated):
    from radclip.io.ray_cluster import ray_session
    from radclip.io.ray_data import map_in_order

    def make_encoder():
        def slow_on_even(number: int) -> np.ndarray:
            time.sleep(0.3 if number % 2 == 0 else 0.0)  # even batches finish after the odd ones started later
            return np.full((1 + number % 3, 2), number, dtype=np.float32)  # shapes differ between batches
        return slow_on_even

    with ray_session(tiny_curated.params):
        outputs = list(map_in_order(make_encoder, 12, concurrency=2))
    assert [int(output[0, 0]) for output in outputs] == list(range(12))
    assert [output.shape for output in outputs] == [(1 + n % 3, 2) for n in range(12)]


def test_evaluation_image_features_on_ray_data_actors_equal_one_process(in_process):
    from radclip.evaluation.features import image_features
    from radclip.jobs.embed_slices import batch_engine

    workspace, _ = in_process
    local = tiny_params(workspace, embed={"engine": "local"})
    on_ray = tiny_params(workspace, embed={"engine": "ray", "concurrency": 2})
    model = _model(local)
    curated = local.resolve(local.paths.curated)
    collection = next(c.name for c in local.data.collections if c.role == "train")
    with batch_engine(local) as engine:
        assert not engine.on_ray
        reference = image_features(model, curated, collection, batch_size=5, engine=engine)
    with batch_engine(on_ray) as engine:
        assert engine.on_ray and engine.device == "cpu"
        features = image_features(model, curated, collection, batch_size=5, engine=engine)
    assert len(reference.features) > 10  # several batches, the last one short
    # Row order is the manifest's on both paths; the actors' single-threaded matmuls round differently.
    np.testing.assert_allclose(features.features, reference.features, atol=1e-5)
    assert (features.source_paths == reference.source_paths).all()
