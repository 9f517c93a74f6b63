"""``agc datasets``: size, files and events of a dataset and subset; ``agc serve-data``: share a
data folder over root:// and HTTP with a real xrootd server."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click


@click.command("datasets")
@click.argument("dataset", default="embedded:tiny")
@click.option("--n-files-max-per-sample", type=int, default=-1, show_default=True, help="Files per sample (-1: all).")
@click.option(
    "--max-events-per-sample", type=int, default=-1, show_default=True, help="Whole files up to this many events."
)
@click.option("--input-urls", default="as-listed", show_default=True, help="URL rules (datasets/url_rules.yml).")
def datasets(dataset: str, n_files_max_per_sample: int, max_events_per_sample: int, input_urls: str) -> None:
    """Print files, events and size per sample of DATASET (embedded:<preset>, cms-open-data-2015
    or a dataset JSON) and the subset the options select. Reads the description only: the size
    of remote files is shown as '-'."""
    from utils.datasets.fileset import build_fileset
    from utils.datasets.resolve import resolve_dataset
    from utils.datasets.urls import is_remote, load_url_rules, rewrite_fileset

    path = resolve_dataset(dataset)
    fileset = build_fileset(path, n_files_max_per_sample, max_events_per_sample=max_events_per_sample)
    fileset = rewrite_fileset(fileset, load_url_rules(input_urls))
    click.echo(f"{path}  (N_FILES_MAX_PER_SAMPLE={n_files_max_per_sample}, "
               f"MAX_EVENTS_PER_SAMPLE={max_events_per_sample}, INPUT_URLS={input_urls})")  # fmt: skip
    click.echo(f"{'sample':<32} {'files':>6} {'events':>12} {'size [MB]':>10}")
    total_files = total_events = 0
    total_bytes: int | None = 0
    for sample, entry in fileset.items():
        files = list(entry["files"])
        remote = any(is_remote(p) for p in files)
        size = None if remote else sum(Path(p).stat().st_size for p in files if Path(p).is_file())
        total_files += len(files)
        total_events += entry["metadata"]["nevts"]
        total_bytes = None if size is None or total_bytes is None else total_bytes + size
        shown = "-" if size is None else f"{size / 1e6:.1f}"
        click.echo(f"{sample:<32} {len(files):>6} {entry['metadata']['nevts']:>12,d} {shown:>10}")
    shown = "-" if total_bytes is None else f"{total_bytes / 1e6:.1f}"
    click.echo(f"{'total':<32} {total_files:>6} {total_events:>12,d} {shown:>10}")


@click.command("serve-data")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="root:// port (0: a free one).")
@click.option("--http-port", type=click.IntRange(-1, 65535), default=0, help="HTTP port (0: a free one; -1: none).")
@click.option(
    "--allow-host",
    default="localhost",
    show_default=True,
    help="Hosts allowed to connect (xrd.allow); another container on this machine: its host name.",
)
@click.option(
    "--tls", is_flag=True, help="Also https:// on the HTTP port, with a certificate made for it (its CA printed)."
)
def serve_data(folder: Path, port: int, http_port: int, allow_host: str, tls: bool) -> None:
    """Serve FOLDER read-only with xrootd over root:// and HTTP(S) until interrupted.

    For the embedded dataset: `agc serve-data data/embedded/tiny`, then in the notebook
    INPUT_URLS = "<absolute folder>/=>root://127.0.0.1:PORT//" (the command prints it).
    """
    from utils.delivery.xrootd import XRootDServer

    server = XRootDServer(folder, port=port, http_port=http_port, allow_host=allow_host, tls=tls).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    click.echo(f"serving {server.root} at {server.root_url}" + (f" and {server.http_url}" if http_port >= 0 else ""))
    if tls:
        click.echo(f"and {server.https_url}: clients trust its CA with AGC_CA_FILE={server.ca_file}")
    click.echo(f'notebook: INPUT_URLS = "{server.root}/=>{server.root_url}"; Ctrl-C stops the server.')
    try:
        while not done.wait(1.0):
            if server.process is None or server.process.poll() is not None:
                raise click.ClickException("xrootd exited")
    finally:
        server.stop()
