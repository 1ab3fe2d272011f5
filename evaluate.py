"""Thin entry point: see diffusion_keras/cli/evaluate.py (also installed as diffusion-evaluate)."""

import sys

from diffusion_keras.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
