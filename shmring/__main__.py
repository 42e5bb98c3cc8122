"""``python -m shmring``: the shmring command."""

import sys

from .cli import main

sys.exit(main())
