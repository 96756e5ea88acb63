"""radclip.data.slice_cache: which records are cached, exactness, padding, determinism, sharding, staleness;
the fingerprint check of 3D evaluation (radclip.evaluation.features) and jobs.embed_slices.cache_for."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from radclip.config import Params
from radclip.core.models import RadCLIP
from radclip.data.curate import MANIFEST_COLUMNS, MANIFEST_SCHEMA
from radclip.data.slice_cache import (
    INDEX_FILE,
    INFO_FILE,
    TIMING_KEYS,
    SliceCacheDataset,
    SliceCacheError,
    encoder_fingerprint,
    write_slice_cache,
)
from radclip.evaluation.features import volume_features
from radclip.jobs import embed_slices
from radclip.training.build import build_model

SUITE = "phantom-3d"  # the collection of every 3D record of make_curated
CAPTIONS = ["Brain MRI with Glioma", "Normal Brain MRI", "Chest CT with COVID-19", "Chest X-ray with Edema"]
# Two planes with different slice counts and in-plane sizes: batches must split on shape, shards pad slices.
AXIAL_SLICES, AXIAL_SIZE = 6, 16
CORONAL_SLICES, CORONAL_SIZE = 4, 12
TINY = {
    "model": {
        "init_seed": 0,
        "projection_dim": 16,
        "vision": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 8},
        "text": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        "adapter": {"heads": 2, "max_slices": 8},
    },
    "curate": {"image_size": 16},
}


# Display ranges recorded by curation (z units); the others have none (NaN: percentile fallback).
DISPLAY = {"ax0": (-1.0, 2.0), "cor1": (-0.5, 0.5)}
NO_RANGE = (float("nan"), float("nan"))


def tiny_model(seed: int = 0) -> RadCLIP:
    return build_model(Params.model_validate({**TINY, "model": {**TINY["model"], "init_seed": seed}}), CAPTIONS)


def _row(record_id: str, kind: str, role: str, split: str, caption: str, plane: str, shard: str, shard_index: int, slices: int, size: int) -> dict:
    row = {name: "" for name in MANIFEST_COLUMNS}
    row.update(
        record_id=record_id, collection=f"phantom-{kind}", role=role, kind=kind, split=split, caption=caption,
        label=caption.split(" with ")[-1] if " with " in caption else "Normal", conditions="", plane=plane,
        patient_hash=f"p-{record_id}", shard=shard, shard_index=shard_index, slices=slices, height=size, width=size,
        mean=0.0, std=1.0, min=-3.0, max=3.0, display_low=DISPLAY.get(record_id, NO_RANGE)[0],
        display_high=DISPLAY.get(record_id, NO_RANGE)[1],
    )
    return row


def make_curated(root: Path) -> dict[str, np.ndarray]:
    """A hand-made curated dir: 3 axial + 2 coronal volumes (float16 z-scores) and one 2D image; returns volumes by id."""
    rng = np.random.default_rng(0)
    (root / "shards").mkdir(parents=True)
    axial = rng.standard_normal((3, AXIAL_SLICES, AXIAL_SIZE, AXIAL_SIZE)).astype(np.float16)
    coronal = rng.standard_normal((2, CORONAL_SLICES, CORONAL_SIZE, CORONAL_SIZE)).astype(np.float16)
    np.save(root / "shards/3d-axial-00000.npy", axial)
    np.save(root / "shards/3d-coronal-00000.npy", coronal)
    np.save(root / "shards/2d-image-00000.npy", rng.integers(0, 255, (1, 16, 16), dtype=np.uint8))
    rows = [  # manifest order deliberately not storage order
        _row("cor1", "3d", "eval", "eval", "Chest CT with COVID-19", "coronal", "shards/3d-coronal-00000.npy", 1, CORONAL_SLICES, CORONAL_SIZE),
        _row("ax0", "3d", "train", "train", "Brain MRI with Glioma", "axial", "shards/3d-axial-00000.npy", 0, AXIAL_SLICES, AXIAL_SIZE),
        _row("img0", "2d", "train", "train", "Chest X-ray with Edema", "", "shards/2d-image-00000.npy", 0, 1, 16),
        _row("ax1", "3d", "train", "train", "Normal Brain MRI", "axial", "shards/3d-axial-00000.npy", 1, AXIAL_SLICES, AXIAL_SIZE),
        _row("ax2", "3d", "train", "val", "Brain MRI with Glioma", "axial", "shards/3d-axial-00000.npy", 2, AXIAL_SLICES, AXIAL_SIZE),
        _row("cor0", "3d", "train", "train", "Chest CT with COVID-19", "coronal", "shards/3d-coronal-00000.npy", 0, CORONAL_SLICES, CORONAL_SIZE),
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), root / "manifest.parquet")
    return {"ax0": axial[0], "ax1": axial[1], "ax2": axial[2], "cor0": coronal[0], "cor1": coronal[1]}


@pytest.fixture(scope="module")
def model() -> RadCLIP:
    return tiny_model()


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("curated")
    return root, make_curated(root)


@pytest.fixture(scope="module")
def cache(model, curated, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("caches") / "slice_cache"
    # shard_volumes=4: shard 0 mixes 3 axial + 1 coronal (padded to 6 slices), shard 1 holds 1 coronal (4 slices).
    write_slice_cache(model, curated[0], out, batch_volumes=2, shard_volumes=4, meta={"model_dir": "m"}, progress=False)
    return out


def test_cache_holds_exactly_the_3d_records_of_every_role_and_split(cache, curated):
    info = json.loads((cache / INFO_FILE).read_text())
    index = pq.read_table(cache / INDEX_FILE).to_pandas()
    assert sorted(index["record_id"]) == sorted(curated[1]) and "img0" not in set(index["record_id"])
    assert set(index["split"]) == {"train", "val", "eval"}
    assert info["count"] == 5 and info["embedding_dim"] == 16 and info["max_slices"] == AXIAL_SLICES
    assert info["meta"] == {"model_dir": "m"} and len(info["encoder_fingerprint"]) == 64
    assert [(s["file"], s["count"], s["slices"]) for s in info["shards"]] == [
        ("embeddings-00000.npy", 4, AXIAL_SLICES), ("embeddings-00001.npy", 1, CORONAL_SLICES)]
    assert not (cache.parent / "slice_cache.partial").exists()


def test_cached_rows_equal_encode_slices_with_the_recorded_display_range_and_padding_is_zero(cache, curated, model):
    index = pq.read_table(cache / INDEX_FILE).to_pandas()
    for row in index.itertuples():
        stored = np.load(cache / row.shard, mmap_mode="r")[row.shard_index]
        assert stored.dtype == np.float16
        with torch.no_grad():
            display = torch.tensor([DISPLAY.get(row.record_id, NO_RANGE)])
            expected = model.eval().encode_slices(curated[1][row.record_id][None], display_range=display)[0].numpy()
        assert row.slices == len(expected)
        np.testing.assert_allclose(stored[: row.slices].astype(np.float32), expected, rtol=0, atol=2e-3)
        assert np.all(stored[row.slices :] == 0)


def test_dataset_selects_by_query_and_returns_masked_embeddings_with_caption_ids(cache):
    dataset = SliceCacheDataset(cache, query="role == 'train' and split == 'train'")
    assert sorted(dataset.index["record_id"]) == ["ax0", "ax1", "cor0"]
    assert dataset.captions == sorted({"Brain MRI with Glioma", "Normal Brain MRI", "Chest CT with COVID-19"})
    stored = {}
    for i, row in dataset.index.iterrows():
        embeddings, mask, caption_id = dataset[i]
        assert embeddings.dtype == torch.float32 and embeddings.shape == (AXIAL_SLICES, 16)
        assert mask.dtype == torch.bool and mask.tolist() == [s < row["slices"] for s in range(AXIAL_SLICES)]
        assert dataset.captions[caption_id] == row["caption"] == dataset.captions[dataset.caption_ids[i]]
        assert torch.all(embeddings[~mask] == 0)
        torch.testing.assert_close(embeddings[mask].norm(dim=-1), torch.ones(int(row["slices"])), atol=3e-3, rtol=0)
        stored[i] = embeddings
    # Picklable for DataLoader / Ray workers even after shards were opened; the copy reopens its own maps.
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._open_shards == {} and torch.equal(clone[0][0], stored[0])
    embeddings, mask, caption_ids = next(iter(DataLoader(dataset, batch_size=3)))
    assert embeddings.shape == (3, AXIAL_SLICES, 16) and mask.shape == (3, AXIAL_SLICES)
    assert caption_ids.tolist() == dataset.caption_ids.tolist()


def test_building_twice_gives_identical_bytes_and_restores_the_model_mode(cache, curated, model, tmp_path):
    model.train()
    again = tmp_path / "again"
    write_slice_cache(model, curated[0], again, batch_volumes=2, shard_volumes=4, meta={"model_dir": "m"}, progress=False)
    assert model.training  # the writer switches to eval for encoding only
    files = sorted(p.name for p in cache.iterdir())
    assert files == sorted(p.name for p in again.iterdir())
    for name in files:
        if name != INFO_FILE:
            assert (cache / name).read_bytes() == (again / name).read_bytes(), name
    first, second = (json.loads((d / INFO_FILE).read_text()) for d in (cache, again))
    assert {k: v for k, v in first.items() if k not in TIMING_KEYS} == {k: v for k, v in second.items() if k not in TIMING_KEYS}


def test_shards_and_batches_are_bounded(curated, model, tmp_path, monkeypatch):
    memmap_shapes, batch_shapes = [], []
    open_memmap, encode_slices = np.lib.format.open_memmap, model.encode_slices

    def recording_memmap(*args, **kwargs):
        if kwargs.get("mode") == "w+":  # np.load(mmap_mode="r") of the curated shards goes through here too
            memmap_shapes.append(kwargs["shape"])
        return open_memmap(*args, **kwargs)

    def recording_encode(volumes, *args, **kwargs):
        batch_shapes.append(volumes.shape)
        return encode_slices(volumes, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "open_memmap", recording_memmap)
    monkeypatch.setattr(model, "encode_slices", recording_encode)
    out = tmp_path / "small_shards"
    info = write_slice_cache(model, curated[0], out, batch_volumes=2, shard_volumes=2, progress=False)
    # Every shard file is created once at its final size (≤ shard_volumes) and filled batch by batch.
    assert memmap_shapes == [(2, AXIAL_SLICES, 16), (2, AXIAL_SLICES, 16), (1, CORONAL_SLICES, 16)]
    assert [s["count"] for s in info["shards"]] == [2, 2, 1]
    assert [np.load(out / s["file"], mmap_mode="r").shape[0] for s in info["shards"]] == [2, 2, 1]
    # Batches hold one shape each and never cross a shard: ax0+ax1 | ax2 | cor0 (plane change), cor1 (next shard).
    assert batch_shapes == [
        (2, AXIAL_SLICES, AXIAL_SIZE, AXIAL_SIZE), (1, AXIAL_SLICES, AXIAL_SIZE, AXIAL_SIZE),
        (1, CORONAL_SLICES, CORONAL_SIZE, CORONAL_SIZE), (1, CORONAL_SLICES, CORONAL_SIZE, CORONAL_SIZE)]


def test_fingerprint_follows_the_encoder_and_a_mismatch_raises(cache, model):
    fingerprint = encoder_fingerprint(model)
    assert SliceCacheDataset(cache, expect_fingerprint=fingerprint).info["encoder_fingerprint"] == fingerprint
    with torch.no_grad():  # training the adapter leaves the cached encoder output valid
        next(model.adapter.parameters()).add_(1.0)
    assert encoder_fingerprint(model) == fingerprint
    other = encoder_fingerprint(tiny_model(seed=1))
    assert other != fingerprint
    with pytest.raises(SliceCacheError, match=str(cache)):
        SliceCacheDataset(cache, expect_fingerprint=other)


def test_a_crash_leaves_no_cache_that_looks_complete(curated, model, tmp_path, monkeypatch):
    def failing_encode(volumes, *args, **kwargs):
        raise RuntimeError("worker died")

    monkeypatch.setattr(model, "encode_slices", failing_encode)
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="worker died"):
        write_slice_cache(model, curated[0], out, progress=False)
    assert not out.exists()
    with pytest.raises(SliceCacheError, match="did not finish"):
        SliceCacheDataset(tmp_path / "crashed.partial")


# --------------------------------------------------------------------------- the fingerprint in 3D evaluation


def _same_adapter(source: RadCLIP, target: RadCLIP) -> RadCLIP:
    """``target`` with ``source``'s adapter and temperature: only the 2D encoders differ."""
    target.adapter.load_state_dict(source.adapter.state_dict())
    with torch.no_grad():
        target.logit_scale.copy_(source.logit_scale)
    return target.eval()


