"""The model layer below both stages: open_clip loading, attention swap, text tower, preprocessing.

Imported by ``builders`` (the quality filter) and ``training`` (Stage 2); imports neither.
"""
