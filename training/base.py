"""Old name of :mod:`training.standin_base` (the job that trains the stand-in base model):
``python -m training.base`` and ``from training.base import ...`` keep working."""

from __future__ import annotations

import sys

from training.standin_base import FLAGS, BaseConfig, main, train_base

__all__ = ["FLAGS", "BaseConfig", "main", "train_base"]

if __name__ == "__main__":
    sys.exit(main())
