"""Forms: input parsing only; the service decides."""

from __future__ import annotations

from typing import Any

from django import forms

from .models import DocumentType, Workspace
from .selectors import workspaces_for


class UploadForm(forms.Form):
    workspace = forms.ModelChoiceField(queryset=Workspace.objects.none())
    document_type = forms.ModelChoiceField(
        queryset=DocumentType.objects.order_by("name"), to_field_name="slug"
    )
    file = forms.FileField(required=False, help_text=".txt, .md, .html, .pdf or .eml")
    text = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 6}), label="…or paste text")

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["workspace"].queryset = workspaces_for(user)
        first = self.fields["workspace"].queryset.first()
        if first is not None:
            self.fields["workspace"].initial = first.pk

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if not data.get("file") and not (data.get("text") or "").strip():
            raise forms.ValidationError("Choose a file or paste some text.")
        return data

    def upload_kwargs(self) -> dict[str, Any]:
        data = self.cleaned_data
        upload = data.get("file")
        if upload:
            return {
                "workspace": data["workspace"],
                "document_type": data["document_type"],
                "data": upload.read(),
                "filename": upload.name,
                "content_type": upload.content_type,
            }
        return {
            "workspace": data["workspace"],
            "document_type": data["document_type"],
            "data": data["text"].encode("utf-8"),
            "filename": "pasted.txt",
            "content_type": "text/plain",
        }
