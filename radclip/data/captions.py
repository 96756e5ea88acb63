"""Captions in the paper's form: ``[Region] [Modality] with [Condition]``."""

from __future__ import annotations

import re
from collections.abc import Sequence

from radclip.config import CaptionTemplate


def make_caption(template: CaptionTemplate, region: str, modality: str, conditions: Sequence[str]) -> str:
    """"Brain MRI with Glioma"; several conditions joined ("... with Edema and Nodule");
    none gives the normal form ("Normal Brain MRI")."""
    fields = {"region": region.strip(), "modality": modality.strip()}
    if conditions:
        text = template.template.format(condition=template.joiner.join(c.strip() for c in conditions), **fields)
    else:
        text = template.normal.format(**fields)
    return " ".join(text.split())  # an empty region/modality leaves no double spaces


def caption_pattern(template: CaptionTemplate) -> str:
    """A regex that every caption made from ``template`` matches (for validation)."""

    def to_regex(text: str) -> str:
        parts = re.split(r"(\{region\}|\{modality\}|\{condition\})", text)
        out = []
        for part in parts:
            if part in ("{region}", "{modality}", "{condition}"):
                out.append(r"\S.*?" if part == "{condition}" else r"[^\s].*?")
            else:
                out.append(r"\s+".join(re.escape(word) for word in part.split(" ")))
        return "".join(out)

    return rf"^(?:{to_regex(template.template)}|{to_regex(template.normal)})$"
