"""CLI commands that talk to Open Connectors: start bulk jobs with bulkhook as their callback."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from redis import Redis

from . import jobs, upload
from .config import Settings
from .connection import connect
from .openconnectors import ApiError, Client
from .upload import UploadFileError


def register(main: click.Group, settings_loader: Any, print_records: Callable[..., bool]) -> None:
    """Add the Open Connectors commands to the `bulkhook` group."""

    def api() -> tuple[Settings, Client]:
        settings: Settings = settings_loader(require_redis=False)
        return settings, Client.from_settings(settings)

    def starting(object_name: str, direction: str) -> tuple[Settings, Redis, str, str]:
        """Settings, Redis, token and callback URL for a job about to start."""
        settings: Settings = settings_loader(require_redis=True)
        token = jobs.new_token()
        return (
            settings,
            connect(settings),
            token,
            jobs.callback_url(settings.require_public_url(), token),
        )

    def started(
        conn: Redis,
        job: dict[str, Any],
        object_name: str,
        direction: str,
        callback: str,
        token: str,
        **extra: Any,
    ) -> None:
        job_id = str(job.get("id", ""))
        if not job_id:
            raise click.ClickException(f"the API answered without a job id: {job}")
        jobs.record_started(
            conn,
            job_id,
            object_name=object_name,
            direction=direction,
            callback=callback,
            token=token,
        )
        if extra:
            jobs.update(conn, job_id, **extra)
        click.echo(
            json.dumps(
                {
                    "id": job_id,
                    "status": job.get("status"),
                    "object": object_name,
                    "direction": direction,
                }
            )
        )

    @main.command()
    def objects() -> None:
        """List the objects the instance offers (GET /objects)."""
        _, client = api()
        for name in _call(client.objects):
            click.echo(name)

    @main.group()
    def bulk() -> None:
        """Start and inspect Open Connectors bulk jobs."""

    @bulk.command("upload")
    @click.argument("object_name", metavar="OBJECT")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option(
        "--format",
        "file_format",
        type=click.Choice(["csv", "json"]),
        help="What to send (default: csv for CSV/TSV input, json for JSON lines).",
    )
    @click.option("--identifier-field", help="Field that identifies a record (upserts).")
    @click.option("--action", type=click.Choice(["upsert", "update", "create"]))
    def upload_command(
        object_name: str,
        file: Path,
        file_format: str | None,
        identifier_field: str | None,
        action: str | None,
    ) -> None:
        """Upload FILE (CSV, TSV or JSON lines) into OBJECT, with bulkhook as the callback."""
        settings, client = api()
        _, conn, token, callback = starting(object_name, jobs.UPLOAD)
        file_format = file_format or upload.detect(file)
        try:
            with upload.prepared(file, file_format) as (prepared, count):
                click.echo(f"uploading {count} records from {file} as {file_format}", err=True)
                update, close = upload.progress_reporter(f"upload {file.name}")
                try:
                    job = _call(
                        client.upload,
                        object_name,
                        prepared,
                        file_format=file_format,
                        callback_url=callback,
                        identifier_field=identifier_field,
                        action=action,
                        progress=update,
                    )
                finally:
                    close()
        except (UploadFileError, UnicodeDecodeError, ValueError) as exc:
            raise click.ClickException(f"cannot read {file}: {exc}") from None
        started(conn, job, object_name, jobs.UPLOAD, callback, token, records_sent=count)

    @bulk.command("query")
    @click.argument("q")
    def query_command(q: str) -> None:
        """Start a download job from a CEQL query, e.g. "select * from contacts"."""
        settings, client = api()
        object_name = _object_of(q)
        _, conn, token, callback = starting(object_name, jobs.DOWNLOAD)
        job = _call(client.query, q, callback_url=callback)
        started(conn, job, object_name, jobs.DOWNLOAD, callback, token, format="csv")

    @bulk.command("download")
    @click.argument("object_name", metavar="OBJECT")
    @click.option("--where", help="CEQL where clause.")
    @click.option(
        "--format",
        "file_format",
        type=click.Choice(["csv", "json", "jsonl"]),
        default="json",
        show_default=True,
    )
    @click.option("--select", "select_fields", help="Comma-separated fields.")
    @click.option("--limit", type=click.IntRange(min=1))
    def download_command(
        object_name: str,
        where: str | None,
        file_format: str,
        select_fields: str | None,
        limit: int | None,
    ) -> None:
        """Start a v3 download job for OBJECT, with bulkhook as its notification URL."""
        settings, client = api()
        _, conn, token, callback = starting(object_name, jobs.DOWNLOAD)
        job = _call(
            client.download,
            object_name,
            file_format=file_format,
            where=where,
            select_fields=select_fields,
            limit=limit,
            notification_url=callback,
        )
        started(conn, job, object_name, jobs.DOWNLOAD, callback, token, format=file_format)

    @bulk.command("status")
    @click.argument("job_id", metavar="ID")
    def status_command(job_id: str) -> None:
        """Print a job's status as the API reports it."""
        _, client = api()
        click.echo(json.dumps(_call(client.status, job_id).raw, indent=2))

    @bulk.command("errors")
    @click.argument("job_id", metavar="ID")
    def errors_command(job_id: str) -> None:
        """Print a job's failed rows, one JSON value per line (every page)."""
        _, client = api()
        try:
            for row in client.errors(job_id):
                click.echo(json.dumps(row))
        except ApiError as exc:
            raise click.ClickException(str(exc)) from None

    @bulk.command("cancel")
    @click.argument("job_id", metavar="ID")
    def cancel_command(job_id: str) -> None:
        """Cancel a job (PUT /bulk/{id}/cancel)."""
        _, client = api()
        _call(client.cancel, job_id)
        click.echo(f"cancel requested for job {job_id}")

    @bulk.command("jobs")
    @click.option("--where", help="e.g. job_direction='UPLOAD'")
    def jobs_command(where: str | None) -> None:
        """List the account's bulk jobs as the API reports them."""
        _, client = api()
        for item in _call(client.jobs, where):
            click.echo(json.dumps(item))

    @main.group()
    def instance() -> None:
        """Configure Open Connectors instances."""

    @instance.command("configure")
    @click.argument("instance_id")
    def configure(instance_id: str) -> None:
        """Point INSTANCE_ID's notifications at bulkhook and give it bulkhook's signature key."""
        settings, client = api()
        url = f"{settings.require_public_url()}/callbacks/events"
        key = settings.signature_keys[0] if settings.signature_keys else None
        _call(client.configure_instance, instance_id, url, key)
        signed = "signed with BULKHOOK_SIGNATURE_KEY" if key else "unsigned (no key configured)"
        click.echo(f"instance {instance_id}: notifications go to {url}, {signed}")

    @main.command("jobs")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per job.")
    @click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
    def jobs_list(as_json: bool, limit: int) -> None:
        """List the jobs bulkhook started or heard of, newest first, with their state."""
        settings: Settings = settings_loader(require_redis=True)
        records = jobs.recent(connect(settings), limit)
        header = (
            f"{'JOB':<12} {'OBJECT':<14} {'DIRECTION':<9} {'STATUS':<22} {'STATE':<6} STARTED BY"
        )
        if not print_records(records, as_json, header, "no jobs yet"):
            return
        for r in records:
            click.echo(
                f"{r.get('id', ''):<12} {r.get('object', ''):<14} "
                f"{r.get('direction', ''):<9} {r.get('status', ''):<22} "
                f"{r.get('state', ''):<6} {r.get('started_by', '')}"
            )


def _call(function: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return function(*args, **kwargs)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None


def _object_of(q: str) -> str:
    words = q.split()
    lowered = [w.lower() for w in words]
    if "from" not in lowered or lowered.index("from") + 1 >= len(words):
        raise click.ClickException('the query needs "from <object>", e.g. select * from contacts')
    return words[lowered.index("from") + 1]
