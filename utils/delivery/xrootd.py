"""A real XRootD file server (Debian's ``xrootd-server``) serving a data folder over root:// and
HTTP (its XrdHttp plugin), as an analysis facility serves its files; with ``tls=True`` also
https:// (XrdHttp over TLS, ``xrd.tls``) with a throw-away CA and server certificate written to
the server's temporary folder (:mod:`utils.delivery.certs`). XrdHttp tells a TLS handshake from
plain HTTP on its one port, so ``http_url`` and ``https_url`` share the port.

Used by the tests and benchmarks of remote reading and by ``agc serve-data DIR`` (share the
embedded dataset with a notebook in another container). The server listens on free ports;
``xrd.allow host localhost`` (the default ``allow_host``) refuses connections from anywhere
but this machine. Run as root, it drops to the ``xrootd`` user (``-R xrootd``), which then
needs read access to the folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from utils.delivery.certs import ServerCertificate, make_server_certificate
from utils.errors import AGCError, ConfigError

log = logging.getLogger(__name__)

XROOTD = "xrootd"
RUN_AS = "xrootd"  # the system user of Debian's package
LOOPBACK = "127.0.0.1"


class XRootDUnavailableError(AGCError):
    """The xrootd server program is not installed (``make xrootd-deps`` installs it as root)."""


def xrootd_binary() -> str:
    """The path of the ``xrootd`` program, or :class:`XRootDUnavailableError` saying how to get it."""
    path = shutil.which(XROOTD)
    if path is None:
        raise XRootDUnavailableError(
            "the xrootd server is not installed: as root run `make xrootd-deps` (apt-get install -y xrootd-server)"
        )
    return path


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class XRootDServer:
    """One xrootd process exporting ``root`` read-only; use as a context manager or start/stop."""

    root: Path
    port: int = 0  # 0: a free port
    http_port: int = 0  # 0: a free port; -1: no HTTP
    allow_host: str = "localhost"
    host: str = LOOPBACK  # the address clients use (another one inside a network namespace)
    launcher: tuple[str, ...] = ()  # a command prefix, e.g. ("ip", "netns", "exec", NAME)
    tls: bool = False  # also https:// on the HTTP port, with a certificate made at start
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    workdir: Path | None = field(default=None, init=False)
    certificate: ServerCertificate | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        if not self.root.is_dir():
            raise ConfigError(f"{self.root}: not a folder to serve")

    @property
    def root_url(self) -> str:
        """The root:// URL of the exported folder (append a path relative to ``root``)."""
        return f"root://{self.host}:{self.port}//"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}//"

    @property
    def https_url(self) -> str:
        """The https:// URL of the exported folder (``tls=True``); clients trust :attr:`ca_file`."""
        if not self.tls:
            raise ConfigError("this xrootd serves no https://: start it with tls=True")
        return f"https://{self.host}:{self.http_port}//"

    @property
    def ca_file(self) -> Path:
        """The CA certificate (PEM) that signed the server's certificate (``tls=True``, started)."""
        if self.certificate is None:
            raise ConfigError("this xrootd has no certificate: start it with tls=True")
        return self.certificate.ca_file

    def config_text(self) -> str:
        lines = [
            f"xrd.port {self.port}",
            f"xrd.allow host {self.allow_host}",
            f"oss.localroot {self.root}",
            "all.export / nolock r/o",
            f"all.adminpath {self.workdir}",
            f"all.pidpath {self.workdir}",
        ]
        if self.certificate is not None:
            # the server's certificate for https:// (and roots://); client certificates are not
            # asked for, so no CA folder of the grid is needed on the server
            lines += [f"xrd.tls {self.certificate.cert_file} {self.certificate.key_file}", "xrd.tlsca noverify"]
        if self.http_port > 0:
            lines.append(f"xrd.protocol XrdHttp:{self.http_port} libXrdHttp.so")
        return "\n".join(lines) + "\n"

    def start(self, timeout_s: float = 20.0) -> XRootDServer:
        binary = xrootd_binary()
        self.port = self.port or free_port()
        if self.http_port == 0:
            self.http_port = free_port()
        if self.tls and self.http_port < 0:
            raise ConfigError("https:// is served by XrdHttp: tls=True needs an HTTP port (http_port >= 0)")
        self.workdir = Path(tempfile.mkdtemp(prefix="agc-xrootd-"))
        cmd = [*self.launcher, binary, "-c", str(self.workdir / "xrootd.cfg"), "-l", str(self.workdir / "xrootd.log")]
        if self.tls:
            self.certificate = make_server_certificate(self.workdir / "tls", (self.host,))
        if os.geteuid() == 0:
            for path in [self.workdir, *self.workdir.rglob("*")]:  # the certificate's key is read as RUN_AS
                shutil.chown(path, user=RUN_AS)
            cmd += ["-R", RUN_AS]
        (self.workdir / "xrootd.cfg").write_text(self.config_text())
        self.process = subprocess.Popen(
            cmd, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        ports = [self.port] + ([self.http_port] if self.http_port > 0 else [])
        while not all(_accepts(self.host, p) for p in ports):
            if self.process.poll() is not None or time.monotonic() > deadline:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.poll() is not None and self.process.stderr
                    else ""
                )
                self.stop()
                raise AGCError(f"xrootd did not start serving {self.root} on port {self.port}: {err.strip()[-500:]}")
            time.sleep(0.1)
        log.info("xrootd serving %s at %s and %s%s", self.root, self.root_url, self.http_url,
                 f" and {self.https_url} (CA {self.ca_file})" if self.tls else "")  # fmt: skip
        return self

    def kill(self) -> None:
        """End the server abruptly (SIGKILL), as a crashed or vanished server."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            self.certificate = None

    def __enter__(self) -> XRootDServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
