"""Remote-read benchmark: the same files read locally, over root://, HTTP and HTTPS from a real
xrootd on loopback, and with added latency (a network namespace and ``tc netem``, set up and
removed here, as root; a delaying TCP proxy where the kernel has no sch_netem). Reports seconds,
CPU seconds, bytes read, requests and the rate relative to the local read.

The grid (``benchmarks/remote/remote.yml``) names the dataset, the samples, the repeats and the points
(``scheme``: local | root | http | https; ``rtt_ms``: added round-trip time; ``handler``; ``options``:
``uproot.open`` options such as ``begin_chunk_size``). What is read is the processor's branches
(``READ_BRANCHES``) of every file, one ``TTree.arrays`` call per file: uproot asks for all their
baskets in one vector read, so a round trip is paid per file, not per basket.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from utils.benchmark.latency import DelayProxy
from utils.config import read_yaml
from utils.errors import AGCError, ConfigError
from utils.io import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

NETNS = "agc-bench"
HOST_IF, NS_IF = "agcb0", "agcb1"
HOST_IP, NS_IP = "10.213.7.1", "10.213.7.2"
SCHEMES = ("local", "root", "http", "https")
OPEN_OPTIONS = ("begin_chunk_size", "num_workers", "use_threads", "max_num_elements")  # uproot.open's
HANDLERS = ("default", "xrootd")


@dataclass(frozen=True)
class RemotePoint:
    name: str
    scheme: str
    rtt_ms: float = 0.0
    handler: str = "default"  # root:// only: "default" (fsspec-xrootd) | "xrootd" (uproot's XRootDSource)
    options: tuple[tuple[str, Any], ...] = ()  # uproot.open options (OPEN_OPTIONS), sorted by name


@dataclass(frozen=True)
class RemoteGrid:
    name: str
    dataset: str
    samples: tuple[str, ...]
    n_files_max_per_sample: int
    repeat: int
    points: tuple[RemotePoint, ...]


@dataclass
class RemoteMeasurement:
    point: str
    scheme: str
    rtt_ms: float
    repeat: int
    seconds: float
    events: int
    bytes_read: int
    requests: int
    rate_hz: float
    handler: str = "default"
    latency: str = "none"  # none | netem | proxy
    relative_to_local: float | None = None
    cpu_s: float = 0.0  # this process's CPU time (user + system) of the read
    options: dict[str, Any] = field(default_factory=dict)
    load_1min: float = 0.0  # the machine's 1-minute load average when the repeat's round began


def _point(p: dict[str, Any]) -> RemotePoint:
    options = tuple(sorted(dict(p.get("options") or {}).items()))
    return RemotePoint(
        str(p["name"]), str(p["scheme"]), float(p.get("rtt_ms", 0)), str(p.get("handler", "default")), options
    )


def load_remote_grid(path: str | Path) -> RemoteGrid:
    raw = read_yaml(path)
    try:
        points = tuple(_point(p) for p in raw["points"])
        grid = RemoteGrid(str(raw["name"]), str(raw["dataset"]), tuple(raw["samples"]),
                          int(raw.get("n_files_max_per_sample", -1)), int(raw.get("repeat", 1)), points)  # fmt: skip
    except (TypeError, KeyError, ValueError) as err:
        raise ConfigError(
            f"{path}: expected name, dataset, samples, points [{{name, scheme, rtt_ms}}]: {err}"
        ) from None
    bad = [p.name for p in grid.points if p.scheme not in SCHEMES or p.handler not in HANDLERS
           or any(k not in OPEN_OPTIONS for k, _ in p.options)]  # fmt: skip
    if bad:
        raise ConfigError(f"{path}: points {bad}: scheme one of {list(SCHEMES)}, handler one of {list(HANDLERS)}, "
                          f"options among {list(OPEN_OPTIONS)}")  # fmt: skip
    if "local" not in {p.scheme for p in grid.points}:
        raise ConfigError(f"{path}: needs a point with scheme 'local' (the reference rate)")
    return grid


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class NetemUnavailableError(AGCError):
    """``tc netem`` cannot run here (no root, no iproute2, or a kernel without sch_netem)."""


@contextlib.contextmanager
def latency_namespace(rtt_ms: float) -> Iterator[tuple[str, ...]]:
    """A network namespace joined to this one by a veth pair with ``rtt_ms / 2`` of netem delay
    on each side; yields the launcher prefix for the server. Removed on exit."""
    if os.geteuid() != 0 or shutil.which("tc") is None or shutil.which("ip") is None:
        raise NetemUnavailableError("tc netem needs root and iproute2 (`make xrootd-deps`)")
    half = f"{rtt_ms / 2:g}ms"
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)  # a leftover of a killed run
    _ip("netns", "add", NETNS)
    try:
        _ip("link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
        _ip("link", "set", NS_IF, "netns", NETNS)
        _ip("addr", "add", f"{HOST_IP}/30", "dev", HOST_IF)
        _ip("link", "set", HOST_IF, "up")
        _ip("netns", "exec", NETNS, "ip", "addr", "add", f"{NS_IP}/30", "dev", NS_IF)
        _ip("netns", "exec", NETNS, "ip", "link", "set", NS_IF, "up")
        _ip("netns", "exec", NETNS, "ip", "link", "set", "lo", "up")
        for prefix, dev in (((), HOST_IF), (("ip", "netns", "exec", NETNS), NS_IF)):
            tc = subprocess.run([*prefix, "tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", half],
                                capture_output=True, text=True)  # fmt: skip
            if tc.returncode != 0:
                raise NetemUnavailableError(f"tc netem: {tc.stderr.strip()} (a kernel without sch_netem?)")
        yield ("ip", "netns", "exec", NETNS)
    finally:
        subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)


def read_files(urls: list[str], timeout_s: float = 60, handler: str = "default", options: dict[str, Any] | None = None
               ) -> tuple[float, int, int, int, float]:  # fmt: skip
    """Read the processor's branches of every file: (seconds, events, bytes read, requests, CPU
    seconds). ``handler="xrootd"``: uproot's XRootDSource (the XRootD bindings' vector reads) for
    root://; ``options``: further ``uproot.open`` options."""
    import uproot

    opts = dict(options or {})
    if handler == "xrootd":
        opts["handler"] = uproot.source.xrootd.XRootDSource
    from utils.processing.selection import READ_BRANCHES

    events = nbytes = requests = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for url in urls:
        with uproot.open(url, timeout=timeout_s, **opts) as f:
            arrays = f["events"].arrays(list(READ_BRANCHES))
            events += len(arrays)
            nbytes += f.file.source.num_requested_bytes
            requests += f.file.source.num_requests
    return time.perf_counter() - t0, events, nbytes, requests, time.process_time() - c0


