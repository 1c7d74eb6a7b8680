"""Config tree of the real-set builder (defaults mirror configs/build/real.yaml)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from builders.common.split import HeldOutSplit
from builders.common.vlm_captions import VLMConfig


@dataclass
class SplitConfig:
    """Held-out splits for inputs that do not name one (hash of the build's ``seed`` and the key,
    so stable): see :class:`builders.common.split.HeldOutSplit`."""

    val_fraction: float = 0.0
    test_fraction: float = 0.0
    augment_heldout: bool = False   # held-out images are written as originals only by default

    def validate(self) -> None:
        HeldOutSplit(val_fraction=self.val_fraction, test_fraction=self.test_fraction).validate()


@dataclass
class AugmentConfig:
    """NUM_AUGMENTATIONS_PER_IMAGE and the jitter ranges."""

    per_image: int = 5
    crop_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    rewrite_positions: bool = True
    m2b_captions: bool = True       # caption each augmented image anew with M2B/B2C
    # Shards a source's original and augmentations are spread over (1: all in one shard). Each
    # extra shard decodes the source again (and captions it again when a VLM is set).
    spread_shards: int = 3

    def validate(self) -> None:
        if self.per_image < 0:
            raise ValueError(f"per_image must be >= 0, got {self.per_image}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must be [lo, hi] with 0 < lo <= hi <= 1, got {self.crop_scale}")
        if self.spread_shards < 1:
            raise ValueError(f"spread_shards must be >= 1, got {self.spread_shards}")


@dataclass
class M2BConfig:
    """USE_M2B_B2C: region finding and captions from regions."""

    enabled: bool = True
    grid: int = 3
    min_cell_fraction: float = 0.25
    min_area: float = 0.02
    max_regions: int = 3
    analysis_size: int = 128        # M2B runs on a copy at most this large

    def validate(self) -> None:
        if self.analysis_size < 16:
            raise ValueError(f"analysis_size must be >= 16, got {self.analysis_size}")
        if self.grid < 1:
            raise ValueError(f"grid must be >= 1, got {self.grid}")


@dataclass
class ZoomConfig:
    """ENABLE_ZOOM_CROPS: crops around regions and detector boxes."""

    enabled: bool = True
    max_per_image: int = 2
    min_area: float = 0.04
    max_box_area: float = 0.5
    min_score: float = 0.3
    detector_min_score: float = 0.3
    margin: float = 0.1
    min_side: float = 0.25
    max_side: float = 0.6           # crops that would cover more than this are dropped



@dataclass
class RealBuildConfig:
    """``python -m builders.real``: source images -> train/val/test shard folders."""

    input: str = ""
    output: str = ""
    image_root: str = ""            # for caption files; default: the caption file's folder
    overwrite: bool = False
    verify: bool = False            # on resume, check each finished shard's sha256 (size always)
    break_lock: bool = False        # take over another host's lock that has gone stale
    seed: int = 0
    size: int = 256                 # training size: short side resized, centre-cropped square
    image_ext: Literal["jpg", "png", "webp"] = "jpg"
    quality: int = 90
    images_per_shard: int = 100     # source images per shard unit (each adds augs and crops)
    # "permuted": keys in a seeded hash order, so shards mix classes; "sorted": key order (keys
    # begin with the class folder, so each shard holds one or two classes).
    shard_order: Literal["permuted", "sorted"] = "permuted"
    class_caption: str = "an aerial image of {cls}"   # used when the input has no caption
    executor: Literal["local", "ray"] = "local"
    # 0: one per CPU (with a VLM on CUDA: one per GPU, each pinned to its own; N: at most N);
    # with executor=local, 1 runs in-process
    workers: int = 0
    ray_address: str = ""           # empty: join RAY_ADDRESS if set, else start a local cluster
    preview: bool = True            # write OUT/preview.png from the first train shard
    splits: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    m2b: M2BConfig = field(default_factory=M2BConfig)
    zoom: ZoomConfig = field(default_factory=ZoomConfig)
    vlm: VLMConfig = field(default_factory=VLMConfig)

    def heldout_split(self) -> HeldOutSplit:
        """The held-out split this build makes (recorded in build_plan.json for the synthetic builder)."""
        return HeldOutSplit(seed=self.seed, val_fraction=self.splits.val_fraction,
                            test_fraction=self.splits.test_fraction)

    def validate(self) -> None:
        if self.size < 8:
            raise ValueError(f"size must be >= 8, got {self.size}")
        if self.images_per_shard < 1:
            raise ValueError(f"images_per_shard must be >= 1, got {self.images_per_shard}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in 1..100, got {self.quality}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
