"""reviewapp: the Django site and the review app.

The Celery app is imported here so that `shared_task` binds to it whenever Django starts.
"""

import os

# litellm downloads its model price map on import unless told otherwise; machines here have no internet.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from .celery import app as celery_app

__all__ = ["celery_app"]
