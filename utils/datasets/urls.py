"""Input URL rewriting: the facility switches (an XCache prefix, a local mirror of /store/...).

``INPUT_URLS`` names a rule set of ``datasets/url_rules.yml`` or gives rules inline
(``"FROM=>TO"``, several separated by ``;``). A rule replaces a prefix of a file's path or URL;
the first matching rule wins, unmatched files stay as listed. The rules are applied to the
fileset, so the dataset description itself is never edited.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from utils.config import REPO_ROOT, read_yaml
from utils.errors import ConfigError

log = logging.getLogger(__name__)

URL_RULES = REPO_ROOT / "datasets" / "url_rules.yml"
AS_LISTED = "as-listed"
REMOTE_SCHEMES = ("root://", "http://", "https://")
#: a PEM file of CA certificates trusted for https:// inputs besides the system's (a facility's
#: own CA, the loopback server's of the tests); read by :func:`configure_https_trust`
CA_FILE_ENV = "AGC_CA_FILE"
_trusted: dict[str, ssl.SSLContext] = {}


@dataclass(frozen=True)
class UrlRule:
    source: str  # prefix to replace
    target: str  # its replacement

    def apply(self, path: str) -> str | None:
        return self.target + path[len(self.source) :] if path.startswith(self.source) else None


def is_remote(path: str) -> bool:
    return path.startswith(REMOTE_SCHEMES)


def configure_xrootd_client(timeout_s: float) -> None:
    """Bound the XRootD client's waits by ``timeout_s``: its timers tick every 15 s and it retries
    connecting for 120 s unless told otherwise. Set in the environment (before the client first
    runs here, and for the worker processes started later); values already set are kept."""
    t = str(max(1, int(timeout_s)))
    for key, value in {
        "XRD_TIMEOUTRESOLUTION": "1",
        "XRD_REQUESTTIMEOUT": t,
        "XRD_STREAMTIMEOUT": t,
        "XRD_CONNECTIONWINDOW": t,
        "XRD_CONNECTIONRETRY": "1",
    }.items():
        os.environ.setdefault(key, value)


def configure_https_trust(ca_file: str | Path | None = None) -> Path | None:
    """Trust the CA certificate(s) of ``ca_file`` (default: ``$AGC_CA_FILE``) for https:// inputs,
    in addition to the system's trust store; certificates are still verified, host names too.

    uproot reads https:// through fsspec's HTTP file system (aiohttp): its requests get an SSL
    context that holds the extra CA (fsspec's configuration for the http/https protocols). The
    file is put into ``AGC_CA_FILE`` for the worker processes started later, which call this
    again (``utils.processing.executors.warm_worker``, the local ServiceX endpoint's workers).
    Returns the file trusted, or None when none is configured."""
    value = ca_file if ca_file is not None else os.environ.get(CA_FILE_ENV)
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if str(path) in _trusted:
        return path
    if not path.is_file():
        raise ConfigError(f"{CA_FILE_ENV}={value}: no such file; give a PEM file of the CA certificate(s) to trust")
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError as err:
        raise ConfigError(f"{CA_FILE_ENV}={value}: not a PEM file of CA certificates ({err})") from None
    import fsspec.config

    fsspec.config.conf.setdefault("https", {})["ssl"] = context
    _trusted.clear()
    _trusted[str(path)] = context
    os.environ[CA_FILE_ENV] = str(path)
    log.info("https:// inputs: trusting the CA certificate(s) of %s besides the system's", path)
    return path


def load_url_rules(spec: str = AS_LISTED, path: str | Path = URL_RULES) -> list[UrlRule]:
    """The rules of ``spec``: a rule set name of ``path``, or inline ``FROM=>TO[;FROM=>TO]``."""
    if "=>" in spec:
        rules = []
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            source, sep, target = part.partition("=>")
            if not sep or not source:
                raise ConfigError(f"INPUT_URLS={spec!r}: expected 'FROM=>TO' rules separated by ';'")
            rules.append(UrlRule(source, target))
        return rules
    table = read_yaml(path) or {}
    if spec not in table:
        raise ConfigError(f"INPUT_URLS={spec!r}: not a rule set of {path} (allowed {sorted(table)}) nor 'FROM=>TO'")
    try:
        return [UrlRule(str(r["from"]), str(r["to"])) for r in table[spec] or []]
    except (TypeError, KeyError):
        raise ConfigError(f"{path}: at [{spec!r}]: expected a list of {{from: PREFIX, to: PREFIX}}") from None


def rewrite_path(path: str, rules: list[UrlRule]) -> str:
    for rule in rules:
        new = rule.apply(path)
        if new is not None:
            return new
    return path


def rewrite_fileset(fileset: dict[str, dict[str, Any]], rules: list[UrlRule]) -> dict[str, dict[str, Any]]:
    """A copy of a fileset (:func:`utils.datasets.fileset.build_fileset`) with its file paths rewritten."""
    if not rules:
        return fileset
    out = {}
    for sample, entry in fileset.items():
        new = dict(entry)
        new["files"] = {rewrite_path(p, rules): t for p, t in entry["files"].items()}
        if "file_nevts" in entry:
            new["file_nevts"] = {rewrite_path(p, rules): n for p, n in entry["file_nevts"].items()}
        out[sample] = new
    return out


def rules_record(spec: str, rules: list[UrlRule]) -> dict[str, Any]:
    """What the metrics record of the rewriting."""
    return {"input_urls": spec, "rules": [asdict(r) for r in rules]}
