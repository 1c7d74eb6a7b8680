"""Stage 2 entry point: streaming weighted mix -> LoRA fine-tune of an open_clip model.

--max-steps N > 0 sets the number of optimizer steps; 0 (the default) means unset: train.num_epochs
epochs, sized from the dataset.json beside the shards (or train.samples_per_epoch).

``accelerate launch --config_file accelerate_config.yaml -m training.train --config configs/train/lora.yaml
[--real URLS] [--synthetic URLS] [--output DIR] [--max-steps N] [key=value ...]``

Exit status: 0 done, 2 a user error (one line), 75 stopped by SIGTERM/SIGUSR1 after writing a
checkpoint (rerun the same command to resume).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from training.config import CLI_FLAGS, Stage2Config
from wds_tools.config import parse_cli, prog_name, run_main
from wds_tools.urls import local_output


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``remoteclip-train``): a user error is one line and exit status 2."""
    return run_main(_main, argv, prog=prog_name("training.train"))


def _main(argv: Sequence[str] | None) -> int:
    """Parse the config (file, flags, dotted overrides) and train."""
    # the first two paragraphs: what it does and what --max-steps 0 means
    description = " ".join(__doc__.split("\n\n")[:2])
    cfg = parse_cli(Stage2Config, argv, prog=prog_name("training.train"), description=description, flags=CLI_FLAGS)
    local_output(cfg.train.output, "train.output")  # never a local folder named "s3:"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from training.preempt import PREEMPTED_EXIT_CODE, Preempted
    from training.trainer import train  # heavy imports after the config is known to be valid

    try:
        train(cfg)
    except Preempted as e:
        logging.getLogger("training.train").warning("%s", e)
        return PREEMPTED_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
