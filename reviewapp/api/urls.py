from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, JsonResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from . import evaluations, views

# The API authenticates each request itself (API key, token or session) and answers 401/403 in JSON, so
# Django's LoginRequiredMiddleware must not redirect it to the login page.
_open = login_not_required


@csrf_exempt  # as DRF's views: without it a POST with a cookie would get Django's HTML CSRF page
def not_found(request: HttpRequest) -> JsonResponse:
    """Answer any other /api/v1/ path (a malformed id included) in the API's JSON error shape."""
    return JsonResponse({"error": {"code": "not_found", "message": "Not found.", "details": {}}}, status=404)


urlpatterns = [
    path("documents/", _open(views.DocumentListCreate.as_view()), name="api-documents"),
    path("documents/batch/", _open(views.DocumentBatchCreate.as_view()), name="api-documents-batch"),
    path("documents/<int:pk>/", _open(views.DocumentDetail.as_view()), name="api-document"),
    path("documents/<int:pk>/retry/", _open(views.DocumentRetry.as_view()), name="api-document-retry"),
    path("documents/<int:pk>/fields/", _open(views.DocumentFields.as_view()), name="api-document-fields"),
    path("fields/<int:pk>/", _open(views.FieldDetail.as_view()), name="api-field"),
    path("fields/<int:pk>/accept/", _open(views.FieldAccept.as_view()), name="api-field-accept"),
    path("fields/<int:pk>/correct/", _open(views.FieldCorrect.as_view()), name="api-field-correct"),
    path("fields/<int:pk>/reject/", _open(views.FieldReject.as_view()), name="api-field-reject"),
    path("document-types/", _open(views.DocumentTypeList.as_view()), name="api-document-types"),
    path("document-types/<slug:slug>/", _open(views.DocumentTypeDetail.as_view()), name="api-document-type"),
    path("evaluations/", _open(evaluations.EvaluationCreate.as_view()), name="api-evaluations"),
    path("evaluations/<int:pk>/", _open(evaluations.EvaluationDetail.as_view()), name="api-evaluation"),
    path("document-types/<slug:slug>/gold/", _open(evaluations.GoldExport.as_view()), name="api-gold"),
    path("runs/", _open(views.RunList.as_view()), name="api-runs"),
    path("runs/<int:pk>/", _open(views.RunDetail.as_view()), name="api-run"),
    path("runs/<int:pk>/calls/", _open(views.RunCalls.as_view()), name="api-run-calls"),
    path("webhooks/", _open(views.WebhookList.as_view()), name="api-webhooks"),
    path("webhooks/<int:pk>/", _open(views.WebhookDetail.as_view()), name="api-webhook"),
    path(
        "webhooks/<int:pk>/deliveries/",
        _open(views.WebhookDeliveries.as_view()),
        name="api-webhook-deliveries",
    ),
    path(
        "webhook-deliveries/<int:pk>/replay/",
        _open(views.WebhookDeliveryReplay.as_view()),
        name="api-webhook-delivery-replay",
    ),
    path("api-keys/", _open(views.ApiKeyList.as_view()), name="api-keys"),
    path("api-keys/<int:pk>/revoke/", _open(views.ApiKeyRevoke.as_view()), name="api-key-revoke"),
    path("schema/", _open(SpectacularAPIView.as_view()), name="api-schema"),
    path("docs/", _open(SpectacularSwaggerView.as_view(url_name="api-schema")), name="api-docs"),
    path("redoc/", _open(SpectacularRedocView.as_view(url_name="api-schema")), name="api-redoc"),
    re_path(r"", _open(not_found), name="api-not-found"),  # last: only what nothing above matched
]