def test_another_encoders_cache_is_refused_naming_both_fingerprints(curated, tmp_path):
    model_a = tiny_model(seed=0).eval()
    model_b = _same_adapter(model_a, tiny_model(seed=1))
    fingerprint_a, fingerprint_b = encoder_fingerprint(model_a), encoder_fingerprint(model_b)
    assert fingerprint_a != fingerprint_b
    cache_a, cache_b = tmp_path / "cache_a", tmp_path / "cache_b"
    write_slice_cache(model_a, curated[0], cache_a, batch_volumes=2, progress=False)
    write_slice_cache(model_b, curated[0], cache_b, batch_volumes=2, progress=False)

    # Each model with its own cache: the encoders differ, so the same suite's volume features do.
    features_a = volume_features(model_a, cache_a, SUITE)
    features_b = volume_features(model_b, cache_b, SUITE)
    assert len(features_a.features) == len(features_b.features) == 5
    assert list(features_a.labels) == list(features_b.labels)
    assert np.abs(features_a.features - features_b.features).max() > 1e-2

    # Model B reading model A's cache would score A's embeddings as B's: refused, naming both encoders.
    with pytest.raises(SliceCacheError) as refused:
        volume_features(model_b, cache_a, SUITE)
    message = str(refused.value)
    assert fingerprint_a[:12] in message and fingerprint_b[:12] in message and str(cache_a) in message
    with pytest.raises(SliceCacheError, match=fingerprint_b[:12]):
        volume_features(model_a, cache_b, SUITE, pooling="average")  # averaging reads the same slices


