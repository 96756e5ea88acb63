"""The corpus: its spec, generation into WebDataset shards, and reading a split back.

Every sample has its own generators seeded from ``(seed, split, index)``, so a sample
never depends on which worker drew it or what came before; shards are whole units
of work for the process pool. With no timestamps anywhere (tar headers fixed, PNG
without a tIME chunk, JSON with sorted keys) the output is byte-identical for any
number of workers (on one platform and numpy/zlib version).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from radclip.data.general.grammar import caption, grammar_words
from radclip.data.general.render import render
from radclip.data.general.scenes import single_scene, training_scene
from radclip.data.general.shards import ShardError, read_shard, write_shard
from radclip.data.general.vocabulary import (
    COLOURS,
    OBJECTS,
    POSITIONS,
    RELATIONS,
    SIZES,
    TEXTURES,
    heldout_pairs,
    training_colours,
)

SPLITS: tuple[str, ...] = ("train", "val", "heldout")
_SPLIT_STREAMS = {"train": 0, "val": 1, "heldout": 2}
SUMMARY_FILE = "corpus.json"
EXTENSIONS = ("json", "png", "txt")
FORMAT = "radclip-general-corpus/1"


@dataclass(frozen=True)
class CorpusSpec:
    seed: int = 0
    train_images: int = 12000
    val_images: int = 1000  # same distribution as train (no held-out pairs)
    heldout_images: int = 600  # single-object images of held-out (colour, object) pairs
    image_size: int = 64
    shard_size: int = 1000  # samples per tar shard

    def __post_init__(self) -> None:
        if min(self.train_images, self.val_images, self.heldout_images) < 0:
            raise ValueError(f"image counts must be >= 0: {self}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {self.image_size}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {self.shard_size}")

    def images(self, split: str) -> int:
        return {"train": self.train_images, "val": self.val_images, "heldout": self.heldout_images}[split]


@dataclass(frozen=True)
class CorpusSample:
    key: str
    image: np.ndarray  # uint8 (H, W, 3)
    caption: str
    attributes: dict
    bodies: list[np.ndarray]  # per object: float32 (H, W) coverage of its visible colour-filled body


@dataclass(frozen=True)
class CorpusSplit:
    images: np.ndarray  # uint8 (N, H, W, 3)
    captions: list[str]
    attributes: list[dict]


def sample_key(split: str, index: int) -> str:
    return f"{split}-{index:07d}"


def render_sample(spec: CorpusSpec, split: str, index: int) -> CorpusSample:
    """Sample ``index`` of ``split``, exactly as ``generate_corpus`` writes it."""
    if split not in _SPLIT_STREAMS:
        raise ValueError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
    scene_rng, caption_rng, render_rng = (
        np.random.default_rng([spec.seed, _SPLIT_STREAMS[split], index, stream]) for stream in range(3)
    )
    if split == "heldout":
        pairs = sorted(heldout_pairs(spec.seed))
        colour, obj = pairs[index % len(pairs)]  # cycles through the pairs: balanced
        scene = single_scene(scene_rng, obj, colour, greyscale=False)
    else:
        scene = training_scene(scene_rng, lambda o: training_colours(o, spec.seed))
    attributes = scene.attributes()
    rendered = render(scene.placements, size=spec.image_size, greyscale=scene.greyscale, rng=render_rng)
    return CorpusSample(
        key=sample_key(split, index),
        image=rendered.image,
        caption=caption(attributes, caption_rng),
        attributes=attributes,
        bodies=rendered.bodies,
    )


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # noisy pixels barely compress, so compress fast; PIL writes no tIME chunk (no timestamp)
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _shard_name(split: str, shard: int) -> str:
    return f"{split}/shard-{shard:06d}.tar"


def _write_one_shard(task: tuple[CorpusSpec, str, int, str]) -> dict:
    """Draw and write one shard (runs in a pool worker); returns its summary entry."""
    spec, split, shard, out_dir = task
    start = shard * spec.shard_size
    stop = min(start + spec.shard_size, spec.images(split))
    samples = []
    for index in range(start, stop):
        sample = render_sample(spec, split, index)
        files = {
            "png": _png(sample.image),
            "txt": sample.caption.encode("utf-8"),
            "json": json.dumps(sample.attributes, sort_keys=True, separators=(",", ":")).encode("utf-8"),
        }
        samples.append((sample.key, files))
    name = _shard_name(split, shard)
    return {"file": name, "samples": stop - start, "sha256": write_shard(Path(out_dir) / name, samples)}


def _clear_split_dir(folder: Path) -> None:
    """Remove shards of an earlier run (a smaller spec must not leave extra shards behind)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("shard-*.tar"), *folder.glob("shard-*.tar.partial")]:
        stale.unlink()


