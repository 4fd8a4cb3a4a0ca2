"""REST API v1: input serializer -> service -> output serializer. Other workspaces' objects are 404."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.decorators import api_view
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from .. import selectors, services
from ..errors import NotFound, ReviewAppError
from ..models import Document, DocumentType, Workspace
from .serializers import DecisionIn, DocumentIn, DocumentListOut, DocumentOut, DocumentTypeOut, FieldOut


def _workspace(request: Request, slug: str | None) -> Workspace:
    allowed = selectors.workspaces_for(request.user)
    if slug:
        ws = allowed.filter(slug=slug).first()
        if ws is None:
            raise NotFound(f"No workspace {slug!r}.")
        return ws
    if allowed.count() != 1:
        raise ReviewAppError(
            "You belong to several workspaces: name one with `workspace`.", code="workspace_required"
        )
    return allowed.get()


class DocumentListCreate(generics.ListCreateAPIView):
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    def get_serializer_class(self):
        return DocumentIn if self.request.method == "POST" else DocumentListOut

    def get_queryset(self) -> QuerySet[Document]:
        qs = selectors.documents_for(self.request.user)
        p = self.request.query_params
        if p.get("status"):
            qs = qs.filter(status=p["status"])
        if p.get("document_type"):
            qs = qs.filter(document_type__slug=p["document_type"])
        if p.get("needs_review") in ("1", "true"):
            qs = qs.filter(status=Document.Status.NEEDS_REVIEW)
        return qs

    @extend_schema(request=DocumentIn, responses={201: DocumentOut})
    def post(self, request: Request, *args: object, **kwargs: object) -> Response:
        data = DocumentIn(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        try:
            doc_type = DocumentType.objects.get(slug=v["document_type"])
        except DocumentType.DoesNotExist:
            raise NotFound(f"No document type {v['document_type']!r}.") from None
        upload = v.get("file")
        created = services.document_create(
            workspace=_workspace(request, v.get("workspace")),
            document_type=doc_type,
            user=request.user,
            data=upload.read() if upload else v["text"].encode("utf-8"),
            filename=upload.name if upload else v.get("filename") or "text.txt",
            content_type=upload.content_type if upload else "text/plain",
        )
        body = DocumentOut(created.document).data
        body["duplicate_of"] = created.duplicate_of.pk if created.duplicate_of else None
        return Response(body, status=status.HTTP_201_CREATED)


class DocumentDetail(generics.RetrieveAPIView):
    serializer_class = DocumentOut

    def get_queryset(self) -> QuerySet[Document]:
        return selectors.documents_for(self.request.user)


@extend_schema(request=None, responses={200: DocumentOut})
@api_view(["POST"])
def document_retry(request: Request, pk: int) -> Response:
    doc = services.document_retry(document=selectors.document_for(request.user, pk))
    return Response(DocumentOut(doc).data)


@extend_schema(responses={200: FieldOut(many=True)})
@api_view(["GET"])
def document_fields(request: Request, pk: int) -> Response:
    doc = selectors.document_for(request.user, pk)
    return Response(FieldOut(selectors.document_fields(doc), many=True).data)


def _decide(action: str):
    @extend_schema(request=DecisionIn, responses={200: FieldOut}, operation_id=f"fields_{action}")
    @api_view(["POST"])
    def view(request: Request, pk: int) -> Response:
        data = DecisionIn(data=request.data)
        data.is_valid(raise_exception=True)
        fv = services.field_decide(
            user=request.user,
            field_id=pk,
            action=action,
            version=data.validated_data.get("version"),
            value=data.validated_data.get("value"),
        )
        return Response(FieldOut(fv).data)

    return view


field_accept, field_correct, field_reject = _decide("accept"), _decide("correct"), _decide("reject")


class DocumentTypeList(generics.ListAPIView):
    serializer_class = DocumentTypeOut
    queryset = DocumentType.objects.prefetch_related("fields").order_by("slug")
    pagination_class = None


class DocumentTypeDetail(generics.RetrieveAPIView):
    serializer_class = DocumentTypeOut
    queryset = DocumentType.objects.prefetch_related("fields")
    lookup_field = "slug"
