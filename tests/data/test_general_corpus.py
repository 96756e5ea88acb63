"""General-domain corpus: byte-deterministic WebDataset shards, held-out pairs kept out of
train/val, captions that say what the pixels show, and pixels that differ by class and colour."""

from __future__ import annotations

import ast
import colorsys
import dataclasses
import hashlib
import io
import json
import re
import shutil
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radclip.data.general import (
    COLOURS,
    OBJECTS,
    SIZE_RANGES,
    SIZES,
    SPLITS,
    TEXTURES,
    CorpusSpec,
    Placement,
    ShardError,
    caption,
    generate_corpus,
    grammar_words,
    heldout_pairs,
    prompt,
    read_split,
    render,
    render_sample,
    single_scene,
    training_scene,
)
from radclip.data.general.scenes import GREYSCALE_FRACTION
from radclip.data.general.vocabulary import training_colours

SPEC = CorpusSpec(seed=3, train_images=60, val_images=20, heldout_images=30, image_size=64, shard_size=25)
PACKAGE_DIR = Path(__file__).resolve().parents[2] / "radclip" / "data" / "general"

# The English the captions must use, written out here rather than taken from the grammar.
PLURAL = {"cross": "crosses", "fish": "fish", "puppy": "puppies", "life vest": "life vests"}
POSITION_PHRASE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
RELATION_PHRASE = {"left of": "to the left of", "above": "above"}
COUNT_WORD = {2: "two", 3: "three"}
BW_PHRASE = "black and white"


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("general") / "corpus"
    return out, generate_corpus(SPEC, out, workers=1)


@pytest.fixture(scope="module")
def splits(corpus):
    out, _ = corpus
    return {split: read_split(out, split) for split in SPLITS}


def _training_scenes(n: int, seed: int = SPEC.seed):
    """Scenes and captions straight from the sampler (no rendering): enough to cover the vocabulary."""
    rng = np.random.default_rng([99, seed])
    scenes = [training_scene(rng, lambda o: training_colours(o, seed)) for _ in range(n)]
    records = [s.attributes() for s in scenes]
    return records, [caption(r, rng) for r in records]


def _has_phrase(text: str, phrase: str) -> bool:
    return re.search(rf"(^| ){re.escape(phrase)}( |$)", text) is not None


# --------------------------------------------------------------------------- determinism, layout


def test_same_spec_and_any_worker_count_give_identical_bytes(corpus, tmp_path):
    out, _ = corpus
    again = generate_corpus(SPEC, tmp_path / "again", workers=1)
    pooled = generate_corpus(SPEC, tmp_path / "pooled", workers=2)
    reference = _hashes(out)
    assert reference == _hashes(tmp_path / "again") == _hashes(tmp_path / "pooled")
    assert again == pooled
    assert "corpus.json" in reference and sum(name.endswith(".tar") for name in reference) == 3 + 1 + 2


def test_another_seed_gives_other_images(corpus, tmp_path):
    other = CorpusSpec(seed=SPEC.seed + 1, train_images=5, val_images=0, heldout_images=0, shard_size=25)
    generate_corpus(other, tmp_path / "other")
    assert not np.array_equal(read_split(tmp_path / "other", "train").images, read_split(corpus[0], "train").images[:5])


def test_summary_lists_spec_vocabulary_heldout_pairs_counts_and_shard_digests(corpus):
    out, summary = corpus
    assert json.loads((out / "corpus.json").read_text()) == summary
    assert summary["spec"] == {
        "seed": 3, "train_images": 60, "val_images": 20, "heldout_images": 30, "image_size": 64, "shard_size": 25,
    }  # fmt: skip
    assert summary["objects"] == list(OBJECTS) and summary["colours"] == list(COLOURS)
    assert summary["sizes"] == list(SIZES) and summary["textures"] == list(TEXTURES)
    assert {tuple(p) for p in summary["heldout_pairs"]} == heldout_pairs(SPEC.seed)
    assert summary["counts"] == {"train": 60, "val": 20, "heldout": 30}
    for split, expected_sizes in {"train": [25, 25, 10], "val": [20], "heldout": [25, 5]}.items():
        shards = summary["shards"][split]
        assert [s["samples"] for s in shards] == expected_sizes
        assert [s["file"] for s in shards] == [f"{split}/shard-{i:06d}.tar" for i in range(len(expected_sizes))]
        for shard in shards:
            assert hashlib.sha256((out / shard["file"]).read_bytes()).hexdigest() == shard["sha256"]


