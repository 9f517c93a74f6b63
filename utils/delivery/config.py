"""``servicex.yaml`` handling: the local endpoint by default, facility endpoints by configuration,
and a quick reachability check (the client itself takes about 80 s to give up on a silent host).

Without a configuration the stage writes ``<servicex dir>/servicex.yaml`` pointing at the local
endpoint on ``127.0.0.1:<port>`` with an explicit ``cache_path`` (never the client's ``/tmp``
default). ``<servicex dir>`` is ``$AGC_SERVICEX_DIR`` or ``.cache/servicex`` in the repository;
``<port>`` is ``$AGC_SERVICEX_PORT`` or :data:`DEFAULT_PORT`. A loopback endpoint that does not
answer is started automatically (a subprocess that ends with this process); any other endpoint
that does not answer is an error.

The local endpoint needs a bearer token, drawn when it starts: the servicex.yaml files this module
writes (mode 0600) carry it as the endpoint entry's ``token`` (the client's refresh token), and
:func:`ensure_reachable` copies the running endpoint's token into them.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from utils.config import REPO_ROOT, read_yaml
from utils.errors import ConfigError, DeliveryError
from utils.io import write_text_atomic

log = logging.getLogger(__name__)

DEFAULT_PORT = 5181
ENV_DIR = "AGC_SERVICEX_DIR"
ENV_PORT = "AGC_SERVICEX_PORT"
LOCAL_NAME = "agc-local"
REACH_TIMEOUT_S = 3.0
STARTUP_TIMEOUT_S = 60.0


def servicex_dir() -> Path:
    """Folder of the generated servicex.yaml, the client cache and the local endpoints' state."""
    return Path(os.environ.get(ENV_DIR) or REPO_ROOT / ".cache" / "servicex").resolve()


def default_port() -> int:
    text = os.environ.get(ENV_PORT)
    if not text:
        return DEFAULT_PORT
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ConfigError(f"${ENV_PORT}={text!r}: not a TCP port number (1-65535)")
    return port


def endpoint_state_dir(port: int) -> Path:
    """State directory of the local endpoint on ``port`` (one per port, so endpoints never share)."""
    return servicex_dir() / f"endpoint-{port}"


@dataclass(frozen=True)
class ServiceXTarget:
    """The endpoint a delivery talks to, as read from a servicex.yaml."""

    config_path: Path
    backend: str
    url: str
    cache_dir: Path
    has_token: bool
    token: str = field(default="", repr=False)

    @property
    def local(self) -> bool:
        return is_loopback(self.url)

    @property
    def port(self) -> int:
        split = urlsplit(self.url)
        return split.port or (443 if split.scheme == "https" else 80)


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_WRITTEN_MARK = "# Written by the AGC ServiceX stage: the local ServiceX-compatible endpoint."


def write_local_config(path: str | Path, url: str, cache_path: str | Path, token: str = "") -> Path:
    """Write a servicex.yaml (mode 0600) for a local endpoint at ``url`` with its ``token``
    (unchanged files are not rewritten)."""
    path = Path(path)
    text = (
        _WRITTEN_MARK + "\n"
        "# See servicex.yaml.example in the repository for facility endpoints.\n"
        + yaml.safe_dump(
            {
                "api_endpoints": [{"name": LOCAL_NAME, "endpoint": url, "token": token}],
                "default-endpoint": LOCAL_NAME,
                "cache_path": str(Path(cache_path).resolve()),
            },
            sort_keys=False,
        )
    )
    if not path.is_file() or path.read_text() != text or path.stat().st_mode & 0o077:
        write_text_atomic(path, text, mode=0o600)
    return path


def default_local_config(port: int | None = None) -> Path:
    """The project's servicex.yaml for the local endpoint on ``port`` (written when needed)."""
    port = default_port() if port is None else port
    base = servicex_dir()
    return write_local_config(base / "servicex.yaml", f"http://127.0.0.1:{port}", base / "client-cache")


def read_target(config_path: str | Path) -> ServiceXTarget:
    """Read and check a servicex.yaml; errors name the file and the key."""
    path = Path(config_path).resolve()
    data = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("api_endpoints"), list) or not data["api_endpoints"]:
        raise ConfigError(f"{path}: needs 'api_endpoints', a list of {{name, endpoint, token}} entries")
    endpoints = {}
    for i, entry in enumerate(data["api_endpoints"]):
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("endpoint"):
            raise ConfigError(f"{path}: at ['api_endpoints'][{i}]: needs 'name' and 'endpoint'")
        if urlsplit(str(entry["endpoint"])).scheme not in ("http", "https"):
            raise ConfigError(
                f"{path}: at ['api_endpoints'][{i}]['endpoint']: {entry['endpoint']!r} is not an http(s) URL"
            )
        endpoints[str(entry["name"])] = entry
    backend = data.get("default-endpoint") or next(iter(endpoints))
    if backend not in endpoints:
        raise ConfigError(f"{path}: at ['default-endpoint']: {backend!r} is not one of {sorted(endpoints)}")
    cache = data.get("cache_path") or data.get("cache-path")
    if cache:
        cache_dir = Path(str(cache).replace("${USER}", os.environ.get("USER", "user"))).expanduser()
        cache_dir = cache_dir if cache_dir.is_absolute() else (path.parent / cache_dir)
    else:
        cache_dir = servicex_dir() / "client-cache"
        log.info("%s sets no cache_path; the ServiceX cache goes to %s", path, cache_dir)
    entry = endpoints[backend]
    return ServiceXTarget(
        config_path=path,
        backend=backend,
        url=str(entry["endpoint"]).rstrip("/"),
        cache_dir=cache_dir.resolve(),
        has_token=bool(entry.get("token")),
        token=str(entry.get("token") or ""),
    )


