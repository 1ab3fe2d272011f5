"""Thin entry point: see diffusion_keras/cli/bench.py."""

import sys

from diffusion_keras.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
