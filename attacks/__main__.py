"""``python -m attacks --run-dir RUN --recipe deepwordbug --dataset ag_news --ensemble vote --out DIR``."""

import sys

from attacks.cli import main

sys.exit(main())
