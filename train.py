"""Thin entry point: see diffusion_keras/cli/train.py (also installed as diffusion-train)."""

import sys

from diffusion_keras.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
