"""Create a workspace API key and print it once (only its hash is stored); or revoke one by prefix."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from ...api.keys import api_key_create, api_key_revoke
from ...errors import ReviewAppError
from ...models import ApiKey, Workspace


class Command(BaseCommand):
    help = (
        "Create an API key: --workspace SLUG --name NAME --scopes read,write,review --user ADMIN. "
        "The key is printed once. Review decisions made with it are recorded as ADMIN's. "
        "--revoke PREFIX revokes a key instead."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--workspace", help="workspace slug")
        parser.add_argument("--name", help="what the key is for, e.g. 'ERP sync'")
        parser.add_argument("--scopes", default="read", help="comma-separated: read, write, review")
        parser.add_argument("--user", help="username of the workspace admin who owns the key")
        parser.add_argument("--revoke", metavar="PREFIX", help="revoke the key with this prefix")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["revoke"]:
            key = ApiKey.objects.filter(prefix=options["revoke"]).first()
            if key is None:
                raise CommandError(f"no key with prefix {options['revoke']!r}")
            key = api_key_revoke(api_key=key)
            self.stdout.write(f"revoked {key.prefix} ({key.name}) at {key.revoked_at.isoformat()}")
            return
        missing = [o for o in ("workspace", "name", "user") if not options[o]]
        if missing:
            raise CommandError("missing: " + ", ".join("--" + m for m in missing))
        workspace = Workspace.objects.filter(slug=options["workspace"]).first()
        if workspace is None:
            raise CommandError(f"no workspace {options['workspace']!r}")
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"no user {options['user']!r}")
        scopes = [s.strip() for s in options["scopes"].split(",") if s.strip()]
        try:
            created = api_key_create(
                workspace=workspace, name=options["name"], scopes=scopes, created_by=user
            )
        except ReviewAppError as exc:
            raise CommandError(exc.message) from exc
        # The key alone on stdout, so that scripts can capture it; the rest on stderr.
        self.stderr.write(
            f"API key {created.api_key.prefix} for {workspace.slug} ({', '.join(created.api_key.scopes)}); "
            "store it now, it is not shown again:"
        )
        self.stdout.write(created.raw_key)
