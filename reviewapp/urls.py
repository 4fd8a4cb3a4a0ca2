from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.queue, name="queue"),
    path("fields/<int:field_id>/decide/", views.decide, name="decide"),
    path("fields/<int:field_id>/release/", views.release, name="release"),
    path("queue/counts/", views.queue_counts, name="queue_counts"),
    path("documents/<int:pk>/bulk-accept/", views.bulk_accept, name="bulk_accept"),
    path("documents/", views.documents, name="documents"),
    path("documents/<int:pk>/", views.document, name="document"),
    path("documents/<int:pk>/retry/", views.document_retry, name="document_retry"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("reviewapp.api.urls")),
]
