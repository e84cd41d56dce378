"""``python -m tstrain`` (also what ``torchrun -m tstrain`` runs)."""

import sys

from .cli import main

sys.exit(main())
