"""Stage 1 real set: originals, augmentations, M2B/B2C captions, optional VLM captions, zoom crops.

``python -m builders.real`` runs :mod:`builders.real.__main__`; :mod:`builders.real.build` is the
driver, :mod:`builders.real.recipe` what each sample holds.
"""
