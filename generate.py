"""Thin entry point: see diffusion_keras/cli/generate.py (also installed as diffusion-generate)."""

import sys

from diffusion_keras.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
