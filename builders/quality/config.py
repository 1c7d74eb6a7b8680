"""The quality filter's config tree (loaded with ``wds_tools.config``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from builders.quality.image_quality import ImageQualityConfig


@dataclass
class ModelConfig:
    """The CLIP model that scores image-caption agreement (see ``clip_model.load_clip``)."""

    name: str = "ViT-B-32-quickgelu"
    pretrained: str | None = None
    device: str = "auto"
    precision: str = "auto"
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
    """Global selection: a CLIP floor for synthetic samples and a top fraction by composite."""

    min_clip_score_synthetic: float = 0.25
    keep_top_percent: float = 0.70


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
    model: ModelConfig = field(default_factory=ModelConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    image_quality: ImageQualityConfig = field(default_factory=ImageQualityConfig)
    sanity: SanityConfig = field(default_factory=SanityConfig)
    composite: CompositeConfig = field(default_factory=CompositeConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad value, before any work starts."""
        if not 0.0 < self.selection.keep_top_percent <= 1.0:
            raise ValueError(f"selection.keep_top_percent must be in (0, 1], got {self.selection.keep_top_percent}")
        c = self.composite
        weights = (c.clip_weight, c.sanity_weight, c.image_quality_weight)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"composite weights must be >= 0 with a positive sum, got {weights}")
        if c.clip_high <= c.clip_low:
            raise ValueError(f"composite.clip_high ({c.clip_high}) must exceed clip_low ({c.clip_low})")
        if self.model.batch_size < 1:
            raise ValueError(f"model.batch_size must be >= 1, got {self.model.batch_size}")
        if self.loader.score_in not in ("auto", "main", "workers"):
            raise ValueError(f"loader.score_in must be auto, main or workers, got {self.loader.score_in!r}")
        if self.image_quality.where not in ("auto", "worker", "device"):
            raise ValueError(f"image_quality.where must be auto, worker or device, got {self.image_quality.where!r}")
        if self.loader.main_threads < 0:
            raise ValueError(f"loader.main_threads must be >= 0, got {self.loader.main_threads}")
        if self.loader.num_workers < 0:
            raise ValueError(f"loader.num_workers must be >= 0, got {self.loader.num_workers}")
