"""The extraction pipeline.

Everything here except `extraction.tasks` is plain Python with no Django import (an import-linter contract
enforces it), so the core is testable without a database.
"""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
