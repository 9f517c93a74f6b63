"""``agc servicex-endpoint``: run the local ServiceX-compatible endpoint in the foreground."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import click


@click.command("servicex-endpoint")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="TCP port on 127.0.0.1 ($AGC_SERVICEX_PORT or 5181 by default; 0 picks a free one).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Request state and outputs (default: <servicex dir>/endpoint-<port>).",
)
@click.option("--workers", type=click.IntRange(1), default=None, help="Worker processes (default: up to 4).")
@click.option(
    "--write-config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a servicex.yaml pointing at this endpoint to this path.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(1),
    default=None,
    help="Largest request body accepted (default 16 MiB); larger ones get HTTP 413.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; anything but loopback is refused unless --force-host.",
)
@click.option("--force-host", is_flag=True, help="Bind a non-loopback --host anyway (anyone reaching it may try).")
@click.option(
    "--exit-with-parent",
    type=int,
    default=None,
    hidden=True,
    help="Stop when the process with this id is no longer our parent (used by auto-start).",
)
def endpoint(
    port: int | None,
    state_dir: Path | None,
    workers: int | None,
    write_config: Path | None,
    max_body_bytes: int | None,
    host: str,
    force_host: bool,
    exit_with_parent: int | None,
) -> None:
    """Serve the local ServiceX endpoint (REST + S3 subset on 127.0.0.1) until interrupted.

    Several notebooks can share it: point their servicex.yaml at the printed URL (or run the
    stage without a servicex_config while this listens on the default port).
    """
    from utils.delivery.config import default_port, endpoint_state_dir, servicex_dir, write_local_config
    from utils.delivery.local import LocalEndpoint

    port = default_port() if port is None else port
    if state_dir is None:
        state_dir = endpoint_state_dir(port) if port else servicex_dir() / "endpoint-ephemeral"
    from utils.delivery.local.guard import DEFAULT_MAX_BODY_BYTES

    limit = max_body_bytes or DEFAULT_MAX_BODY_BYTES
    server = LocalEndpoint(
        state_dir, port=port, workers=workers, host=host, force_host=force_host, max_body_bytes=limit
    ).start()
    done = threading.Event()

    def _stop(*_: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if write_config is not None:
        cache = Path(write_config).resolve().parent / "servicex-cache"
        write_local_config(write_config, server.url, cache, server.token)
    click.echo(f"ServiceX endpoint at {server.url} (state in {server.state_dir}); Ctrl-C stops it.")
    click.echo(f"It binds loopback only and needs its bearer token (in {server.state_dir / 'endpoint.json'}).")
    if write_config is not None:
        click.echo(f"servicex.yaml for it: {write_config}")
    try:
        while not done.wait(1.0):
            if exit_with_parent is not None and os.getppid() != exit_with_parent:
                break
    finally:
        server.stop()
