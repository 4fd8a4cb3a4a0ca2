"""Celery task modules of the web app, imported here so that autodiscovery registers them."""

from . import evaluation, webhooks  # noqa: F401
