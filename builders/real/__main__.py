"""Stage 1 real-set builder.

    python -m builders.real --config configs/build/real.yaml --input DIR_OR_CAPTION_FILE \\
        --output DIR [--overwrite] [key=value ...]

See builders.real.build for the output layout and builders.real.recipe for what each sample holds.
"""
from __future__ import annotations

import logging
import sys

from wds_tools.config import parse_cli

from builders.real.build import build_real, format_summary
from builders.real.config import RealBuildConfig

FLAGS = {"--input": "input", "--output": "output", "--image-root": "image_root",
         "--executor": "executor", "--workers": "workers", "--vlm-model": "vlm.model",
         "--overwrite": "overwrite", "--verify": "verify", "--break-lock": "break_lock"}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(RealBuildConfig, argv, prog="python -m builders.real",
                    description="Build train/val/test WebDataset shards from real aerial images. "
                                "Finished shards are kept on rerun; --overwrite rebuilds them.",
                    flags=FLAGS, default_config=None)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = build_real(cfg)
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # bad input or a held lock
        print(f"python -m builders.real: error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary, cfg.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
