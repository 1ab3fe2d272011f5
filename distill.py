"""Thin entry point: see diffusion_keras/cli/distill.py (also installed as diffusion-distill)."""

import sys

from diffusion_keras.cli.distill import main

if __name__ == "__main__":
    sys.exit(main())
