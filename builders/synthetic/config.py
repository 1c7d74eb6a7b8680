"""Config tree of the synthetic-set builder (defaults mirror configs/build/synthetic.yaml).

Each model stage's own config comes from its module in ``builders.synthetic.stages``; this tree
adds the input, the generation modes and their mix, scheduling and the executors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from builders.common.split import HeldOutSplit, resolve_split
from builders.synthetic.stages.describe import DescribeConfig
from builders.synthetic.stages.generate import GenerateConfig
from builders.synthetic.stages.ground import GroundConfig
from builders.synthetic.stages.segment import SegmentConfig
from builders.synthetic.stages.upscale import UpscaleConfig

MODES = ("inpaint_replace", "inpaint_remove", "img2img", "text2img")
STAGES = ("upscale", "describe", "ground", "segment", "generate", "verify")


def _vocabulary() -> dict[str, list[str]]:
    # Only these objects are edited (scene nouns such as "beach" are not); one group's objects
    # have about the same footprint from above, so a replacement fits the segmented outline.
    return {"vehicle": ["car", "truck", "bus", "van"],
            "vessel": ["boat", "ship", "yacht"],
            "aircraft": ["airplane", "helicopter"],
            "building": ["house", "building", "warehouse", "church", "school", "greenhouse"],
            "structure": ["storage tank", "container", "solar panel"],
            "vegetation": ["tree", "bush"],
            "water": ["pond", "swimming pool", "fountain"],
            "ground": ["parking lot", "tennis court", "basketball court", "playground", "garden"]}


def _variants() -> list[str]:
    return ["in winter, covered in snow", "in autumn, with orange and brown foliage",
            "in early spring, with fresh green vegetation", "at dusk, with long shadows",
            "under overcast light", "in strong midday sun", "as seen by a hazy satellite sensor",
            "as a high-contrast near-infrared false-colour image"]


@dataclass
class InputConfig:
    """What to read: the real set's train shards, or an image folder / caption file."""

    originals_only: bool = True     # augmented copies of a real image add no content
    max_per_shard: int = 0          # use at most this many source images of each unit; 0: all
    images_per_shard: int = 100     # image inputs only: source images per synthetic shard
    image_root: str = ""            # caption files: default their folder
    class_caption: str = "an aerial image of {cls}"
    # image inputs: the real build of the same images (its output folder or build_plan.json), whose
    # recorded held-out split is used here, so images it put in val/test are never generated from
    split_from: str = ""
    # ... or its held-out fractions and seed set by hand (with split_from: unset, or equal to it)
    val_fraction: float = 0.0
    test_fraction: float = 0.0
    split_seed: int = 0

    def heldout_split(self) -> HeldOutSplit:
        """The held-out split of image inputs: the one recorded at ``split_from``, else the one set here."""
        return resolve_split(HeldOutSplit(seed=self.split_seed, val_fraction=self.val_fraction,
                                          test_fraction=self.test_fraction), self.split_from)

    def validate(self) -> None:
        HeldOutSplit(seed=self.split_seed, val_fraction=self.val_fraction,
                     test_fraction=self.test_fraction).validate("inputs.")
        if self.images_per_shard < 1:
            raise ValueError(f"images_per_shard must be >= 1, got {self.images_per_shard}")
        if self.max_per_shard < 0:
            raise ValueError(f"max_per_shard must be >= 0, got {self.max_per_shard}")


@dataclass
class ModeMixConfig:
    """Relative weights of the four generation modes (normalised)."""

    inpaint_replace: float = 0.35
    inpaint_remove: float = 0.2
    img2img: float = 0.3
    text2img: float = 0.15

    def validate(self) -> None:
        w = [getattr(self, m) for m in MODES]
        if any(x < 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"mode weights must be >= 0 with a positive sum, got {dict(zip(MODES, w))}")


