"""Stage 2: stream a weighted real/synthetic shard mix into an Accelerate LoRA fine-tune of open_clip.

Modules: ``config`` (dataclass config tree), ``data`` (resumable weighted mix loader), ``model``
(open_clip loading, MultiheadAttention <-> Linear + SDPA swap, image token encoder), ``text_tower``
(text encoders cut to the batch's longest caption), ``lora`` (lean LoRA
layer saved as a peft adapter), ``losses`` (weighted CLIP loss, SPARC fine-grained loss),
``checkpoint``, ``trainer`` (the loop), ``evaluate`` (retrieval + zero-shot), ``export`` (merged
open_clip checkpoint), ``plots``. Entry points: ``python -m training.train``, ``training.evaluate``,
``training.export``.
"""
