"""The control plane's certificates and keys, and the admin kubeconfig that uses them.

A throwaway CA signs the API server's serving certificate and an admin client certificate;
a separate key pair signs ServiceAccount tokens. :func:`.startup.start` writes them into the
state directory before it launches anything, and :mod:`.startup`'s component arguments point
at these files.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Cluster IPs are only allocated, never routed: no kube-proxy runs and kwok pods are not real.
# The API server's certificate names the first address, that of Service ``kubernetes``.
SERVICE_CIDR = "10.0.0.0/24"
CERT_VALIDITY = datetime.timedelta(days=365)


def write_pki(directory: Path) -> None:
    """Write a CA, the API server's serving cert, an admin client cert and the SA key pair.

    EC P-256 keys, because they are generated in microseconds where RSA takes a while. The
    admin cert's organisation system:masters is what kubectl, the Python client and the other
    components authenticate with; RBAC is still enforced for every other identity.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sluice-test-ca")])
    write_pem(directory, "ca", issue(ca, ca_key.public_key(), ca, ca_key, usage=None), ca_key)
    hosts = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
    addresses = [ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv4Network(SERVICE_CIDR)[1]]
    sans: list[x509.GeneralName] = [x509.DNSName(host) for host in hosts]
    sans += [x509.IPAddress(address) for address in addresses]
    server = [x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]
    write_leaf(directory, "apiserver", server, ExtendedKeyUsageOID.SERVER_AUTH, ca, ca_key, sans)
    admin = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
        x509.NameAttribute(NameOID.COMMON_NAME, "sluice-admin"),
    ]
    write_leaf(directory, "admin", admin, ExtendedKeyUsageOID.CLIENT_AUTH, ca, ca_key)
    write_service_account_keys(directory)


def write_leaf(
    directory: Path,
    stem: str,
    subject: list[x509.NameAttribute[str]],
    usage: x509.ObjectIdentifier,
    ca: x509.Name,
    ca_key: ec.EllipticCurvePrivateKey,
    sans: list[x509.GeneralName] | None = None,
) -> None:
    """Issue a leaf certificate from the CA and write it with a fresh key as ``<stem>.*``."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue(x509.Name(subject), key.public_key(), ca, ca_key, usage=usage, sans=sans)
    write_pem(directory, stem, cert, key)


def issue(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    usage: x509.ObjectIdentifier | None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    """Sign a certificate: a CA when ``usage`` is None, else a leaf for that usage.

    Key identifiers are included because OpenSSL 3's strict verification (Python ≥ 3.13
    enables it by default) rejects chains without them.
    """
    is_ca = usage is None
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(key_usage(is_ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def key_usage(is_ca: bool) -> x509.KeyUsage:
    """Signing certificates for a CA; signatures only for an EC leaf (no key encipherment)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=is_ca,
        crl_sign=is_ca,
        encipher_only=False,
        decipher_only=False,
    )


def write_pem(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    """Write ``<stem>.crt`` and ``<stem>.key`` (PKCS#8, unencrypted: throwaway test keys)."""
    (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(private_pem(key))


def write_service_account_keys(directory: Path) -> None:
    """The key pair that signs ServiceAccount tokens (apiserver) and verifies them."""
    key = ec.generate_private_key(ec.SECP256R1())
    (directory / "sa.key").write_bytes(private_pem(key))
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (directory / "sa.pub").write_bytes(public)


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PEM bytes of an unencrypted PKCS#8 private key."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_kubeconfig(path: Path, server: str, pki: Path) -> None:
    """A kubeconfig with file paths (not inline data), so no client writes temporary files."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "sluice-test",
                "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": "sluice-admin",
                "user": {
                    "client-certificate": str(pki / "admin.crt"),
                    "client-key": str(pki / "admin.key"),
                },
            }
        ],
        "contexts": [
            {"name": "sluice-test", "context": {"cluster": "sluice-test", "user": "sluice-admin"}}
        ],
        "current-context": "sluice-test",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
