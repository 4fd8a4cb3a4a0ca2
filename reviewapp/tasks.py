"""Celery task modules of the web app, imported here so that autodiscovery registers them."""

from . import webhooks  # noqa: F401
