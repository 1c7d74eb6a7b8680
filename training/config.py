"""Typed configuration tree of the Stage 2 LoRA trainer (loaded with wds_tools.config)."""

from dataclasses import dataclass, field

from clip_models.config import ModelConfig

MIXED_PRECISIONS = ("no", "fp16", "bf16", "fp8")
# Values of a sample's json["kind"] the builders write (wds_tools/sample.py META_FIELDS): the real
# builder's originals, augmentations and zoom crops, and the synthetic builder's modes.
SAMPLE_KINDS = ("original", "augmented", "zoom_crop", "inpaint_replace", "inpaint_remove", "img2img", "text2img")
# Settings a resumed run may change when train.resume_allow_changes names them: those whose new
# value the resumed run really uses (the run's length and the schedule are rebuilt, the optimizer's
# learning rates and weight decay are set again after the checkpoint is loaded). Every other stored
# setting is held by the checkpoint's weights, optimizer, RNG or data position (training/resume.py).
RESUME_MAY_CHANGE = ("train.max_steps", "train.num_epochs", "train.samples_per_epoch", "train.warmup_steps",
                     "train.schedule", "train.learning_rate", "train.full_param_lr_scale", "train.weight_decay")


def _at_least(cfg, name: str, low: int) -> None:
    value = getattr(cfg, name)
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


@dataclass
class LoraConfig:
    """LoRA on attention and MLP of both towers."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"]
    )
    # rsLoRA: scale the update by alpha / sqrt(rank) instead of alpha / rank (Kalajdzievski 2023),
    # so a larger rank does not shrink the update; saved as peft's use_rslora.
    rslora: bool = False
    # Parameters trained in full beside the LoRA factors. Heads: visual.proj, text_projection,
    # logit_scale. LayerNorms: every LayerNorm weight and bias of both towers. Token embedding:
    # the text tower's embedding table (a base that never trained a word cannot use it otherwise).
    train_heads: bool = True
    train_layernorms: bool = False
    train_token_embedding: bool = False
    # torch.compile the model (worth it on GPU; warm-up takes about a minute).
    compile: bool = False


@dataclass
class DataConfig:
    """Weighted streaming mix of a real and a synthetic source."""

    real: list[str] = field(default_factory=list)
    synthetic: list[str] = field(default_factory=list)
    # Probability that a sample is drawn from the synthetic source (SYNTHETIC_RATIO).
    synthetic_ratio: float = 0.8
    # Exact per-batch proportions instead of independent per-sample draws.
    stratified: bool = False
    num_workers: int = 4
    # Shards opened together and read interleaved per visit of a source (one sample held per shard).
    shards_per_chunk: int = 16
    # Batches each loader worker prepares ahead (DataLoader's prefetch_factor): more hides an object
    # store's latency, at the memory of that many batches per worker (benchmarks/bench_loader.py).
    prefetch_factor: int = 2
    # Raw samples a source's shuffle buffer holds (memory vs. mixing); it spans chunk boundaries.
    shuffle_buffer: int = 2000
    crop_scale_min: float = 0.8
    hflip: bool = True
    # Draw one of meta["captions"] at random per sample; False = always the primary caption.
    random_caption: bool = True
    quality_sidecar: str = "quality"
    # Join the quality filter's sidecars and train only on what it selected (training/quality_gate.py).
    use_quality: bool = True
    # selection.json files of the filter; empty = the selection.json beside the shards.
    selection: list[str] = field(default_factory=list)
    # A shard whose sidecar is missing, pending or not in the selection stops the run (false: a warning).
    require_selection: bool = True
    allow_pipe: bool = False
    # Images above this many pixels (read from the header) are counted skips, in training and
    # evaluation; 0 = PIL's Image.MAX_IMAGE_PIXELS (about 89 million).
    max_image_pixels: int = 0
    # Train only on samples whose json["kind"] is listed (SAMPLE_KINDS); empty = every kind. A sample
    # without a kind counts as "original" (the builders' convention). Others are counted drops
    # (kind_dropped), so a run sized in samples still trains on as many samples.
    kinds: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad value, before any work starts."""
        for kind in self.kinds:
            if kind not in SAMPLE_KINDS:
                raise ValueError(f"data.kinds: {kind!r} is not a sample kind; valid: {', '.join(SAMPLE_KINDS)}")
        if len(set(self.kinds)) < len(self.kinds):
            raise ValueError(f"data.kinds lists a kind more than once: {self.kinds}")
        _at_least(self, "num_workers", 0)
        _at_least(self, "shards_per_chunk", 1)
        _at_least(self, "prefetch_factor", 1)
        _at_least(self, "max_image_pixels", 0)
        if not 0.0 <= self.synthetic_ratio <= 1.0:
            raise ValueError(f"synthetic_ratio must be in [0, 1], got {self.synthetic_ratio}")
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")


