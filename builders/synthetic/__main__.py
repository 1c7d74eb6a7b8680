"""Stage 1 synthetic-set builder.

    python -m builders.synthetic --config configs/build/synthetic.yaml \\
        --input REAL_TRAIN_SHARDS_OR_IMAGES --output DIR [--overwrite] [--break-lock] [key=value ...]

See builders.synthetic.build for the output layout and builders.synthetic.modes for the
generation modes and how each caption stays true.
"""
from __future__ import annotations

import logging
import sys

from builders.synthetic.build import build_synthetic, format_summary
from builders.synthetic.config import SyntheticBuildConfig
from wds_tools.config import parse_cli, prog_name, run_main, writing_under

FLAGS = {"--input": "input", "--output": "output", "--executor": "executor",
         "--workers": "workers", "--stages": "stages", "--overwrite": "overwrite",
         "--break-lock": "break_lock"}


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``remoteclip-build-synthetic``): a user error (a held-out split, a bad
    value, a held lock) is one line and exit status 2."""
    return run_main(_main, argv, prog=prog_name("builders.synthetic"))


def _main(argv: list[str] | None) -> int:
    cfg = parse_cli(SyntheticBuildConfig, argv, prog=prog_name("builders.synthetic"),
                    description="Build synthetic train shards from the real set's train shards "
                                "(or images) with five model stages. Finished shards are kept on "
                                "rerun; --overwrite rebuilds them; stages=[generate] reruns "
                                "generation only.",
                    flags=FLAGS, default_config=None)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with writing_under(cfg.output, cfg.work_dir):  # a full disk's write() names no file
        summary = build_synthetic(cfg)
    print(format_summary(summary, cfg.output))
    return 1 if summary.get("failed_units") else 0


if __name__ == "__main__":
    sys.exit(main())