def _server_with_latency(stack: contextlib.ExitStack, folder: Path, rtt_ms: float) -> tuple[Any, str]:
    """The xrootd server of a point, and how its latency is added: in a network namespace with
    netem when the kernel has it, else behind a :class:`DelayProxy` on loopback."""
    from utils.delivery.xrootd import XRootDServer

    if rtt_ms <= 0:
        return stack.enter_context(XRootDServer(folder, tls=True)), "none"
    try:
        launcher = stack.enter_context(latency_namespace(rtt_ms))
    except NetemUnavailableError as err:
        log.warning("%s: adding the latency with a delaying TCP proxy on loopback instead", err)
        return stack.enter_context(XRootDServer(folder, tls=True)), "proxy"
    server = XRootDServer(folder, launcher=launcher, host=NS_IP, allow_host=HOST_IP, tls=True)
    return stack.enter_context(server), "netem"


def run_remote_benchmark(grid: RemoteGrid) -> list[RemoteMeasurement]:
    from utils.datasets.fileset import build_fileset
    from utils.datasets.resolve import resolve_dataset
    from utils.datasets.urls import configure_https_trust, configure_xrootd_client

    description = resolve_dataset(grid.dataset)
    folder = description.parent.resolve()
    fileset = build_fileset(description, grid.n_files_max_per_sample)
    paths = [p for s in grid.samples for p in fileset[s]["files"]]
    relative = [str(Path(p).resolve().relative_to(folder)) for p in paths]
    configure_xrootd_client(60)
    out: list[RemoteMeasurement] = []
    with contextlib.ExitStack() as stack:
        # every point's server first; then the repeats round-robin over the points, so that a
        # change of the machine's load (shared) hits all points alike
        # one server (root://, http:// and https:// on its HTTP port) per added round-trip time,
        # one delaying proxy per server port where the latency is a proxy's
        servers: dict[float, tuple[Any, str]] = {}
        proxies: dict[tuple[float, int], DelayProxy] = {}
        targets: dict[RemotePoint, tuple[list[str], str]] = {}
        for point in grid.points:
            if point.scheme == "local":
                targets[point] = ([str(Path(p).resolve()) for p in paths], "none")
                continue
            if point.rtt_ms not in servers:
                servers[point.rtt_ms] = _server_with_latency(stack, folder, point.rtt_ms)
            server, latency = servers[point.rtt_ms]
            base = {"root": server.root_url, "http": server.http_url, "https": server.https_url}[point.scheme]
            if latency == "proxy":
                port = server.port if point.scheme == "root" else server.http_port
                if (point.rtt_ms, port) not in proxies:
                    proxy = DelayProxy(server.host, port, point.rtt_ms / 2000)
                    proxies[point.rtt_ms, port] = stack.enter_context(proxy)
                proxy = proxies[point.rtt_ms, port]
                base = base.replace(f"{server.host}:{port}", f"{proxy.host}:{proxy.port}")
            targets[point] = ([base + r for r in relative], latency)
        if servers:  # every server's CA in one file: https:// verifies each server's certificate
            bundle = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agc-bench-ca-"))) / "ca.pem"
            bundle.write_text("".join(s.ca_file.read_text() for s, _ in servers.values()))
            configure_https_trust(bundle)
        for point, (urls, _) in targets.items():  # warm: page cache, imports, the client's connection
            read_files(urls, handler=point.handler, options=dict(point.options))
        order = list(targets.items())
        for i in range(grid.repeat):
            load = os.getloadavg()[0]
            # each round starts at another point: no point always follows the same one
            for point, (urls, latency) in order[i % len(order) :] + order[: i % len(order)]:
                gc.collect()  # not inside a timed read
                seconds, events, nbytes, requests, cpu = read_files(urls, handler=point.handler,
                                                                    options=dict(point.options))  # fmt: skip
                out.append(RemoteMeasurement(point.name, point.scheme, point.rtt_ms, i, seconds, events, nbytes,
                                             requests, events / seconds, point.handler, latency, None, cpu,
                                             dict(point.options), load))  # fmt: skip
                log.info("%s #%d: %.2f s, %d requests, %.1f MB", point.name, i, seconds, requests, nbytes / 1e6)
    # each repeat against the local read of the same round (seconds apart, under the same load)
    local = {m.repeat: m.rate_hz for m in out if m.scheme == "local"}
    for m in out:
        m.relative_to_local = m.rate_hz / local[m.repeat]
    return out


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def summary_rows(measurements: list[RemoteMeasurement]) -> list[dict[str, Any]]:
    """One row per point: medians over its repeats (seconds, CPU seconds, rate, and the rate
    relative to the local read of the same round), with the range of that ratio."""
    rows = []
    for name in dict.fromkeys(m.point for m in measurements):
        ms = [m for m in measurements if m.point == name]
        first = ms[0]
        ratios = [float(m.relative_to_local or 0.0) for m in ms]
        rows.append({"point": name, "scheme": first.scheme, "handler": first.handler, "options": first.options,
                     "rtt_ms": first.rtt_ms, "repeats": len(ms), "latency": first.latency,
                     "seconds": _median([m.seconds for m in ms]), "cpu_s": _median([m.cpu_s for m in ms]),
                     "events": first.events, "bytes_read": first.bytes_read, "requests": first.requests,
                     "rate_hz": _median([m.rate_hz for m in ms]), "relative_to_local": _median(ratios),
                     "relative_min": min(ratios), "relative_max": max(ratios)})  # fmt: skip
    return rows


