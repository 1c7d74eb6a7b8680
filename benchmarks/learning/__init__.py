"""Pieces of the learning benchmark: data sets with a held-out split, a stand-in base CLIP,
Stage 2 and open_clip_train runs from that base, and held-out scoring on human captions."""