def http_get(url: str, timeout: float, token: str = ""):
    """``urlopen`` that never sends loopback requests through a proxy from the environment;
    ``token`` is sent as the bearer token."""
    handlers = [urllib.request.ProxyHandler({})] if is_loopback(url) else []
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return urllib.request.build_opener(*handlers).open(urllib.request.Request(url, headers=headers), timeout=timeout)


def failure_reasons(target: ServiceXTarget, title: str) -> dict[str, str]:
    """Per-file failure messages of the newest request titled ``title`` (local endpoint only)."""
    if not target.local:
        return {}
    try:
        with http_get(f"{target.url}/servicex/transformation", timeout=5, token=target.token) as r:
            requests = [q for q in json.load(r)["requests"] if q.get("title") == title]
        if not requests:
            return {}
        newest = max(requests, key=lambda q: q.get("submit-time") or "")
        results_url = f"{target.url}/servicex/transformation/{newest['request_id']}/results"
        with http_get(results_url, timeout=5, token=target.token) as r:
            results = json.load(r)["results"]
    except Exception as err:  # best effort: only decorates an error message
        log.debug("cannot fetch failure reasons from %s: %s", target.url, err)
        return {}
    return {x["file-path"]: x.get("info") or "failed" for x in results if x.get("transform_status") != "success"}


def probe(url: str, timeout: float = REACH_TIMEOUT_S, token: str = "") -> str | None:
    """GET ``<url>/servicex`` with a short timeout: None when a ServiceX answers, else the reason."""
    try:
        with http_get(f"{url}/servicex", timeout=timeout, token=token) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            return None  # it answers; authentication is the client's business (token in servicex.yaml)
        return f"HTTP {err.code} from GET /servicex: not a ServiceX endpoint?"
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return f"no answer to GET /servicex within {timeout:g} s ({reason})"
    try:
        info = json.loads(body)
    except json.JSONDecodeError:
        return "GET /servicex did not return JSON: not a ServiceX endpoint?"
    if not isinstance(info, dict) or "code-gen-image" not in info:
        return "GET /servicex answered without 'code-gen-image': not a ServiceX endpoint?"
    return None


def start_endpoint_process(port: int, state_dir: Path, workers: int | None = None) -> subprocess.Popen:
    """Start ``agc servicex-endpoint`` in a subprocess that stops when this process ends."""
    state_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "utils.cli",
        "servicex-endpoint",
        "--port",
        str(port),
        "--state-dir",
        str(state_dir),
        "--exit-with-parent",
        str(os.getpid()),
    ]
    if workers:
        command += ["--workers", str(workers)]
    log_path = state_dir / "endpoint.log"
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _with_endpoint_token(target: ServiceXTarget) -> ServiceXTarget:
    """``target`` with the token of the local endpoint on its port, written into its servicex.yaml
    when this module wrote that file (a user's own file keeps the token it has)."""
    from utils.delivery.local.server import read_endpoint_info

    if not target.local:
        return target
    info = read_endpoint_info(endpoint_state_dir(target.port))
    if not info or not info.get("token") or info.get("port") != target.port or info["token"] == target.token:
        return target
    try:
        written_here = target.config_path.read_text().startswith(_WRITTEN_MARK)
    except OSError:
        written_here = False
    if not written_here:
        return target
    write_local_config(target.config_path, target.url, target.cache_dir, info["token"])
    return read_target(target.config_path)


def ensure_reachable(target: ServiceXTarget, workers: int | None = None) -> ServiceXTarget:
    """Make sure ``target`` answers: start the local endpoint for a silent loopback URL, and
    raise DeliveryError for a silent remote one. Returns the target with the local endpoint's token."""
    reason = probe(target.url)
    if reason is None:
        return _with_endpoint_token(target)
    if not target.local:
        raise DeliveryError(
            f"ServiceX endpoint {target.backend!r} at {target.url} (from {target.config_path}): {reason}. "
            "Check the URL, your network or VPN, and that the facility is up; or pass servicex_config=None "
            "to use the local endpoint."
        )
    if urlsplit(target.url).scheme != "http":
        raise DeliveryError(f"{target.config_path}: the local endpoint speaks http, not {target.url}")
    state_dir = endpoint_state_dir(target.port)
    log.info("no ServiceX endpoint at %s (%s); starting the local one (state in %s)", target.url, reason, state_dir)
    process = start_endpoint_process(target.port, state_dir, workers)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if probe(target.url, timeout=1.0) is None:
            return _with_endpoint_token(target)
        if process.poll() is not None:
            if probe(target.url, timeout=1.0) is None:  # another process won the race for the port
                return _with_endpoint_token(target)
            raise DeliveryError(
                f"the local ServiceX endpoint for {target.url} exited with code {process.returncode}; "
                f"its log ({state_dir / 'endpoint.log'}) ends with:\n{_tail(state_dir / 'endpoint.log')}"
            )
        time.sleep(0.2)
    raise DeliveryError(
        f"the local ServiceX endpoint for {target.url} did not answer within {STARTUP_TIMEOUT_S:g} s; "
        f"see {state_dir / 'endpoint.log'}"
    )


def resolve_target(servicex_config: str | Path | None) -> ServiceXTarget:
    """The target for a delivery: the given servicex.yaml, or the project's local one."""
    path = default_local_config() if servicex_config is None else Path(servicex_config)
    return read_target(path)
