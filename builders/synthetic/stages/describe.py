"""Stage 2, describe: one caption and the objects in view per image, from Qwen2-VL.

The model loads through the real set's VLM loader (:mod:`builders.common.vlm_captions`: local path
or hub id, bounded ``max_pixels``, greedy decoding, bf16 on CUDA). The prompt asks for a fixed
two-line answer::

    Caption: <one sentence>
    Objects: <comma-separated list>

and :func:`parse_description` also accepts a JSON object ``{"caption": ..., "objects": [...]}``.
It reads the raw answer, line breaks kept, and drops chat markdown (``**Caption:**``, ``###``,
bullets, numbered lists) per line, so an object list may be a bulleted or numbered column too.
An answer in neither form (or with no usable object list) falls back to the aerial nouns found in
the caption (``nouns``; ``fallback=True`` records that). An empty answer is ``Skip("no caption")``.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

from PIL import Image

from builders.common.vlm_captions import answer_sections
from builders.synthetic.stages.base import Skip, Stage

log = logging.getLogger(__name__)

PROMPT = ("Describe this aerial image. Answer in exactly this format:\n"
          "Caption: <one sentence describing the scene>\n"
          "Objects: <comma-separated list of the objects in view>")

# What aerial tiles show (RSICD / UCM / DOTA classes and their common parts), singular.
AERIAL_NOUNS = [
    "airplane", "airport", "bare land", "baseball field", "basketball court", "beach", "boat",
    "bridge", "building", "bus", "car", "church", "container", "court", "crop field", "dam",
    "desert", "farmland", "field", "forest", "golf course", "grass", "greenhouse", "harbor",
    "helicopter", "highway", "house", "industrial area", "intersection", "island", "lake",
    "meadow", "mountain", "overpass", "park", "parking lot", "playground", "pond", "pool",
    "port", "railway", "railway station", "residential area", "river", "road", "roof",
    "roundabout", "runway", "school", "ship", "soccer field", "solar panel", "square", "stadium",
    "storage tank", "swimming pool", "tennis court", "track", "train", "tree", "truck",
    "vehicle", "viaduct", "warehouse", "water", "wind turbine",
]

_LEADING = {"a", "an", "the", "some", "several", "many", "few", "one", "two", "three", "four",
            "five", "six", "seven", "eight", "nine", "ten", "multiple", "various", "numerous"}
_IRREGULAR = {"people": "person", "men": "man", "women": "woman", "leaves": "leaf", "buses": "bus",
              "greenhouses": "greenhouse", "warehouses": "warehouse", "houses": "house"}


@dataclass(kw_only=True)
class DescribeConfig:
    """Qwen2-VL model, prompt and decoding for the caption + objects answer."""

    model: str = "Qwen/Qwen2-VL-2B-Instruct"
    prompt: str = PROMPT
    batch_size: int = 8
    max_new_tokens: int = 96
    max_objects: int = 8
    max_pixels: int = 448 * 448
    min_pixels: int = 56 * 56
    dtype: str = "auto"
    nouns: list[str] = field(default_factory=lambda: list(AERIAL_NOUNS))

    def validate(self) -> None:
        if not self.model:
            raise ValueError("describe.model is empty: set a local path or hub id of a Qwen2-VL model")
        for name in ("batch_size", "max_new_tokens", "max_objects"):
            if getattr(self, name) < 1:
                raise ValueError(f"describe.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Description:
    """A caption, the objects in view, the model's raw answer, and whether objects fell back."""

    caption: str
    objects: list[str]
    raw: str
    fallback: bool

    @classmethod
    def from_dict(cls, d: dict) -> Description:
        """Inverse of ``dataclasses.asdict`` (for results kept as JSON between stages)."""
        return cls(caption=d["caption"], objects=list(d["objects"]), raw=d["raw"], fallback=bool(d["fallback"]))


