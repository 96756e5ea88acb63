"""LRCLR benchmark: what one LRCLR epoch costs against one control epoch, and the localisation table.

(a) Epoch cost, measured side by side in one process: the training step of each arm of
    ``pretrain_lrclr`` on the same batch of curated training images (default 64) from the same
    starting weights (``models/radclip-2d``). *lrclr*: ``LrclrStep`` (the vision tower on its eager
    attention path with the rollout, region selection, the cross-modal transformer over the cached
    caption token states) + ``GlobalLocalLoss`` (λ from params) + backward + AdamW. *control*:
    ``ImageStep`` + the same loss at λ = 0 + backward + AdamW. Repetitions alternate the order and
    report medians; an epoch is the training split's steps at that batch, so the ratio of epoch
    costs is the ratio of step medians (printed with both).

(b) The localisation table of the last ``localise`` run (``reports/localisation.md``), when it exists.

    python bench/lrclr.py [--batch 64] [--steps 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from radclip.config import load_params
from radclip.core.losses import GlobalLocalLoss
from radclip.core.models import RadCLIP
from radclip.core.models.regions import TextTokenCache
from radclip.jobs.common import MODEL_2D, model_dir
from radclip.training.loop import ImageCaptionDataset, ImageStep, LrclrStep, TokenTable, build_optimizer, prepare_lrclr


def _arm(params, start: Path, local: bool):
    model = RadCLIP.from_pretrained(start)
    if local:
        prepare_lrclr(model, params)
    model.trainable_parameters("lrclr")
    model.train()
    step = LrclrStep(model) if local else ImageStep(model)
    return model, step, build_optimizer(model, params.lrclr.train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="steps per timed repetition")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    params = load_params(None)
    start = model_dir(params, MODEL_2D)
    if not start.exists():
        raise SystemExit(f"{start}: run `dvc repro pretrain_2d` first (the arms start from that model)")
    data = ImageCaptionDataset(str(params.resolve(params.paths.curated)), "train")
    rows = torch.arange(args.batch) % len(data)
    images = torch.stack([data[int(i)][0] for i in rows])
    caption_ids = torch.tensor([data[int(i)][1] for i in rows])
    steps_per_epoch = len(data) // args.batch
    arms = {"lrclr": _arm(params, start, True), "control": _arm(params, start, False)}
    lam = params.lrclr.local_weight
    text = arms["control"][0].encode_text(list(data.captions)).detach()
    model = arms["lrclr"][0]
    tokens = TokenTable(*TextTokenCache(model.clip, model.tokenizer).encode(list(data.captions)))
    losses = {"lrclr": GlobalLocalLoss(lam), "control": GlobalLocalLoss(0.0)}

    def step(arm: str) -> None:
        model, module, optimizer = arms[arm]
        if arm == "lrclr":
            features, local_image, local_text, scale = module(images, *tokens.rows(caption_ids))
        else:
            (features, scale), local_image, local_text = module(images), None, None
        loss, _, _ = losses[arm](features, text[caption_ids], local_image, local_text, scale, caption_ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for arm in arms:  # warm-up
        step(arm)
    seconds: dict[str, list[float]] = {arm: [] for arm in arms}
    for repeat in range(args.repeats):
        for arm in (list(arms) if repeat % 2 == 0 else list(reversed(arms))):
            started = time.perf_counter()
            for _ in range(args.steps):
                step(arm)
            seconds[arm].append((time.perf_counter() - started) / args.steps)
    median = {arm: statistics.median(values) for arm, values in seconds.items()}
    print(f"(a) one epoch = {steps_per_epoch} steps of batch {args.batch} ({len(data)} training images), "
          f"torch threads {torch.get_num_threads()}, λ = {lam}")
    print("| arm | step (s, median) | epoch (s) | pairs/s |")
    print("|---|---|---|---|")
    for arm in arms:
        print(f"| {arm} | {median[arm]:.3f} | {median[arm] * steps_per_epoch:.1f} | {args.batch / median[arm]:.0f} |")
    print(f"LRCLR epoch / control epoch: {median['lrclr'] / median['control']:.2f}x")
    report = params.resolve(params.paths.reports) / "localisation.md"
    print()
    print(report.read_text() if report.exists() else f"(b) {report} not found: run `dvc repro localise`")


if __name__ == "__main__":
    main()