def write_remote_results(grid: RemoteGrid, measurements: list[RemoteMeasurement], folder: Path,
                         load_before: tuple[float, float, float]) -> Path:  # fmt: skip
    """``summary.md`` (the table) and ``results.json`` (every repeat) in ``folder``."""
    rows = summary_rows(measurements)
    load = os.getloadavg()
    lines = [
        f"# Remote-read benchmark `{grid.name}`",
        "",
        f"Dataset {grid.dataset}, samples {', '.join(grid.samples)}; the processor's branches of every file. "
        f"{grid.repeat} repeat(s), each a round over all points (round i starts at the i-th point), medians shown; "
        "rate / local: each repeat against the local read of its own round, median [min-max].",
        f"Machine: {os.cpu_count()} CPUs, shared; 1-minute load average before / during (median of the rounds' "
        f"starts) / after: {load_before[0]:.2f} / {_median([m.load_1min for m in measurements]):.2f} / {load[0]:.2f}.",
        "",
        "| point | scheme | handler | uproot options | added RTT [ms] | latency by | s | CPU s | events | MB read "
        "| requests | events/s | rate / local |",
        "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-"
        lines.append(f"| {r['point']} | {r['scheme']} | {r['handler']} | {opts} | {r['rtt_ms']:g} | {r['latency']} "
                     f"| {r['seconds']:.3f} | {r['cpu_s']:.3f} | {r['events']:,d} | {r['bytes_read'] / 1e6:.2f} "
                     f"| {r['requests']} | {r['rate_hz']:,.0f} | {r['relative_to_local']:.2f} "
                     f"[{r['relative_min']:.2f}-{r['relative_max']:.2f}] |")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "results.json", {"grid": asdict(grid), "load_average": list(load),
                                                "load_average_before": list(load_before),
                                                "measurements": [asdict(m) for m in measurements],
                                                "summary": rows})  # fmt: skip
    return write_text_atomic(folder / "summary.md", "\n".join(lines) + "\n")
