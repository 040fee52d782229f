"""``olol certs init|issue``: a private CA and the certificates for mutual TLS between
the proxy and its node agents, in two commands.

``olol certs init`` makes ``ca.pem`` and ``ca-key.pem`` in a folder (default
``./olol-certs``); ``olol certs issue NAME --host HOST ...`` makes ``NAME.pem`` and
``NAME-key.pem`` there, signed by that CA, valid as a TLS server for each ``--host``
(DNS name or IP address) and as a TLS client, so one command serves a worker
(``--tls-cert/--tls-key/--tls-client-ca``) and the proxy (``node_ca``, ``node_cert``,
``node_key``). Private keys are written 0600; existing files are never overwritten.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

DEFAULT_DIR = "olol-certs"
CA_DAYS = 3650
CERT_DAYS = 825


def register(subparsers: argparse._SubParsersAction) -> None:
    certs = subparsers.add_parser("certs", help="make a CA and TLS certificates for the "
                                  "proxy and its node agents (mutual TLS)")
    sub = certs.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", default=DEFAULT_DIR,
                        help=f"folder of the CA and certificates (default ./{DEFAULT_DIR})")

    p = sub.add_parser("init", parents=[common], help="make the CA (ca.pem, ca-key.pem)")
    p.add_argument("--name", default="olol CA", help="the CA's common name (default 'olol CA')")
    p.add_argument("--days", type=int, default=CA_DAYS,
                   help=f"validity in days (default {CA_DAYS})")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("issue", parents=[common],
                       help="make NAME.pem and NAME-key.pem, signed by the CA")
    p.add_argument("name", help="file name and common name, e.g. worker1 or proxy")
    p.add_argument("--host", action="append", default=[], metavar="HOST",
                   help="DNS name or IP address the certificate is valid for as a server "
                        "(repeatable; a certificate without --host is a client certificate)")
    p.add_argument("--days", type=int, default=CERT_DAYS,
                   help=f"validity in days (default {CERT_DAYS})")
    p.set_defaults(func=cmd_issue)


class CertError(Exception):
    pass


def _write_new(path: Path, data: bytes, private: bool) -> None:
    """Write a file that must not exist yet (0600 for private keys)."""
    mode = 0o600 if private else 0o644
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise CertError(f"{path} exists; remove it first to make a new one") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(folder: Path, name: str = "olol CA", days: int = CA_DAYS) -> tuple[Path, Path]:
    """Write ``ca.pem`` and ``ca-key.pem`` in ``folder``; returns their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if days < 1:
        raise CertError("--days must be at least 1")
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "ca.pem", folder / "ca-key.pem"
    for path in (cert_path, key_path):
        if path.exists():
            raise CertError(f"{path} exists; this folder already has a CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(_name(name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    _write_new(key_path, _key_pem(key), private=True)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert_path, key_path


def issue(folder: Path, name: str, hosts: list[str], days: int = CERT_DAYS) -> tuple[Path, Path]:
    """Write ``NAME.pem`` and ``NAME-key.pem`` signed by the CA in ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    if not name or "/" in name or name.startswith(".") or name in ("ca", "ca-key"):
        raise CertError(f"bad certificate name {name!r}: a plain file name other than 'ca'")
    if days < 1:
        raise CertError("--days must be at least 1")
    try:
        ca_cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((folder / "ca-key.pem").read_bytes(), None)
    except FileNotFoundError:
        raise CertError(f"no CA in {folder}: run `olol certs init --dir {folder}` "
                        "first") from None
    except ValueError as exc:
        raise CertError(f"the CA in {folder} cannot be read: {exc}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):  # what `olol certs init` makes
        raise CertError(f"the CA key in {folder} is not an EC key (made by olol certs init)")
    sans: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip()
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not host or any(c in host for c in " /:@"):
                raise CertError(f"bad --host {host!r}: a DNS name or an IP address") from None
            sans.append(x509.DNSName(host))
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}-key.pem"
    for path in (cert_path, key_path):
        if path.exists():
            raise CertError(f"{path} exists; remove it first to issue a new one")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH]
                                                   if sans else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_new(key_path, _key_pem(key), private=True)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert_path, key_path


def cmd_init(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    try:
        cert, key = make_ca(folder, args.name, args.days)
    except CertError as exc:
        print(f"olol certs: {exc}", file=sys.stderr)
        return 1
    print(f"CA certificate: {cert}  (give it to the proxy as node_ca and to each worker as "
          "--tls-client-ca)")
    print(f"CA key:         {key}  (keep it private; it signs new certificates)")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    try:
        cert, key = issue(folder, args.name, args.host, args.days)
    except CertError as exc:
        print(f"olol certs: {exc}", file=sys.stderr)
        return 1
    role = (f"server for {', '.join(args.host)} and client" if args.host else "client")
    print(f"certificate: {cert}  ({role})")
    print(f"key:         {key}")
    return 0
