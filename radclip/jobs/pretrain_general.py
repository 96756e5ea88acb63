"""Stage ``pretrain_general``: the embedded default's "vanilla CLIP", a general-domain (non-medical) CLIP
trained from scratch here, since real CLIP weights cannot be downloaded.

It generates the corpus (``paths.general``: WebDataset tar shards of scenes with grammar captions,
some (colour, object) pairs held out), learns a CLIP-format BPE on the training captions, trains
both towers with InfoNCE, scores compositional zero-shot on the held-out pairs and retrieval on
the validation split, and saves a hub-style checkpoint (``models/general-clip``) that
``model.pretrained`` names. The paper profile sets ``general.enabled: false`` and loads
``openai/clip-vit-large-patch14`` instead; the stage then writes empty outputs.
"""

from __future__ import annotations

import shutil
from typing import Any

import torch

from radclip.config import Params
from radclip.core.models.clip import new_clip, save_clip
from radclip.data.general import COLOURS, OBJECTS, CorpusSpec, generate_corpus, prompt, read_split
from radclip.evaluation.general import attribute_zero_shot, caption_retrieval
from radclip.io import mlflow_tracking as tracking
from radclip.jobs.common import (
    MODEL_GENERAL,
    log,
    model_dir,
    stage_main,
    write_effective_params,
    write_history,
    write_metrics,
)
from radclip.training.general import encode_images, encode_texts, train_general_clip

STAGE = "pretrain_general"
PARAMS = ("profile", "paths.general", "general", "model.init_seed", "model.projection_dim", "model.vision",
          "model.text", "curate.image_size")
DISTRACTORS = ("A Puppy", "A Cat", "A Life Vest")  # RadCLIP Fig. 5's distractor prompts: general words it must know


def distractor_cosines(embeddings) -> dict[str, float]:
    """Text-tower cosine of each pair of distractor prompts (a tower that cannot tell them apart scores ~1)."""
    return {f"{DISTRACTORS[i]} | {DISTRACTORS[j]}": float(embeddings[i] @ embeddings[j])
            for i in range(len(DISTRACTORS)) for j in range(i + 1, len(DISTRACTORS))}


def corpus_spec(params: Params) -> CorpusSpec:
    general = params.general
    return CorpusSpec(seed=general.corpus_seed, train_images=general.train_images, val_images=general.val_images,
                      heldout_images=general.heldout_images, image_size=params.curate.image_size,
                      shard_size=general.shard_size)


def run(params: Params, *, progress: bool = True) -> dict[str, Any]:
    corpus_dir, out = params.resolve(params.paths.general), model_dir(params, MODEL_GENERAL)
    shutil.rmtree(corpus_dir, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    corpus_dir.mkdir(parents=True)
    out.mkdir(parents=True)
    effective = write_effective_params(params, STAGE, PARAMS)
    if not params.general.enabled:
        log.info("pretrain_general: disabled (model.pretrained = %s)", params.model.pretrained)
        write_metrics(params, f"{STAGE}.json", {"enabled": False})
        return {"enabled": False}
    general, model = params.general, params.model
    corpus = generate_corpus(corpus_spec(params), corpus_dir, workers=general.workers, progress=progress)
    train, val, heldout = (read_split(corpus_dir, split) for split in ("train", "val", "heldout"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model.init_seed)
        clip, tokenizer, pixels = new_clip(image_size=params.curate.image_size, vocabulary_texts=train.captions,
                                           vision=model.vision.model_dump(), text=model.text.model_dump(),
                                           projection_dim=model.projection_dim, vocab_size=general.vocab_size)
    with tracking.start_run(params, stage=STAGE, run_name="general-clip",
                            tags={"corpus.train_images": len(train.captions)}) as run:
        def log_epoch(metrics: dict) -> None:
            tracking.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=metrics["epoch"])
            log.info("pretrain_general: epoch %d train %.4f val %.4f (%.0f pairs/s)", metrics["epoch"],
                     metrics["train_loss"], metrics["val_loss"], metrics["pairs_per_second"])

        fit = train_general_clip(clip, tokenizer, pixels, (train.images, train.captions), (val.images, val.captions),
                                 general, on_epoch=log_epoch)

        def texts(items) -> Any:
            return encode_texts(clip, tokenizer, items)

        zero_shot = attribute_zero_shot(encode_images(clip, pixels, heldout.images), heldout.attributes, texts,
                                        objects=OBJECTS, colours=COLOURS, prompt=prompt)
        val_images = encode_images(clip, pixels, val.images)
        retrieval = caption_retrieval(val_images, val.captions, texts)
        # The same zero-shot on the validation split's single-object colour images (seen pairs): what the
        # corpus and training settings are chosen on; the held-out pairs are the evaluation.
        singles = [i for i, a in enumerate(val.attributes) if a["kind"] == "single" and not a["greyscale"]]
        val_zero_shot = attribute_zero_shot(val_images[singles], [val.attributes[i] for i in singles], texts,
                                            objects=OBJECTS, colours=COLOURS, prompt=prompt)
        distractors = distractor_cosines(texts(DISTRACTORS))
        save_clip(out, clip, tokenizer, pixels)
        summary = {
            "enabled": True,
            "best_epoch": fit.best_epoch,
            "best_val_loss": fit.best_val_loss,
            "epochs_run": len(fit.history),
            "stopped_early": fit.stopped_early,
            "seconds": fit.seconds,
            "vocab_size": len(tokenizer),
            "corpus": {split: corpus["counts"][split] for split in ("train", "val", "heldout")},
            "heldout_zero_shot": zero_shot,
            "val_zero_shot": val_zero_shot,
            "val_retrieval": retrieval,
            "distractor_cosine": distractors,
            "mlflow_run_id": run.info.run_id,
        }
        tracking.log_metrics({"best_val_loss": fit.best_val_loss, "best_epoch": fit.best_epoch, "seconds": fit.seconds,
                              **{f"heldout_zero_shot.{k}": v for k, v in zero_shot.items()},
                              **{f"val_retrieval.{k}": v for k, v in retrieval.items()}})
        metrics_file = write_metrics(params, f"{STAGE}.json", summary)
        history_file = write_history(metrics_file.with_name(f"{STAGE}_history.csv"), fit.history)
        for path in (metrics_file, history_file, effective):
            tracking.log_artifact(path, "reports")
        tracking.log_artifact(corpus_dir / "corpus.json", "corpus")
        tracking.log_artifacts(out, "model")
    log.info("pretrain_general: held-out pairs zero-shot %.3f (object %.3f, colour %.3f; chance %.3f), "
             "val R@1 i2t %.3f; best val loss %.4f at epoch %d (%.0fs); model in %s",
             zero_shot["mean_accuracy"], zero_shot["object_accuracy"], zero_shot["colour_accuracy"],
             zero_shot["chance"],
             retrieval["i2t_recall_at_1"], fit.best_val_loss, fit.best_epoch, fit.seconds, out)
    return summary


def main() -> None:
    stage_main(run)
