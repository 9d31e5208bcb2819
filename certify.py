#!/usr/bin/env python
"""Certify a trained RanMASK run. See ``python certify.py --help``."""

import sys

from ranmask_jax.cli import certify_main

if __name__ == "__main__":
    sys.exit(certify_main())
