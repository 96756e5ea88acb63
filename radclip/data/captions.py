"""Captions in the paper's form, ``[Region] [Modality] with [Condition]``, or CXR-CML's meta labels,
``Chest X-ray: edema is present, pleural effusion is present`` (``CaptionTemplate.style``)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from radclip.config import CaptionTemplate


def _lower(condition: str) -> str:
    """Lower case but for acronyms, words with two capitals or more ("COVID-19", "ARDS")."""
    return " ".join(w if sum(ch.isupper() for ch in w) > 1 else w.lower() for w in condition.split())


def make_caption(template: CaptionTemplate, region: str, modality: str, conditions: Sequence[str]) -> str:
    """"Brain MRI with Glioma"; several conditions joined ("... with Edema and Nodule");
    none gives the normal form ("Normal Brain MRI"). The meta style: "Chest X-ray: edema is present,
    nodule is present" and "Chest X-ray: no finding"."""
    fields = {"region": region.strip(), "modality": modality.strip()}
    if conditions:
        names = [_lower(c.strip()) if template.lowercase else c.strip() for c in conditions]
        phrases = template.joiner.join(template.finding.format(condition=name) for name in names)
        text = template.template.format(condition=phrases, **fields)
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
