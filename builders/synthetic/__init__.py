"""Stage 1 synthetic set: real train tiles upscaled, described, grounded, segmented and re-generated."""
