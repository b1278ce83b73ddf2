"""Upload links: a one-time URL that a model file is ``PUT`` to, for files an agent cannot carry itself.

The REST route that receives the file is ``rest_compat.upload_links``; it ends in ``store_model`` like
every other way in.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from aiserve_mcp.core.errors import QuotaExceeded, ValidationFailed
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.runtime.formats import format_by_id
from aiserve_mcp.tools.models import check_replicas
from aiserve_mcp.tools.ports import ServingPort
from aiserve_mcp.tools.registry import Annotations, ToolContext, tool
from aiserve_mcp.tools.uploads import UploadFields

UPLOAD_LINK_PATH = "/api/v1/models/uploads/{token}"
FILE_PLACEHOLDER = "MODEL_FILE"


class UploadLinkInput(UploadFields):
    """The upload settings the model is stored with, and the file's size."""

    size_bytes: int = Field(
        ge=1,
        description="The file's exact size in bytes (at most AISERVE_MODEL_MAX_FILE_BYTES, see get_quota): "
        "the link refuses a body of any other size.",
    )
    expires_in_s: int = Field(default=900, ge=60, le=3600, description="How long the link works, in seconds.")


class UploadLinkOutput(BaseModel):
    link_id: str
    upload_url: str = Field(
        description="Where to send the file's bytes, once, as the body of a PUT. The URL is the credential "
        "(no Authorization header): keep it private."
    )
    method: Literal["PUT"] = "PUT"
    size_bytes: int = Field(description="The body must be exactly this many bytes.")
    expires_at: datetime
    curl: str = Field(
        description=f"The command that sends the file: replace {FILE_PLACEHOLDER} with its path."
    )


def public_base_url(settings: Settings) -> str:
    """This server's address as a link's user reaches it: ``AISERVE_PUBLIC_URL``, else the address it
    listens on."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}"


def _single_quoted(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@tool(
    scope="models:write",
    annotations=Annotations("Create a model upload link", read_only=False, idempotent=False),
)
async def create_model_upload(ctx: ToolContext[ServingPort], args: UploadLinkInput) -> UploadLinkOutput:
    """A one-time URL that takes a model file by a plain HTTP PUT, and the curl command that sends it. Use
    it when the file is large or lies on your user's machine (or on any machine with a shell): an MCP call
    cannot carry a file's bytes. For a file at a public URL, or one small enough to send inline, use
    upload_model with url or content_base64 instead.

    Give the file's exact size (size_bytes) and the upload settings (name, format, version, replicas, ...).
    The link needs no Authorization header, works until expires_at (expires_in_s: 60 to 3600 s, default
    900) and refuses a body of any other size. Its first PUT spends it, even when that upload then fails:
    create a new link to try again. The PUT answers 201 with the model_id; the model is then yours as if
    you had uploaded it (same quota, upload rate, format detection and loading), listed by list_models.
    Set format for files recognised by their name only (TensorRT engines): the link carries no file name."""
    caller = ctx.caller()
    settings = ctx.services.settings
    check_replicas(ctx, args.replicas)
    if args.format is not None:
        format_by_id(args.format)
    if args.size_bytes > settings.model_max_file_bytes:
        raise ValidationFailed(
            f"size_bytes must be at most {settings.model_max_file_bytes} on this server "
            "(AISERVE_MODEL_MAX_FILE_BYTES)",
            {"field": "size_bytes"},
        )
    quota = await ctx.services.model_store.admit(caller.user_id)
    room = quota.limit_bytes - quota.used_bytes
    if args.size_bytes > room:
        raise QuotaExceeded(f"a file of {args.size_bytes} bytes does not fit in your remaining storage quota")
    fields = args.model_dump(mode="json", include=set(UploadFields.model_fields))
    link, secret = await ctx.services.upload_links.create(
        caller.user_id, fields, args.size_bytes, timedelta(seconds=args.expires_in_s)
    )
    url = public_base_url(settings) + UPLOAD_LINK_PATH.format(token=secret)
    curl = (
        f"curl -X PUT --data-binary @{FILE_PLACEHOLDER} -H 'Content-Type: application/octet-stream' "
        f"{_single_quoted(url)}"
    )
    return UploadLinkOutput(
        link_id=link.id, upload_url=url, size_bytes=link.size_bytes, expires_at=link.expires_at, curl=curl
    )
