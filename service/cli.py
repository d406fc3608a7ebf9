"""The `bulkhook` command: sign and send test callbacks, run the service, look inside."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import click
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import bulk_cli, deadletter, delivery, logs, runner, signature
from .config import Settings
from .connection import connect
from .exceptions import ConfigError

DATA_DIR = Path("var")
"""Where `bulkhook run` keeps the embedded Redis and a generated key, relative to the cwd."""


class _Group(click.Group):
    """Show configuration problems, and a Redis that cannot be reached or refuses, as one clear
    line, not a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # redis-py names the host and port, never the URL's password.
            raise click.ClickException(f"cannot reach Redis: {exc}") from None
        except RedisError as exc:
            raise click.ClickException(f"Redis refused: {exc}") from None


@click.group(cls=_Group)
@click.version_option(package_name="bulkhook")
def main() -> None:
    """Receive Open Connectors bulk-job callbacks and event notifications."""
    logs.configure()


@main.command()
@click.option("--key", help="Signature key (default: BULKHOOK_SIGNATURE_KEY or its _FILE).")
@click.argument("body", type=click.File("rb"), default="-")
def sign(key: str | None, body: BinaryIO) -> None:
    """Print the Elements-Webhook-Signature value for BODY (a file, or - for stdin)."""
    click.echo(signature.sign(_key(key), body.read()))


@main.command()
@click.argument("url")
@click.argument("body", type=click.File("rb"), default="-")
@click.option("--key", help="Signature key (default: BULKHOOK_SIGNATURE_KEY or its _FILE).")
@click.option(
    "--kind",
    type=click.Choice(["bulk", "events"]),
    default="bulk",
    show_default=True,
    help="Endpoint to use when URL is the service's base URL.",
)
@click.option("--unsigned", is_flag=True, help="Send without a signature header.")
@click.option("--webhook-id", help="Also send this Elements-Webhook-Id header.")
def send(
    url: str,
    body: BinaryIO,
    key: str | None,
    kind: str,
    unsigned: bool,
    webhook_id: str | None,
) -> None:
    """Sign BODY (a file, or - for stdin) and POST it to URL; print the answer."""
    import requests

    data = body.read()
    if "/callbacks/" not in urlsplit(url).path:
        url = url.rstrip("/") + f"/callbacks/{kind}"
    headers = {"Content-Type": "application/json"}
    if not unsigned:
        headers[signature.HEADER] = signature.sign(_key(key), data)
    if webhook_id:
        headers["Elements-Webhook-Id"] = webhook_id
    try:
        response = requests.post(url, data=data, headers=headers, timeout=30)
    except requests.RequestException as exc:
        raise click.ClickException(f"could not reach {url}: {exc}") from None
    click.echo(f"HTTP {response.status_code} {response.reason}")
    click.echo(response.text.rstrip())
    if not response.ok:
        sys.exit(1)


@main.command()
@click.option("--burst", is_flag=True, help="Stop when the queue is empty.")
@click.option("--name", help="Worker name (default: RQ's).")
def worker(burst: bool, name: str | None) -> None:
    """Run an RQ worker, with its scheduler, on bulkhook's queue."""
    from . import worker as worker_module

    worker_module.run(_settings(), burst=burst, name=name)
    # RQ has finished its warm shutdown: the task in hand is done and the scheduler stopped.
    # Leave now. Once (in CI, not reproduced since) a stopped worker hung in interpreter
    # shutdown after its last log line, with the upkeep thread still alive; a supervisor
    # would then wait out its stop timeout for nothing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per delivery.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
def inbox(as_json: bool, limit: int) -> None:
    """List the most recent deliveries, newest first."""
    records = delivery.recent(connect(_settings()), limit)
    header = (
        f"{'RECEIVED (UTC)':<26} {'DELIVERY':<32} {'KIND':<6} {'JOB/EVENT':<20} "
        f"{'STATUS':<12} {'STATE':<10} OUTCOME"
    )
    if not print_records(records, as_json, header, "no deliveries yet"):
        return
    for r in records:
        subject = r.get("job_id") or r.get("event_id") or "-"
        note = r.get("last_error") if r.get("state") == delivery.FAILED else r.get("outcome")
        click.echo(
            f"{r.get('received_at', '')[:26]:<26} {r.get('id', ''):<32} {r.get('kind', ''):<6} "
            f"{subject[:20]:<20} {r.get('status', '-'):<12} {r.get('state', ''):<10} {note or ''}"
        )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=int,
    default=lambda: int(os.environ.get("PORT", "8000")),
    show_default="$PORT or 8000",
)
@click.option(
    "--generate-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With no key configured, create (once) and use a random key in this file.",
)
@click.option(
    "--gunicorn-config",
    type=click.Path(dir_okay=False, path_type=Path),
    default="deploy/gunicorn.conf.py",
    show_default=True,
)
def run(host: str, port: int, generate_key: Path | None, gunicorn_config: Path) -> None:
    """Run the web server and one worker; start an embedded Redis when REDIS_URL is unset."""
    DATA_DIR.mkdir(exist_ok=True)
    config = gunicorn_config if gunicorn_config.exists() else None
    sys.exit(
        runner.run(
            host=host,
            port=port,
            data_dir=DATA_DIR,
            generate_key=generate_key,
            gunicorn_config=config,
            echo=click.echo,
        )
    )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=9200, show_default=True)
