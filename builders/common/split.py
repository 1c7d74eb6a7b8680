"""The held-out split of a build: one definition, decided by the real builder, read by the synthetic one.

Inputs that name no split go to val or test by a hash of ``(seed, key)``
(:func:`builders.common.plan.hashed_split`) at the given fractions: :class:`HeldOutSplit`. The real
builder's split is its ``seed`` with ``splits.val_fraction`` / ``splits.test_fraction``
(:meth:`builders.real.config.RealBuildConfig.heldout_split`); every build records the split it
used in ``build_plan.json`` under ``"heldout_split"`` (``builders.common.driver.save_build_files``).

The synthetic builder, given the same image folder or caption file, must generate from the real
build's train images only. With ``inputs.split_from`` (the real build's output folder or its
``build_plan.json``) it takes the split recorded there, so the two cannot differ; held-out values
also set by hand (``inputs.val_fraction``, ``inputs.test_fraction``, ``inputs.split_seed``) must
agree with it or the build is refused (:func:`resolve_split`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from builders.common.plan import hashed_split


@dataclass(frozen=True)
class HeldOutSplit:
    """Which images a build holds out (inputs that name their own split keep it)."""

    seed: int = 0
    val_fraction: float = 0.0
    test_fraction: float = 0.0

    def validate(self, where: str = "") -> None:
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{where}{name} must be in [0, 1), got {v}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"{where}val_fraction + {where}test_fraction must be < 1, got "
                             f"{self.val_fraction + self.test_fraction}")

    def split_of(self, key: str) -> str:
        """``train``, ``val`` or ``test`` for a key whose input names no split."""
        return hashed_split(key, seed=self.seed, val_fraction=self.val_fraction,
                            test_fraction=self.test_fraction)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict, *, source: str) -> HeldOutSplit:
        names = {f.name for f in fields(cls)}
        if not isinstance(saved, dict) or set(saved) != names:
            raise ValueError(f"{source}: held-out split {saved!r} is not {sorted(names)}")
        split = cls(seed=int(saved["seed"]), val_fraction=float(saved["val_fraction"]),
                    test_fraction=float(saved["test_fraction"]))
        split.validate(f"{source}: ")
        return split


def read_build_split(path: str | Path) -> HeldOutSplit:
    """The held-out split recorded by a build: ``path`` is its output folder or its build_plan.json."""
    from builders.common.driver import PLAN_NAME, SPLIT_KEY  # the driver writes the plan

    path = Path(path)
    plan = path if path.suffix == ".json" else path / PLAN_NAME
    try:
        saved = json.loads(plan.read_text())
    except FileNotFoundError:
        raise ValueError(f"inputs.split_from={str(path)!r}: no {plan.name} there (give the real build's "
                         f"output folder or its {PLAN_NAME})") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"inputs.split_from={str(path)!r}: cannot read {plan}: {e}") from None
    if not isinstance(saved, dict) or SPLIT_KEY not in saved:
        raise ValueError(f"inputs.split_from={str(path)!r}: {plan} records no held-out split (a build made "
                         "before builds recorded it): rebuild it, or set inputs.val_fraction, "
                         "inputs.test_fraction and inputs.split_seed to its values instead")
    return HeldOutSplit.from_dict(saved[SPLIT_KEY], source=str(plan))


def resolve_split(by_hand: HeldOutSplit, split_from: str) -> HeldOutSplit:
    """The split a synthetic build uses: the one recorded at ``split_from`` when given (held-out
    values set by hand must then be unset or equal to it), else ``by_hand``."""
    if not split_from:
        return by_hand
    recorded = read_build_split(split_from)
    if by_hand != HeldOutSplit() and by_hand != recorded:
        diff = ", ".join(f"{name} {getattr(by_hand, f)} != {getattr(recorded, f)}"
                         for f, name in (("seed", "inputs.split_seed"), ("val_fraction", "inputs.val_fraction"),
                                         ("test_fraction", "inputs.test_fraction"))
                         if getattr(by_hand, f) != getattr(recorded, f))
        raise ValueError(f"inputs.split_from={split_from!r} records another held-out split than the one set by "
                         f"hand ({diff}, here vs there): images held out by the real build would be generated "
                         "from; leave inputs.val_fraction, inputs.test_fraction and inputs.split_seed unset")
    return recorded
