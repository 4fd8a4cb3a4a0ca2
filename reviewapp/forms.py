"""Forms: input parsing only; the service decides."""

from __future__ import annotations

from typing import Any

from django import forms

from .models import DocumentType, Workspace
from .selectors import workspaces_for


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Several files in one field (Django's documented pattern): cleans to a list, empty when none."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> list[Any]:
        files = data if isinstance(data, list | tuple) else [data]
        return [f for f in (super(MultipleFileField, self).clean(d, initial) for d in files if d) if f]


class UploadForm(forms.Form):
    workspace = forms.ModelChoiceField(queryset=Workspace.objects.none())
    document_type = forms.ModelChoiceField(
        queryset=DocumentType.objects.order_by("name"), to_field_name="slug"
    )
    file = MultipleFileField(
        required=False, help_text=".txt, .md, .html, .pdf or .eml; several at once are queued together"
    )
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

    def upload_files(self) -> list[tuple[bytes, str, str | None]]:
        """(data, filename, content type) of each file, or of the pasted text (services.documents_create)."""
        data = self.cleaned_data
        if data.get("file"):
            return [(f.read(), f.name, f.content_type) for f in data["file"]]
        return [(data["text"].encode("utf-8"), "pasted.txt", "text/plain")]