def generate_corpus(spec: CorpusSpec, out_dir: Path, *, workers: int = 1, progress: bool = False) -> dict:
    """Write ``out_dir/{train,val,heldout}/shard-*.tar`` and ``out_dir/corpus.json``; returns the summary."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    tasks = []
    for split in SPLITS:
        _clear_split_dir(out_dir / split)
        n_shards = -(-spec.images(split) // spec.shard_size)
        tasks += [(spec, split, shard, str(out_dir)) for shard in range(n_shards)]
    entries = []
    if workers == 1 or len(tasks) < 2:
        results = map(_write_one_shard, tasks)
        entries = _collect(results, len(tasks), progress)
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
            entries = _collect(pool.map(_write_one_shard, tasks), len(tasks), progress)
    summary = {
        "format": FORMAT,
        "spec": dataclasses.asdict(spec),
        "objects": list(OBJECTS),
        "colours": list(COLOURS),
        "sizes": list(SIZES),
        "textures": list(TEXTURES),
        "positions": list(POSITIONS),
        "relations": list(RELATIONS),
        "words": grammar_words(),
        "heldout_pairs": [list(pair) for pair in sorted(heldout_pairs(spec.seed))],
        "counts": {split: spec.images(split) for split in SPLITS},
        "shards": {split: [e for e in entries if e["file"].startswith(split + "/")] for split in SPLITS},
    }
    path = out_dir / SUMMARY_FILE
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return summary


def _collect(results, total: int, progress: bool) -> list[dict]:
    entries = []
    for done, entry in enumerate(results, start=1):
        entries.append(entry)
        if progress:
            print(f"general corpus: {done}/{total} shards ({entry['file']})", file=sys.stderr, flush=True)
    return entries


def _decode(shard: Path, key: str, files: dict[str, bytes]) -> tuple[np.ndarray, str, dict]:
    try:
        with Image.open(io.BytesIO(files["png"])) as png:
            png.load()
            if png.mode != "RGB":
                raise ShardError(f"{shard}: sample {key}: PNG mode {png.mode}, expected RGB")
            image = np.asarray(png, dtype=np.uint8)
        return image, files["txt"].decode("utf-8"), json.loads(files["json"])
    except ShardError:
        raise
    except (OSError, SyntaxError, ValueError) as error:  # PIL, UTF-8 and JSON decoding errors
        raise ShardError(f"{shard}: corrupt shard (sample {key}: {error})") from error


def read_split(out_dir: Path, split: str) -> CorpusSplit:
    """One split, in key order. Shards listed in corpus.json are checked against their sha256
    and sample counts; errors name the file. Without corpus.json, the shards found are read."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
    out_dir = Path(out_dir)
    summary_path = out_dir / SUMMARY_FILE
    listed: list[tuple[Path, str | None, int | None]]
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        listed = [(out_dir / e["file"], e["sha256"], int(e["samples"])) for e in summary["shards"][split]]
        size = int(summary["spec"]["image_size"])
    else:
        listed = [(p, None, None) for p in sorted((out_dir / split).glob("shard-*.tar"))]
        if not listed:
            raise FileNotFoundError(f"{out_dir}: neither {SUMMARY_FILE} nor {split}/shard-*.tar found")
        size = 0
    images, captions, attributes = [], [], []
    for path, digest, expected in listed:
        samples = read_shard(path, sha256=digest, extensions=EXTENSIONS)
        if expected is not None and len(samples) != expected:
            raise ShardError(f"{path}: corrupt shard ({len(samples)} samples, corpus.json says {expected})")
        for key, files in samples:
            image, text, record = _decode(path, key, files)
            images.append(image)
            captions.append(text)
            attributes.append(record)
    if not images:
        return CorpusSplit(np.zeros((0, size, size, 3), dtype=np.uint8), [], [])
    try:
        stacked = np.stack(images)
    except ValueError as error:
        raise ShardError(f"{out_dir / split}: images of different shapes ({error})") from error
    return CorpusSplit(stacked, captions, attributes)