@dataclass
class LossConfig:
    """Contrastive loss, rare-class weighting and fine-grained word-region alignment."""

    rare_class_weight: float = 2.0
    # A class is rare when its share of the classed samples is below
    # rare_class_threshold / number_of_classes (0.5 = under half the uniform share).
    rare_class_threshold: float = 0.5
    # Off by default since 2026-12-02 (the seed had it on): measured to cost held-out recall on
    # the learning benchmark (UCM, 5 seeds: 67.75 with it against 70.58 without) and on a 30-class
    # aerial corpus (4.11 against 4.53); see docs/learning_benchmark.md.
    use_fine_grained: bool = False
    fine_grained_weight: float = 0.3
    fine_grained_temperature: float = 0.07
    # False negatives left out of the contrastive softmax (training/losses.py): samples of one
    # source (an original and its augmentations and crops), samples with identical caption tokens,
    # and, in the word-region loss, repeated tokens of one caption. All off = the plain losses.
    mask_same_source: bool = True
    mask_same_caption: bool = True
    mask_repeated_words: bool = True


@dataclass
class TrainConfig:
    """Optimisation, schedule, checkpoints and outputs."""

    output: str = "checkpoints/stage2_lora"
    batch_size: int = 32
    grad_accum: int = 1
    learning_rate: float = 1e-4
    # Learning rate of the parameters trained in full beside LoRA (heads, LayerNorms, token
    # embedding) as a multiple of learning_rate.
    full_param_lr_scale: float = 1.0
    # LoRA+ (Hayou et al. 2024): the learning rate of the LoRA B factors as a multiple of
    # learning_rate (the A factors stay at it); 1 = plain LoRA.
    lora_b_lr_scale: float = 1.0
    weight_decay: float = 0.01
    warmup_steps: int = 100
    # After warm-up: "cosine" (decay to 0 at the last step) or "constant".
    schedule: str = "cosine"
    num_epochs: int = 10
    # Optimizer steps; > 0 overrides num_epochs, 0 = unset (num_epochs x the epoch size).
    max_steps: int = 0
    # Used when a source has no dataset.json to size an epoch.
    samples_per_epoch: int = 0
    mixed_precision: str = "bf16"
    seed: int = 42
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    # "auto" = newest checkpoint under output/checkpoints, "" = start fresh, or a path. A resume
    # refuses settings that differ from the checkpoint's, except those listed here (from
    # RESUME_MAY_CHANGE, e.g. [train.max_steps] to extend a run).
    resume: str = "auto"
    resume_allow_changes: list[str] = field(default_factory=list)
    # The run aborts once this many steps had a NaN/inf loss.
    max_nonfinite_steps: int = 20
    # Append each step's sample keys to output/sample_keys.rank<R>.jsonl.
    log_sample_keys: bool = False
    # Experiment trackers (Accelerate's log_with: tensorboard, wandb, trackio, ...), written under
    # output/ by the main process; empty = none (training/tracking.py).
    report_to: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad value, before any work starts."""
        for name in ("batch_size", "grad_accum", "log_every"):
            _at_least(self, name, 1)
        for name in ("warmup_steps", "num_epochs", "samples_per_epoch", "checkpoint_every",
                     "keep_checkpoints", "max_nonfinite_steps"):
            _at_least(self, name, 0)
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0 (0 = unset: num_epochs x the epoch size from "
                             f"dataset.json or samples_per_epoch), got {self.max_steps}")
        if self.max_steps == 0 and self.num_epochs == 0:
            raise ValueError("max_steps and num_epochs are both 0: nothing to train; set one of them")
        if not self.learning_rate > 0:  # also refuses NaN; 0 would train nothing while looking busy
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be cosine or constant, got {self.schedule!r}")
        if not self.full_param_lr_scale >= 0:
            raise ValueError(f"full_param_lr_scale must be >= 0, got {self.full_param_lr_scale}")
        if not self.lora_b_lr_scale > 0:
            raise ValueError(f"lora_b_lr_scale must be > 0, got {self.lora_b_lr_scale}")
        for key in self.resume_allow_changes:
            if key not in RESUME_MAY_CHANGE:
                raise ValueError(f"resume_allow_changes: {key!r} cannot change on resume (the checkpoint holds its "
                                 f"old value); it may name {', '.join(RESUME_MAY_CHANGE)}")


@dataclass
class EvalConfig:
    """Held-out retrieval and zero-shot evaluation run before and after training."""

    shards: list[str] = field(default_factory=list)
    # LoRA adapter folder for training.evaluate / training.export (default: <train.output>/peft_adapter);
    # a missing folder is an error, never a silent fall back to the base model.
    adapter: str = ""
    # training.evaluate: evaluate the base model alone (model.*), without any adapter.
    base_only: bool = False
    before: bool = True
    after: bool = True
    batch_size: int = 64
    max_samples: int = 0
    # Caption sources used as retrieval queries/targets (e.g. [original] for benchmark numbers on
    # human captions only); empty = every caption of an image.
    caption_sources: list[str] = field(default_factory=list)
    templates: list[str] = field(
        default_factory=lambda: [
            "a satellite photo of {}.",
            "an aerial photograph of {}.",
            "a remote sensing image of {}.",
        ]
    )

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad value, before any work starts."""
        _at_least(self, "batch_size", 1)
        _at_least(self, "max_samples", 0)
        if self.base_only and self.adapter:
            raise ValueError(f"base_only=true evaluates the base model without an adapter, but adapter is "
                             f"{self.adapter!r}: give one of them")


@dataclass
class Stage2Config:
    """Root of the Stage 2 configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


CLI_FLAGS = {
    "--real": "data.real",
    "--synthetic": "data.synthetic",
    "--output": "train.output",
    "--max-steps": "train.max_steps",
    "--eval": "eval.shards",
}