@dataclass
class ModeSettings:
    """Sampler settings of one mode."""

    strength: float = 1.0
    steps: int = 28
    guidance: float = 4.5           # SD3.5-Medium's model card (Large: 3.5); 7.0 is an SD1.5 value

    def validate(self) -> None:
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@dataclass
class ModesConfig:
    """Generation modes, their mix and how prompts and captions are made."""

    per_image: int = 2              # synthetic variants per source image
    mix: ModeMixConfig = field(default_factory=ModeMixConfig)
    fallback: Literal["", "img2img", "text2img"] = "img2img"   # when an inpaint mode cannot apply
    vocabulary: dict[str, list[str]] = field(default_factory=_vocabulary)
    variants: list[str] = field(default_factory=_variants)
    remove_count: int = 1           # instances of the chosen label an inpaint_remove fills in
    max_box_area: float = 0.4       # larger boxes are scenery, not an object to edit
    # Guidance of the default generate.model, SD3.5-Medium: its model card uses 4.5
    # (huggingface.co/stabilityai/stable-diffusion-3.5-medium); set 3.5 for SD3.5-Large.
    inpaint_replace: ModeSettings = field(default_factory=lambda: ModeSettings(1.0, 28, 4.5))
    inpaint_remove: ModeSettings = field(default_factory=lambda: ModeSettings(1.0, 28, 4.5))
    img2img: ModeSettings = field(default_factory=lambda: ModeSettings(0.45, 28, 4.5))
    text2img: ModeSettings = field(default_factory=lambda: ModeSettings(1.0, 28, 4.5))
    prompt_style: str = "aerial top-down photograph, high detail"
    replace_prompt: str = "{object}, seen from directly above"
    negative_prompt: str = "blurry, distorted, text, watermark, oblique view, low quality"

    def validate(self) -> None:
        if self.per_image < 1:
            raise ValueError(f"per_image must be >= 1, got {self.per_image}")
        if self.remove_count < 1:
            raise ValueError(f"remove_count must be >= 1, got {self.remove_count}")
        if not self.variants:
            raise ValueError("variants must list at least one img2img phrase")
        if sum(len(v) for v in self.vocabulary.values()) < 2:
            raise ValueError(f"vocabulary needs at least two objects, got {self.vocabulary}")


@dataclass
class VerifyConfig:
    """Grounding DINO on the result: is the edited object found inside its mask?"""

    enabled: bool = True
    min_inside: float = 0.5         # share of a found box's area inside the dilated mask
    threshold: float = 0.0          # 0: the ground stage's own box threshold


@dataclass
class SyntheticBuildConfig:
    """``python -m builders.synthetic``: real train shards (or images) -> synthetic train shards."""

    input: str = ""
    output: str = ""
    work_dir: str = ""              # per-chunk intermediates; default OUTPUT/work
    overwrite: bool = False
    break_lock: bool = False        # take over another host's lock that has gone stale
    seed: int = 0
    size: int = 256                 # stored image side (the generation size is upscale.size)
    image_ext: Literal["jpg", "png", "webp"] = "jpg"
    quality: int = 90
    chunk_size: int = 16            # images per chunk: each stage runs over a chunk at a time
    resident: bool = False          # keep all models loaded (a large card) instead of one at a time
    stages: list[str] = field(default_factory=lambda: ["all"])   # e.g. [generate]: rerun those only
    device: str = "auto"
    cpu_threads: int = 0            # torch threads per worker; 0: torch's default (all cores)
    executor: Literal["local", "ray"] = "local"
    workers: int = 0                # 0: one worker per GPU (one per CPU without GPUs); N: at most N
    gpus_per_task: float = 1.0      # GPU share per unit (Ray: fractional allowed); CPU-only: ignored
    ray_address: str = ""
    preview: bool = True
    objects_from_captions: bool = True  # ground the nouns the parent's captions name, too
    inputs: InputConfig = field(default_factory=InputConfig)
    modes: ModesConfig = field(default_factory=ModesConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    upscale: UpscaleConfig = field(default_factory=UpscaleConfig)
    describe: DescribeConfig = field(default_factory=DescribeConfig)
    ground: GroundConfig = field(default_factory=GroundConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def validate(self) -> None:
        if self.size < 8:
            raise ValueError(f"size must be >= 8, got {self.size}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in 1..100, got {self.quality}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.gpus_per_task < 0:
            raise ValueError(f"gpus_per_task must be >= 0, got {self.gpus_per_task}")
        bad = [s for s in self.stages if s != "all" and s not in STAGES]
        if bad or not self.stages:
            raise ValueError(f"stages must be 'all' or names from {list(STAGES)}, got {self.stages}")

    def rerun_stages(self) -> tuple[str, ...]:
        """Stages whose earlier results are discarded and computed again (empty: resume all)."""
        if "all" in self.stages:
            return ()
        first = min(STAGES.index(s) for s in self.stages)
        return STAGES[first:]
