"""Stage 1 real-set builder.

    python -m builders.real --config configs/build/real.yaml --input DIR_OR_CAPTION_FILE \\
        --output DIR [--overwrite] [key=value ...]

See builders.real.build for the output layout and builders.real.recipe for what each sample holds.
"""
from __future__ import annotations

import logging
import sys

from builders.real.build import build_real, format_summary
from builders.real.config import RealBuildConfig
from wds_tools.config import parse_cli, prog_name, run_main, writing_under

FLAGS = {"--input": "input", "--output": "output", "--image-root": "image_root",
         "--executor": "executor", "--workers": "workers", "--vlm-model": "vlm.model",
         "--overwrite": "overwrite", "--verify": "verify", "--break-lock": "break_lock"}


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``remoteclip-build-real``): a user error is one line and exit status 2."""
    return run_main(_main, argv, prog=prog_name("builders.real"))


def _main(argv: list[str] | None) -> int:
    cfg = parse_cli(RealBuildConfig, argv, prog=prog_name("builders.real"),
                    description="Build train/val/test WebDataset shards from real aerial images. "
                                "Finished shards are kept on rerun; --overwrite rebuilds them.",
                    flags=FLAGS, default_config=None)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with writing_under(cfg.output):  # a full disk's write() names no file
        summary = build_real(cfg)  # bad input, a held lock, a read-only output: one line via run_main
    print(format_summary(summary, cfg.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