# --------------------------------------------------------------------------- jobs.embed_slices.cache_for


def _pipeline_params(root: Path, curated_dir: Path) -> Params:
    paths = {"raw": root / "raw", "curated": curated_dir, "reports": root / "reports", "models": root / "models",
             "slice_cache": root / "slice_cache", "tmp": root / "scratch", "sweeps": root / "sweeps"}
    return Params.model_validate({**TINY, "paths": {k: str(v) for k, v in paths.items()}})


def test_cache_for_uses_the_pipeline_cache_of_the_same_encoder_and_builds_one_for_another(
    cache, curated, tmp_path, monkeypatch
):
    params = _pipeline_params(tmp_path, curated[0])
    pipeline = params.resolve(params.paths.slice_cache) / "finetuned"
    shutil.copytree(cache, pipeline)  # the pipeline's cache, built by tiny_model(seed=0)'s encoder
    own_caches = params.resolve(params.paths.tmp) / embed_slices.MODEL_CACHES

    same = tiny_model(seed=0)
    assert embed_slices.cache_for(params, same, progress=False) == pipeline
    assert not own_caches.exists()  # nothing encoded
    vanilla = params.resolve(params.paths.slice_cache) / "vanilla"
    other_seed = tiny_model(seed=1)
    write_slice_cache(other_seed, curated[0], vanilla, progress=False)
    assert embed_slices.cache_for(params, other_seed, progress=False) == vanilla  # the other pipeline encoder
    assert not own_caches.exists()

    different = tiny_model(seed=2).eval()
    fingerprint = encoder_fingerprint(different)
    built = embed_slices.cache_for(params, different, progress=False)
    assert built == own_caches / fingerprint[:16]
    assert built.is_relative_to(params.resolve(params.paths.tmp))
    info = json.loads((built / INFO_FILE).read_text())
    assert info["encoder_fingerprint"] == fingerprint and info["count"] == 5
    features = volume_features(different, built, SUITE)  # accepted: built by this model's own encoder
    assert features.features.shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(features.features, axis=1), 1.0, atol=1e-5)
    with pytest.raises(SliceCacheError):
        volume_features(different, pipeline, SUITE)  # the pipeline's cache is not this encoder's

    # Built on first use only: a second call finds it.
    def refuse(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(embed_slices, "write_slice_cache", refuse)
    assert embed_slices.cache_for(params, different, progress=False) == built
    assert embed_slices.cache_for(params, same, progress=False) == pipeline
