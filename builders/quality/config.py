"""The quality filter's config tree (loaded with ``wds_tools.config``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from builders.quality.image_quality import ImageQualityConfig
from clip_models.config import ModelConfig
from clip_models.device import check_device


@dataclass
class ScoringModelConfig(ModelConfig):
    """The CLIP model that scores image-caption agreement: the shared model section
    (``clip_models.config.ModelConfig``: name, weights, device, precision) plus the scoring batch."""

    batch_size: int = 256


@dataclass
class LoaderConfig:
    """Decoding in worker processes, overlapped with inference."""

    num_workers: int = 2
    prefetch_factor: int = 4
    allow_pipe: bool = False
    # torch threads of the scoring process on a CPU device; 0 = cores left over by the workers
    # (min 1): more would spin-wait against the decoders when decoding is the bottleneck
    main_threads: int = 0
    # where CLIP runs: "main" (the scoring process), "workers" (each decode worker scores its own
    # batches with a forked copy of the model) or "auto" (workers on a CPU device, main on a GPU).
    # On CPUs one single-threaded model per worker beats one multi-threaded model fed by workers:
    # no process waits for another and the images never cross a process boundary.
    score_in: str = "auto"


@dataclass
class SanityConfig:
    """Caption-versus-boxes checks; boxes come from meta["boxes"] or are computed when missing."""

    compute_boxes: bool = True
    # computed regions below this normalised area are noise for counting
    min_box_area: float = 0.0


@dataclass
class CompositeConfig:
    """Weights of the composite and the linear map of raw CLIP cosine into [0, 1].

    A zero sanity or image-quality weight also skips computing that term: its raw scores are
    recorded as null. The CLIP score is always computed (the synthetic floor needs it).
    """

    clip_weight: float = 0.50
    sanity_weight: float = 0.25
    image_quality_weight: float = 0.25
    # cosine <= clip_low -> 0, >= clip_high -> 1 (matched CLIP pairs mostly fall between)
    clip_low: float = 0.10
    clip_high: float = 0.40


@dataclass
class SelectionConfig:
    """Selection: a CLIP floor per caption and for synthetic samples, and a top fraction by composite.

    The cut is global by default (one threshold over the whole data set). ``per_class`` takes the
    top fraction within each class instead (samples without a class form one group), and
    ``min_class_share`` lowers the threshold of any class that would keep less than that share of
    its scored samples until it keeps that share.
    """

    min_clip_score_synthetic: float = 0.25
    keep_top_percent: float = 0.70
    per_class: bool = False
    min_class_share: float = 0.0
    # A caption whose CLIP cosine is below its floor is never drawn by Stage 2; a sample left with
    # no kept caption is dropped. The floor is caption_floors[caption_source] when given, else
    # min_clip_score_caption.
    min_clip_score_caption: float = 0.15
    caption_floors: dict[str, float] = field(default_factory=dict)
    # a class keeping less than this share of its samples is a warning in the log and the report
    warn_class_kept_below: float = 0.5

    def caption_floor(self, source: str) -> float:
        """The CLIP floor of a caption from ``source``."""
        return self.caption_floors.get(source, self.min_clip_score_caption)


@dataclass
class ReportConfig:
    """What the report shows."""

    grid_samples: int = 8
    thumb_size: int = 160
    bins: int = 30


@dataclass
class QualityConfig:
    """``python -m builders.quality``: score shards into sidecars, select globally, report."""

    input: list[str] = field(default_factory=list)
    # report directory; empty = the directory of the first input shard
    output: str = ""
    # ignore existing sidecars and score every shard again
    rescore: bool = False
    # take over another host's quality.lock that has gone stale (see wds_tools.lock)
    break_lock: bool = False
    model: ScoringModelConfig = field(default_factory=ScoringModelConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    image_quality: ImageQualityConfig = field(default_factory=ImageQualityConfig)
    sanity: SanityConfig = field(default_factory=SanityConfig)
    composite: CompositeConfig = field(default_factory=CompositeConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad value, before any work starts.

        Floats are finite already (``wds_tools.config`` refuses NaN and inf); here their ranges.
        """
        sel, c = self.selection, self.composite
        if not 0.0 < sel.keep_top_percent <= 1.0:
            raise ValueError(f"selection.keep_top_percent must be in (0, 1], got {sel.keep_top_percent}")
        for name in ("min_class_share", "warn_class_kept_below"):
            _in_range(f"selection.{name}", getattr(sel, name), 0.0, 1.0)
        # cosines live in [-1, 1]
        _in_range("selection.min_clip_score_synthetic", sel.min_clip_score_synthetic, -1.0, 1.0)
        _in_range("selection.min_clip_score_caption", sel.min_clip_score_caption, -1.0, 1.0)
        for src, floor in sel.caption_floors.items():
            _in_range(f"selection.caption_floors.{src}", floor, -1.0, 1.0)
        _in_range("composite.clip_low", c.clip_low, -1.0, 1.0)
        _in_range("composite.clip_high", c.clip_high, -1.0, 1.0)
        weights = (c.clip_weight, c.sanity_weight, c.image_quality_weight)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"composite weights must be >= 0 with a positive sum, got {weights}")
        if c.clip_high <= c.clip_low:
            raise ValueError(f"composite.clip_high ({c.clip_high}) must exceed clip_low ({c.clip_low})")
        _in_range("sanity.min_box_area", self.sanity.min_box_area, 0.0, 1.0)
        _check_image_quality(self.image_quality)
        for name, value, low in (("model.batch_size", self.model.batch_size, 1),
                                 ("loader.main_threads", self.loader.main_threads, 0),
                                 ("loader.num_workers", self.loader.num_workers, 0),
                                 ("loader.prefetch_factor", self.loader.prefetch_factor, 1),
                                 ("report.grid_samples", self.report.grid_samples, 0),
                                 ("report.thumb_size", self.report.thumb_size, 8),
                                 ("report.bins", self.report.bins, 1)):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if self.loader.score_in not in ("auto", "main", "workers"):
            raise ValueError(f"loader.score_in must be auto, main or workers, got {self.loader.score_in!r}")
        if self.image_quality.where not in ("auto", "worker", "device"):
            raise ValueError(f"image_quality.where must be auto, worker or device, got {self.image_quality.where!r}")
        check_device(self.model.device, where="model.device")


def _in_range(name: str, value: float, low: float, high: float) -> None:
    # written so that NaN fails too, should one ever get past the loader
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def _check_image_quality(iq: ImageQualityConfig) -> None:
    for name in ("brightness_low", "brightness_high", "blank_allow"):
        _in_range(f"image_quality.{name}", getattr(iq, name), 0.0, 1.0)
    if iq.brightness_high <= iq.brightness_low:
        raise ValueError(f"image_quality.brightness_high ({iq.brightness_high}) must exceed "
                         f"brightness_low ({iq.brightness_low})")
    for name in ("contrast_ref", "blur_ref", "blank_std"):
        if not getattr(iq, name) > 0:
            raise ValueError(f"image_quality.{name} must be > 0, got {getattr(iq, name)}")
    if iq.size < 8 or iq.blank_block < 1:
        raise ValueError(f"image_quality.size must be >= 8 and blank_block >= 1, got {iq.size}, {iq.blank_block}")
    if not 0 <= iq.black_threshold <= 255:
        raise ValueError(f"image_quality.black_threshold must be in [0, 255], got {iq.black_threshold}")
