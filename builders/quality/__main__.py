"""``python -m builders.quality --config configs/filter/default.yaml --input URLS [key=value ...]``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from builders.quality.config import QualityConfig
from builders.quality.run import REPORT_NAME, run
from wds_tools.config import parse_cli, prog_name, run_main


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``remoteclip-quality``): a user error is one line and exit status 2."""
    return run_main(_main, argv, prog=prog_name("builders.quality"))


def _main(argv: Sequence[str] | None) -> int:
    """Score, select and report; prints where the report went."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_cli(QualityConfig, argv, prog=prog_name("builders.quality"),
                    description="Score shards (CLIP, sanity, image quality) into quality sidecars, "
                                "select globally, and write a report.",
                    flags={"--input": "input", "--output": "output"}, default_config=None)
    report = run(cfg)
    thr = report["threshold"]
    print(f"{report['total']} samples: {report['kept']} kept, {report['dropped']} dropped; "
          f"threshold {'none' if thr is None else f'{thr:.4f}'}; {REPORT_NAME} and pictures in "
          f"{report['report_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
