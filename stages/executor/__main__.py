"""`python -m stages.executor`: the Ray executor (stages/executor/parallel.py)."""

import sys

from .parallel import main

sys.exit(main())
