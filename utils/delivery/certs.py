"""A throw-away certificate authority and server certificate, for serving files over https:// on
loopback (the xrootd of the tests, benchmarks and ``agc serve-data --tls``).

The CA signs one server certificate for ``localhost``, ``127.0.0.1`` and any further names or
addresses given; clients trust the CA file explicitly (``AGC_CA_FILE``, see
:func:`utils.datasets.urls.configure_https_trust`), never by turning verification off.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from utils.io import write_text_atomic

DEFAULT_NAMES = ("localhost", "127.0.0.1")
KEY_USAGES = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
              "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")  # fmt: skip


@dataclass(frozen=True)
class ServerCertificate:
    ca_file: Path  # PEM of the CA certificate: what a client trusts
    cert_file: Path  # PEM of the server certificate
    key_file: Path  # PEM of the server's private key (mode 0600)


def _san(names: tuple[str, ...]) -> list:
    from cryptography import x509

    out: list = []
    for name in dict.fromkeys(names):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def make_server_certificate(folder: Path, names: tuple[str, ...] = (), days: int = 7) -> ServerCertificate:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` (EC P-256) into ``folder``: a CA valid
    for ``days`` and a server certificate it signs for ``localhost``, ``127.0.0.1`` and ``names``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_usage = x509.KeyUsage(**{u: u in ("digital_signature", "key_cert_sign", "crl_sign") for u in KEY_USAGES})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AGC loopback test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(_san((*DEFAULT_NAMES, *names))), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    out = ServerCertificate(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    write_text_atomic(out.ca_file, ca.public_bytes(pem).decode())
    write_text_atomic(out.cert_file, cert.public_bytes(pem).decode())
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    write_text_atomic(out.key_file, key_pem, mode=0o600)
    return out
