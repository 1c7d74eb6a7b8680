"""Quality filter: CLIP, sanity and image-quality scores as ``quality`` sidecars, global selection.

Run ``python -m builders.quality --config configs/filter/default.yaml --input URLS [key=value ...]``.
"""