def singular(word: str) -> str:
    """A plural English noun's singular, for the plurals aerial captions use."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def clean_object(text: str) -> str | None:
    """``"Two Red Cars."`` -> ``"red car"``; None when nothing noun-like is left."""
    words = re.sub(r"[^a-z\s-]", " ", text.lower()).split()
    while words and words[0] in _LEADING:
        words = words[1:]
    if not words or len(words) > 4:
        return None
    words[-1] = singular(words[-1])
    return " ".join(words)


def nouns_in(caption: str, vocabulary: list[str]) -> list[str]:
    """Vocabulary nouns in ``caption`` (plurals matched), longest phrases first, in caption order."""
    words = [singular(w) for w in re.findall(r"[a-z]+", caption.lower())]
    text = f" {' '.join(words)} "
    found: list[tuple[int, str]] = []
    taken = [False] * len(text)
    for noun in sorted({singular(n) if " " not in n else n for n in vocabulary}, key=len, reverse=True):
        # Multi-word phrases match with their last word singular: "tennis courts" -> "tennis court".
        for m in re.finditer(re.escape(f" {noun} "), text):
            span = range(m.start() + 1, m.end() - 1)
            if not any(taken[i] for i in span):
                found.append((m.start(), noun))
                for i in span:
                    taken[i] = True
    return list(dict.fromkeys(n for _, n in sorted(found)))


_NOT_OBJECTS = {"none", "nothing", "etc", "other", "others", "n a", "no objects", "not visible"}


def _split_objects(text: str) -> list[str]:
    """An object list as written: one per line or bullet, or separated by commas, semicolons,
    "and", slashes or sentence ends; parenthesised remarks ("(many)") dropped."""
    text = re.sub(r"\([^)]*\)", " ", text)
    parts = re.split(r",|;|/|\n|\band\b|\.(?:\s|$)", text)
    out = [clean_object(p) for p in parts]
    return [c for c in out if c and c not in _NOT_OBJECTS]


def _parse_json(raw: str) -> tuple[str, list[str]] | None:
    m = re.search(r"\{.*\}", raw, re.S)
    if not m:
        return None
    try:
        obj = json.loads(m.group(0))
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("caption"), str):
        return None
    objects = obj.get("objects")
    items = objects if isinstance(objects, list) else []
    return obj["caption"], [c for c in (clean_object(str(x)) for x in items) if c]


def parse_description(raw: str | None, *, nouns: list[str], max_objects: int = 8) -> Description | None:
    """The caption and objects of a VLM answer; None when the answer holds no caption at all.

    The raw answer is parsed line by line: markdown (headings, bullets, list numbers, bold and
    italics) is removed from each line before its section is found, so a bulleted object list
    splits on its line breaks; whitespace is normalised last."""
    raw = (raw or "").strip()
    parsed = _parse_json(raw)
    if parsed is None:
        caption, obj_text = answer_sections(raw)
        objects = _split_objects(obj_text) if obj_text else []
    else:
        caption, objects = parsed
    caption = " ".join(caption.split()).strip(" \"'")
    if not re.search(r"[A-Za-z]{2}", caption):
        return None
    fallback = not objects
    if fallback:
        objects = nouns_in(caption, nouns)
    return Description(caption=caption, objects=list(dict.fromkeys(objects))[:max_objects], raw=raw,
                       fallback=fallback)


class Describer(Stage):
    """PIL images in, :class:`Description` (or ``Skip("no caption")``) out."""

    _model_attrs = ("captioner",)

    def _load(self) -> None:
        from builders.common.vlm_captions import VLMCaptioner, VLMConfig

        c = self.cfg
        dtype = str(self.dtype).removeprefix("torch.")
        self.captioner = VLMCaptioner(VLMConfig(
            model=c.model, prompt=c.prompt, batch_size=c.batch_size, max_new_tokens=c.max_new_tokens,
            device=str(self.device), dtype=dtype, max_pixels=c.max_pixels, min_pixels=c.min_pixels))

    def _batch(self, batch: list[Image.Image]) -> list:
        answers = self.captioner.answers(batch)  # raw: the object list's line breaks matter
        out: list = []
        for raw in answers:
            d = parse_description(raw, nouns=self.cfg.nouns, max_objects=self.cfg.max_objects)
            out.append(d if d is not None else Skip("no caption", detail=repr(raw)[:200]))
        return out
