"""Template tags of the evaluation features, for pages whose views do not know about them."""

from __future__ import annotations

from django import template
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from .. import evaluation

register = template.Library()


@register.simple_tag
def drift_banner() -> SafeString:
    """Render the drift alerts of every document type (cached a few minutes), or nothing."""
    alerts = evaluation.drift_alerts_all()
    if not alerts:
        return SafeString("")
    items = format_html_join("", "<li>{}</li>", ((a.message,) for a in alerts))
    return format_html(
        '<aside class="flash error drift-banner" role="alert" data-testid="drift-banner">'
        "<strong>Drift:</strong> a field's correction rate left its usual band.<ul>{}</ul></aside>",
        items,
    )
