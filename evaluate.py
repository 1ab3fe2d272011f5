"""Thin entry point: see diffusion_keras/cli/evaluate.py (also installed as diffusion-evaluate)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from diffusion_keras.cli.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
