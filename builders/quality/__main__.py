"""``python -m builders.quality --config configs/filter/default.yaml --input URLS [key=value ...]``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from builders.quality.config import QualityConfig
from builders.quality.run import REPORT_NAME, run
from wds_tools.config import parse_cli


def main(argv: Sequence[str] | None = None) -> int:
    """Score, select and report; prints where the report went."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_cli(QualityConfig, argv, prog="python -m builders.quality",
                        description="Score shards (CLIP, sanity, image quality) into quality sidecars, "
                                    "select globally, and write a report.",
                        flags={"--input": "input", "--output": "output"}, default_config=None)
        report = run(cfg)
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # FileExistsError: a held lock
        print(f"python -m builders.quality: error: {e}", file=sys.stderr)
        return 2
    thr = report["threshold"]
    print(f"{report['total']} samples: {report['kept']} kept, {report['dropped']} dropped; "
          f"threshold {'none' if thr is None else f'{thr:.4f}'}; {REPORT_NAME} and pictures in "
          f"{report['report_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
