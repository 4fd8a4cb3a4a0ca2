from django.contrib.auth.decorators import login_not_required
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from . import views

# The API authenticates each request itself (token or session) and answers 401/403 in JSON, so Django's
# LoginRequiredMiddleware must not redirect it to the login page.
_open = login_not_required

urlpatterns = [
    path("documents/", _open(views.DocumentListCreate.as_view()), name="api-documents"),
    path("documents/<int:pk>/", _open(views.DocumentDetail.as_view()), name="api-document"),
    path("documents/<int:pk>/retry/", _open(views.document_retry), name="api-document-retry"),
    path("documents/<int:pk>/fields/", _open(views.document_fields), name="api-document-fields"),
    path("fields/<int:pk>/accept/", _open(views.field_accept), name="api-field-accept"),
    path("fields/<int:pk>/correct/", _open(views.field_correct), name="api-field-correct"),
    path("fields/<int:pk>/reject/", _open(views.field_reject), name="api-field-reject"),
    path("document-types/", _open(views.DocumentTypeList.as_view()), name="api-document-types"),
    path("document-types/<slug:slug>/", _open(views.DocumentTypeDetail.as_view()), name="api-document-type"),
    path("schema/", _open(SpectacularAPIView.as_view()), name="api-schema"),
    path("docs/", _open(SpectacularSwaggerView.as_view(url_name="api-schema")), name="api-docs"),
    path("redoc/", _open(SpectacularRedocView.as_view(url_name="api-schema")), name="api-redoc"),
]
