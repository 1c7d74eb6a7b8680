"""Stage 2 entry point: streaming weighted mix -> LoRA fine-tune of an open_clip model.

``accelerate launch --config_file accelerate_config.yaml -m training.train --config configs/train/lora.yaml
[--real URLS] [--synthetic URLS] [--output DIR] [--max-steps N] [key=value ...]``
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from training.config import CLI_FLAGS, Stage2Config
from wds_tools.config import parse_cli, prog_name, run_main


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``remoteclip-train``): a user error is one line and exit status 2."""
    return run_main(_main, argv, prog=prog_name("training.train"))


def _main(argv: Sequence[str] | None) -> int:
    """Parse the config (file, flags, dotted overrides) and train."""
    cfg = parse_cli(Stage2Config, argv, prog=prog_name("training.train"), description=__doc__.splitlines()[0],
                    flags=CLI_FLAGS)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from training.trainer import train  # heavy imports after the config is known to be valid

    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
