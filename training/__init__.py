"""Stage 2: stream a weighted real/synthetic shard mix into an Accelerate LoRA fine-tune of open_clip.

Modules: ``config`` (dataclass config tree), ``mix`` (the mix specification: sources, weights,
loader settings), ``streams`` (per-source resampled, shuffled raw streams and their resume state),
``augment`` (decode, seeded crop/flip, caption choice), ``data`` (the resumable loader that mixes
them into batches), ``quality_gate`` (the mix checked against the quality filter's
``selection.json``), ``model`` (the LoRA-wrapped open_clip model and the loss terms of a batch),
``lora`` (lean LoRA layer saved as a peft adapter), ``losses`` (weighted CLIP loss, SPARC
fine-grained loss), ``optim`` (optimizer, schedule, run length), ``checkpoint`` and ``resume``,
``runlog`` (training_log.json), ``trainer`` (setup, loop, finish), ``evaluate`` (retrieval +
zero-shot), ``export`` (merged open_clip checkpoint), ``plots``, ``standin_base`` (a stand-in base
model for tests and the demo). Entry points: ``python -m training.train``, ``training.evaluate``,
``training.export``, ``training.standin_base``.
"""
