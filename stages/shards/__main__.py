"""`python -m stages.shards`: a setting run a few images at a time (stages/shards/__init__.py)."""

import sys

from . import main

try:
    main()
except (ValueError, FileNotFoundError) as err:  # a refusal: one line that says what to fix, no traceback
    print(f"ERROR: stages.shards: {err}", file=sys.stderr)
    sys.exit(1)