def _png_chunk_types(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    types, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        types.append(data[offset + 4 : offset + 8])
        offset += 12 + length
    return types


def test_shards_are_webdataset_tars_with_fixed_headers_and_timestamp_free_pngs(corpus):
    out, _ = corpus
    with tarfile.open(out / "train" / "shard-000001.tar") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names) and len(names) == 3 * 25
        keys = sorted({name.split(".", 1)[0] for name in names})
        assert keys == [f"train-{i:07d}" for i in range(25, 50)]
        assert names == [f"{key}.{ext}" for key in keys for ext in ("json", "png", "txt")]
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
        first = tar.extractfile(f"{keys[0]}.png").read()
        assert b"tIME" not in _png_chunk_types(first)
        image = Image.open(io.BytesIO(first))
        assert image.mode == "RGB" and image.size == (64, 64)
        assert tar.extractfile(f"{keys[0]}.txt").read().decode("utf-8") == read_split(out, "train").captions[25]


def test_rerun_with_a_smaller_spec_leaves_no_stale_shards(tmp_path, capsys):
    generate_corpus(CorpusSpec(train_images=6, val_images=2, heldout_images=2, shard_size=2), tmp_path)
    generate_corpus(CorpusSpec(train_images=2, val_images=0, heldout_images=0, shard_size=2), tmp_path, progress=True)
    assert "1/1 shards" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.tar")) == ["train/shard-000000.tar"]
    assert read_split(tmp_path, "val").images.shape == (0, 64, 64, 3)


def test_spec_rejects_nonsense():
    with pytest.raises(ValueError, match="shard_size"):
        CorpusSpec(shard_size=0)
    with pytest.raises(ValueError, match="image counts"):
        CorpusSpec(train_images=-1)
    with pytest.raises(ValueError, match="workers"):
        generate_corpus(CorpusSpec(train_images=1, val_images=0, heldout_images=0), Path("unused"), workers=0)


# --------------------------------------------------------------------------- reading back


def test_read_split_round_trips_images_captions_and_attributes_in_key_order(corpus, splits):
    out, _ = corpus
    for split in SPLITS:
        data = splits[split]
        assert data.images.shape == (SPEC.images(split), 64, 64, 3) and data.images.dtype == np.uint8
        assert len(data.captions) == len(data.attributes) == SPEC.images(split)
    for split, index in [("train", 0), ("train", 37), ("train", 59), ("val", 19), ("heldout", 26)]:
        sample = render_sample(SPEC, split, index)
        assert np.array_equal(splits[split].images[index], sample.image)
        assert splits[split].captions[index] == sample.caption
        assert splits[split].attributes[index] == sample.attributes


