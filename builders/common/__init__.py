"""What the Stage 1 builders share: input readers, shard planning, executors, preview, VLM captions."""
