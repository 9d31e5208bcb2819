#!/usr/bin/env python
"""Train a RanMASK base classifier. See ``python train.py --help``."""

import sys

from ranmask_jax.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