@click.option(
    "--step-seconds",
    type=float,
    default=0.5,
    show_default=True,
    help="Time a job spends in CREATED and in RUNNING.",
)
@click.option("--callback-delay", type=float, default=0.0, help="Seconds before a callback.")
@click.option("--drop-callbacks", type=int, default=0, help="Drop the next N callbacks.")
@click.option("--duplicate-callbacks", is_flag=True, help="Send every callback twice.")
@click.option("--out-of-order", is_flag=True, help="Follow each final callback by a stale one.")
@click.option("--wrong-key", is_flag=True, help="Sign callbacks with a wrong key.")
@click.option("--fail-status", type=int, default=0, help="Answer 500 to the next N status calls.")
@click.option("--fail-jobs", is_flag=True, help="Jobs end in ERROR.")
@click.option(
    "--synthetic-records",
    type=int,
    default=0,
    help="Download jobs return this many generated records.",
)
def simulator(host: str, port: int, **switches: object) -> None:
    """Serve a simulator of the Open Connectors Bulk API under /elements/api-v2."""
    from werkzeug.serving import make_server

    from .simulator import BASE_PATH, Switches, create_simulator

    app = create_simulator(switches=Switches(**switches))  # type: ignore[arg-type]
    server = make_server(host, port, app, threaded=True)
    click.echo(f"Open Connectors simulator at http://{host}:{port}{BASE_PATH}")
    click.echo(f"  BULKHOOK_OPENCONNECTORS_URL=http://{host}:{port}{BASE_PATH}")
    runner.serve_until_signal(server.serve_forever, server.shutdown)


@main.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default="var/demo",
    show_default=True,
    help="Emptied, then holds logs and outcome.",
)
@click.option(
    "--contacts",
    type=click.Path(dir_okay=False, path_type=Path),
    default="examples/contacts.tsv",
    show_default=True,
)
def demo(workdir: Path, contacts: Path) -> None:
    """Watch the whole loop offline: simulator, upload, callback, pipeline, archive."""
    from . import demo as demo_module

    sys.exit(demo_module.run(workdir, contacts, click.echo))


@main.group()
def failed() -> None:
    """The dead-letter area: tasks whose retries are used up (RQ's failed registry)."""


@failed.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per task.")
def failed_list(as_json: bool) -> None:
    """List dead-lettered tasks, oldest failure first."""
    found = deadletter.entries(connect(_settings()))
    header = f"{'TASK ID':<34} {'FAILED AT (UTC)':<26} ERROR"
    if not print_records(found, as_json, header, "no failed tasks"):
        return
    for entry in found:
        click.echo(f"{entry['id']:<34} {(entry['failed_at'] or '')[:26]:<26} {entry['error']}")


@failed.command("show")
@click.argument("task_id")
def failed_show(task_id: str) -> None:
    """Show one dead-lettered task: its traceback and its delivery's record."""
    found = deadletter.show(connect(_settings()), task_id)
    if found is None:
        raise click.ClickException(f"no failed task {task_id}")
    traceback = found.pop("traceback") or ""
    click.echo(json.dumps(found, indent=2, sort_keys=True))
    click.echo(traceback.rstrip())


@failed.command("requeue")
@click.argument("task_id", required=False)
@click.option("--all", "everything", is_flag=True, help="Requeue every failed task.")
def failed_requeue(task_id: str | None, everything: bool) -> None:
    """Put a dead-lettered task (or --all of them) back on the queue."""
    conn = connect(_settings())
    if everything == bool(task_id):
        raise click.UsageError("give a TASK_ID or --all")
    if everything:
        click.echo(f"requeued {deadletter.requeue_all(conn)} task(s)")
    elif deadletter.requeue(conn, str(task_id)):
        click.echo(f"requeued {task_id}")
    else:
        raise click.ClickException(f"no failed task {task_id}")


@failed.command("purge")
@click.option("--older-than", required=True, help="Age such as 30m, 12h, 7d.")
def failed_purge(older_than: str) -> None:
    """Delete dead-lettered tasks, and their deliveries, that failed longer ago than this."""
    try:
        age = deadletter.parse_age(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    click.echo(f"purged {deadletter.purge(connect(_settings()), age)} task(s)")


def print_records(records: list[dict[str, str]], as_json: bool, header: str, empty: str) -> bool:
    """Print records as JSON lines, or the table's header; True when rows are still to print."""
    if as_json:
        for record in records:
            click.echo(json.dumps(record, sort_keys=True))
        return False
    click.echo(header if records else empty)
    return bool(records)


def _settings(require_redis: bool = True) -> Settings:
    """Settings from the environment; REDIS_URL falls back to a running `bulkhook run`."""
    env = dict(os.environ)
    url_file = DATA_DIR / runner.REDIS_URL_FILE
    if not env.get("REDIS_URL", "").strip() and url_file.exists():
        env["REDIS_URL"] = url_file.read_text().strip()
    settings = Settings.from_env(env)
    if require_redis:
        settings.require_redis()
    return settings


bulk_cli.register(main, _settings, print_records)


def _key(option: str | None) -> str:
    if option:
        return option
    keys = Settings.from_env().signature_keys
    if not keys:
        raise click.ClickException(
            "no key: pass --key, or set BULKHOOK_SIGNATURE_KEY or BULKHOOK_SIGNATURE_KEY_FILE"
        )
    return keys[0]