def test_a_truncated_shard_raises_an_error_naming_it(corpus, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(corpus[0], copy)
    shard = copy / "train" / "shard-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=re.escape(str(shard))):
        read_split(copy, "train")
    read_split(copy, "val")  # the other splits still read

    # without corpus.json (no digests to compare), cut exactly after a whole member
    (copy / "corpus.json").unlink()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        fifth = tar.getmembers()[5]
    shard.write_bytes(data[: fifth.offset_data + -(-fifth.size // 512) * 512])
    with pytest.raises(ShardError, match=re.escape(str(shard))):
        read_split(copy, "train")


def test_reading_a_folder_without_a_corpus_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus.json"):
        read_split(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split"):
        read_split(tmp_path, "test")


def test_a_missing_shard_raises_an_error_naming_it(corpus, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(corpus[0], copy)
    (copy / "heldout" / "shard-000001.tar").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(copy / "heldout" / "shard-000001.tar"))):
        read_split(copy, "heldout")


# --------------------------------------------------------------------------- held-out pairs


def test_heldout_pairs_are_a_deterministic_tenth_or_so_leaving_every_object_and_colour_in_training():
    pairs = heldout_pairs(SPEC.seed)
    assert pairs == heldout_pairs(SPEC.seed) and pairs != heldout_pairs(SPEC.seed + 1)
    assert 0.10 <= len(pairs) / (len(OBJECTS) * len(COLOURS)) <= 0.15
    assert all(colour in COLOURS and obj in OBJECTS for colour, obj in pairs)
    for obj in OBJECTS:
        assert sum((c, obj) not in pairs for c in COLOURS) >= len(COLOURS) // 2
    for colour in COLOURS:
        assert sum((colour, o) not in pairs for o in OBJECTS) >= len(OBJECTS) // 2


def test_heldout_pairs_never_occur_in_train_or_val_and_fill_the_heldout_split(splits):
    held = heldout_pairs(SPEC.seed)
    for split in ("train", "val"):
        for record in splits[split].attributes:
            assert not [(o["colour"], o["object"]) for o in record["objects"] if (o["colour"], o["object"]) in held]
    seen = set()
    for record in splits["heldout"].attributes:
        assert record["kind"] == "single" and not record["greyscale"] and len(record["objects"]) == 1
        pair = (record["objects"][0]["colour"], record["objects"][0]["object"])
        assert pair in held
        seen.add(pair)
    assert seen == held  # 30 images cycle through all 23 pairs


def test_training_draws_use_every_object_colour_size_texture_and_kind_but_no_heldout_pair():
    records, _ = _training_scenes(3000)
    objects = [o for r in records for o in r["objects"]]
    held = heldout_pairs(SPEC.seed)
    assert not [o for o in objects if (o["colour"], o["object"]) in held]
    assert {o["object"] for o in objects} == set(OBJECTS)
    assert {o["colour"] for o in objects} == set(COLOURS)
    assert {o["size"] for o in objects} == set(SIZES) and {o["texture"] for o in objects} == set(TEXTURES)
    assert {r["kind"] for r in records} == {"single", "count", "relation"}
    assert {r["count"] for r in records} == {1, 2, 3}
    # the share drawn matches the generator's stated fraction within sampling error (3000 draws: sd < 0.01)
    assert abs(np.mean([r["greyscale"] for r in records]) - GREYSCALE_FRACTION) < 0.04


# --------------------------------------------------------------------------- captions


def _check_caption(text: str, record: dict) -> None:
    assert re.fullmatch(r"[a-z]+( [a-z]+)*", text), text
    assert len(text.split()) <= 16, text
    objects = record["objects"]
    grey = record["greyscale"]
    said = text.replace(BW_PHRASE, "") if grey else text
    colour_words = {w for w in said.split() if w in COLOURS}
    if grey:
        assert not colour_words, text
    else:
        assert BW_PHRASE not in text and colour_words == {o["colour"] for o in objects}, text
    if record["kind"] == "single":
        (o,) = objects
        assert _has_phrase(text, o["object"]), text
        for word in set(text.split()) & set(SIZES):
            assert word == o["size"], text
        for word in set(text.split()) & set(TEXTURES):
            assert word == o["texture"], text
        for position, phrase in POSITION_PHRASE.items():
            assert not _has_phrase(text, phrase) or position == o["position"], text
    elif record["kind"] == "count":
        assert len({(o["object"], o["colour"], o["texture"]) for o in objects}) == 1
        obj = objects[0]["object"]
        assert _has_phrase(text, COUNT_WORD[len(objects)]) and _has_phrase(text, PLURAL.get(obj, obj + "s")), text
    else:
        relation = RELATION_PHRASE[record["relation"]]
        before, after = text.split(f" {relation} ")
        assert _has_phrase(before, objects[0]["object"]) and _has_phrase(after, objects[1]["object"]), text
        if not grey:
            assert _has_phrase(before, objects[0]["colour"]) and _has_phrase(after, objects[1]["colour"]), text


def test_captions_agree_with_attributes_and_use_only_grammar_words(splits):
    words = set(grammar_words())
    for split in SPLITS:
        for text, record in zip(splits[split].captions, splits[split].attributes):
            _check_caption(text, record)
            assert set(text.split()) <= words


def test_many_sampled_captions_agree_with_attributes_and_emit_every_grammar_word():
    records, captions = _training_scenes(3000)
    used: set[str] = set()
    for text, record in zip(captions, records):
        _check_caption(text, record)
        used.update(text.split())
    assert used == set(grammar_words())
    assert len(set(captions)) > 1500  # varied wording, not a handful of templates
    assert any(t.startswith("a black and white photo of") for t in captions)


def test_grammar_words_are_sorted_unique_lowercase_and_cover_the_vocabulary():
    words = grammar_words()
    assert words == sorted(set(words)) and all(re.fullmatch("[a-z]+", w) for w in words)
    needed = {w for name in (*OBJECTS, *COLOURS, *SIZES, "striped", "dotted", "checkered") for w in name.split()}
    assert needed | {"two", "three", "above", "left", "black", "and", "white", "photo", "puppies"} <= set(words)


def test_prompt_is_the_canonical_caption_the_grammar_emits():
    assert prompt(obj="cat", colour="red", size="small") == "a photo of a small red cat"
    assert prompt(obj="cat", colour="orange") == "a photo of an orange cat"
    assert prompt(obj="life vest") == "a photo of a life vest"
    assert prompt(obj="puppy", size="large") == "a photo of a large puppy"
    with pytest.raises(ValueError, match="unknown object"):
        prompt(obj="dog")
    with pytest.raises(ValueError, match="unknown colour"):
        prompt(obj="cat", colour="teal")
    records, captions = _training_scenes(3000)
    matched = 0
    for text, record in zip(captions, records):
        if record["kind"] != "single" or not re.fullmatch(r"a photo of an? [a-z ]+", text):
            continue
        o = record["objects"][0]
        words = set(text.split())
        positioned = any(_has_phrase(text, p) for p in POSITION_PHRASE.values())
        if positioned or words & {"one", "striped", "dotted", "checkered"}:
            continue
        size = o["size"] if o["size"] in words else None
        assert text == prompt(obj=o["object"], colour=None if record["greyscale"] else o["colour"], size=size)
        matched += 1
    assert matched > 50


# --------------------------------------------------------------------------- pixels


def _canonical(obj: str, rng_seed: int = 0, rgb=(1.0, 1.0, 1.0), texture: str = "plain"):
    placement = Placement(obj, rgb, texture, 0.5, 0.5, 0.3)
    return render([placement], size=64, greyscale=False, rng=np.random.default_rng(rng_seed))


def test_every_object_has_its_own_look_at_64_px():
    ink = {}
    for obj in OBJECTS:
        r = _canonical(obj)
        ink[obj] = r.bodies[0] + 0.5 * (r.silhouettes[0] - r.bodies[0])  # details count half
        rows, cols = np.nonzero(r.silhouettes[0] > 0.5)
        assert max(np.ptp(rows), np.ptp(cols)) > 0.4 * 64, obj  # a large object spans much of the picture
    for i, a in enumerate(OBJECTS):
        for b in OBJECTS[i + 1 :]:
            differing = np.abs(ink[a] - ink[b]).sum() / min(ink[a].sum(), ink[b].sum())
            assert differing > 0.1, (a, b, differing)


def test_mean_images_differ_by_class_beyond_noise():
    def mean_image(obj: str, seeds: range) -> np.ndarray:
        return np.mean([_canonical(obj, s).image.astype(np.float32) for s in seeds], axis=0)

    cat_a, cat_b = mean_image("cat", range(0, 16)), mean_image("cat", range(16, 32))
    house = mean_image("house", range(32, 48))
    within = np.abs(cat_a - cat_b).mean()
    between = np.abs((cat_a + cat_b) / 2 - house).mean()
    assert between > 3 * within, (between, within)


def _interior(coverage: np.ndarray) -> np.ndarray:
    """Pixels fully covered, with full neighbours too (blur and antialiasing stay out)."""
    m = coverage >= 0.999
    core = m.copy()
    core[1:-1, 1:-1] &= m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    core[[0, -1], :] = core[:, [0, -1]] = False
    return core


# Independent reference: where each named colour lies in HSV (hue in degrees).
def _looks_like(colour: str, h: float, s: float, v: float) -> bool:
    hue = h * 360.0
    return {
        "red": (hue >= 345 or hue <= 12) and s > 0.5,
        "orange": 15 <= hue <= 45 and s > 0.6 and v > 0.6,
        "yellow": 45 < hue <= 70 and s > 0.6,
        "green": 95 <= hue <= 150 and s > 0.5,
        "blue": 210 <= hue <= 250 and s > 0.5,
        "purple": 260 <= hue <= 300 and s > 0.4,
        "pink": 310 <= hue < 345 and s > 0.3,
        "brown": 10 <= hue <= 45 and s > 0.5 and v < 0.6,
        "white": s < 0.2 and v > 0.7,
        "black": v < 0.2,
    }[colour]


@pytest.mark.parametrize("texture", ["plain", "striped"])
def test_objects_show_their_named_colour_inside_their_mask(texture):
    rng = np.random.default_rng(5)
    for colour in COLOURS:
        for k in range(4):
            obj = OBJECTS[(k * 5 + COLOURS.index(colour)) % len(OBJECTS)]
            scene = single_scene(rng, obj, colour, greyscale=False)
            placements = [dataclasses.replace(scene.placements[0], texture=texture)]
            rendered = render(placements, size=64, greyscale=False, rng=rng)
            inside = _interior(rendered.bodies[0])
            if inside.sum() < 8:
                continue  # a small thin object (a key) may have no clean interior
            r, g, b = rendered.image[inside].mean(axis=0) / 255.0
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            if texture == "plain" or colour not in ("white", "black", "brown", "orange"):  # shades change lightness
                assert _looks_like(colour, h, s, v), (colour, obj, texture, (r, g, b))


def test_black_and_white_images_have_equal_channels_and_colour_ones_do_not(splits):
    for image, record in zip(splits["train"].images, splits["train"].attributes):
        equal = np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
        assert equal == record["greyscale"]


def test_position_and_size_attributes_match_where_the_object_is_drawn(splits):
    centre = np.arange(64) + 0.5
    checked = 0
    for split in ("train", "heldout"):
        for index, record in enumerate(splits[split].attributes):
            if record["kind"] != "single":
                continue
            o = record["objects"][0]
            low, high = SIZE_RANGES[o["size"]]
            assert low <= o["radius"] <= high
            mask = render_sample(SPEC, split, index).bodies[0]
            cy, cx = (np.sum(mask * centre[:, None]) / mask.sum(), np.sum(mask * centre[None, :]) / mask.sum())
            dx, dy = cx / 64 - 0.5, cy / 64 - 0.5
            expected = {"left": dx < -0.1, "right": dx > 0.1, "top": dy < -0.1, "bottom": dy > 0.1}
            expected["center"] = abs(dx) < 0.1 and abs(dy) < 0.1
            assert expected[o["position"]], (o, dx, dy)
            checked += 1
    assert checked > 20
    for index, record in enumerate(splits["train"].attributes):
        if record["kind"] == "relation":
            first, second = (
                (np.sum(m * centre[None, :]) / m.sum(), np.sum(m * centre[:, None]) / m.sum())
                for m in render_sample(SPEC, "train", index).bodies
            )
            axis = 0 if record["relation"] == "left of" else 1
            assert first[axis] + 10 < second[axis], (record, first, second)  # left of / above, by 10 px or more
            checked += 1
    small = [o["radius"] for r in splits["train"].attributes for o in r["objects"] if o["size"] == "small"]
    large = [o["radius"] for r in splits["train"].attributes for o in r["objects"] if o["size"] == "large"]
    assert max(small) * 1.5 < min(large)


def test_objects_stay_mostly_in_the_picture_and_unoccluded(splits):
    for split in ("train", "heldout"):
        for index in range(0, SPEC.images(split), 3):
            scene_objects = splits[split].attributes[index]["objects"]
            drawn = render_sample(SPEC, split, index)
            for o, visible in zip(scene_objects, drawn.bodies):
                placement = Placement(o["object"], (1.0, 1.0, 1.0), "plain", 0.5, 0.5, o["radius"])
                whole = render([placement], size=64, greyscale=False, rng=np.random.default_rng(0)).bodies[0]
                assert visible.sum() > 0.7 * whole.sum(), (split, index, o)


def test_the_main_object_stands_out_from_the_background_in_colour_and_in_grey(splits):
    luma = np.array([0.299, 0.587, 0.114])
    for split in ("train", "heldout"):
        for index, record in enumerate(splits[split].attributes):
            drawn = render_sample(SPEC, split, index)
            lightness = drawn.image.astype(np.float64) @ luma
            background = np.all([b < 0.01 for b in drawn.bodies], axis=0)
            main = drawn.bodies[0] > 0.99
            if main.sum() >= 5:
                contrast = abs(lightness[main].mean() - lightness[background].mean())
                assert contrast > 15, (split, index, record, contrast)


def test_images_look_natural_not_flat(splits):
    images = splits["train"].images.astype(np.float32)
    assert images.std(axis=(1, 2)).min() > 2.0  # background texture and noise everywhere
    assert len({tuple(np.round(img.mean(axis=(0, 1)))) for img in images}) > 40  # backgrounds vary


# --------------------------------------------------------------------------- layering


def test_package_imports_only_numpy_pil_stdlib_and_its_own_modules():
    allowed_external = {"numpy", "PIL"} | set(sys.stdlib_module_names)
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            for name in names:
                if name.split(".")[0] == "radclip":
                    assert name.startswith(("radclip.data.general", "radclip.core")), (path.name, name)
                else:
                    assert name.split(".")[0] in allowed_external | {"__future__"}, (path.name, name)
