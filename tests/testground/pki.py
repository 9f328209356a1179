"""The certificates and keys a throwaway Kubernetes control plane needs.

One CA signs everything: the apiserver's serving certificate, the client
certificates of the admin, the controller-manager and the scheduler, and any
further identity a test asks for (a node, a user in some group) or server it
runs (``issue_serving``: an aggregated API server, say). A second CA, the front
proxy's, signs only the certificate the apiserver presents when it forwards a
request to an aggregated API server (as kubeadm has it: a certificate of the
main CA cannot be taken for the front proxy's). Kubernetes
reads the user name from the certificate's CN and the groups from its O
entries, so ``O=system:masters`` makes a cluster admin.

TLS keys are ECDSA P-256 (generated in microseconds, accepted by every
component); the service-account signing key is RSA so tokens are RS256, the
algorithm every token consumer supports.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Names and addresses clients use to reach the apiserver: loopback for us, the
# first service IP and the in-cluster DNS names for pods (the node agent's
# processes talk to the apiserver as pods would).
APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
APISERVER_IPS = ("127.0.0.1", "10.0.0.1")
#: The user the apiserver's front-proxy certificate names (``--requestheader-allowed-names``).
FRONT_PROXY_CLIENT = "front-proxy-client"

# A test session never outlives this; a short lifetime keeps leaked files harmless.
VALIDITY = datetime.timedelta(days=7)


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    folder: Path
    ca: CertPair
    apiserver: CertPair
    admin: CertPair
    controller_manager: CertPair
    scheduler: CertPair
    service_account_key: Path  # private key the controller-manager and apiserver sign tokens with
    service_account_pub: Path  # public key the apiserver verifies tokens with
    #: The aggregation layer: the CA aggregated API servers trust for forwarded requests, and the
    #: apiserver's client certificate (CN ``FRONT_PROXY_CLIENT``) signed by it.
    front_proxy_ca: CertPair
    front_proxy_client: CertPair

    def issue_serving(
        self, name: str, dns_names: Sequence[str], ips: Sequence[str], client_auth: bool = False
    ) -> CertPair:
        """A serving certificate for ``dns_names`` and ``ips``, signed by this CA; with
        ``client_auth`` the same certificate also authenticates its holder as a client (mutual TLS
        between two servers that share one certificate folder)."""
        ca_cert, ca_key = _load_ca(self.ca)
        return _issue_serving(self.folder, name, ca_cert, ca_key, name, dns_names, ips, client_auth)

    def issue_client(self, name: str, user: str, groups: Sequence[str] = ()) -> CertPair:
        """A client certificate for ``user`` in ``groups``, signed by this CA."""
        ca_cert, ca_key = _load_ca(self.ca)
        return _issue_client(self.folder, name, ca_cert, ca_key, user, groups)


def _new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _write_pair(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertPair:
    pair = CertPair(cert=folder / f"{name}.crt", key=folder / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    pair.key.chmod(0o600)
    return pair


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    # Backdated a little so a clock a few seconds behind still accepts it.
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
    )


def _make_ca(
    folder: Path, name: str = "ca", common_name: str = "tritonresnet-testground-ca"
) -> tuple[CertPair, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_ec_key()
    subject = _name(common_name)
    cert = (
        _builder(subject, subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write_pair(folder, name, cert, key), cert, key


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_encipherment=False,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _issue_serving(
    folder: Path,
    name: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    dns_names: Sequence[str],
    ips: Sequence[str],
    client_auth: bool = False,
) -> CertPair:
    key = _new_ec_key()
    sans: list[x509.GeneralName] = [x509.DNSName(dns) for dns in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, *([ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else [])]
    cert = (
        _builder(_name(common_name), ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _write_pair(folder, name, cert, key)


def _issue_client(
    folder: Path,
    name: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    user: str,
    groups: Sequence[str],
) -> CertPair:
    key = _new_ec_key()
    cert = (
        _builder(_name(user, groups), ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _write_pair(folder, name, cert, key)


def _load_ca(pair: CertPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{pair.key} is not the EC key this module writes")
    return cert, key


def _write_service_account_keys(folder: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = folder / "sa.key", folder / "sa.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def generate_pki(folder: Path) -> Pki:
    """Write a fresh CA and every certificate the control plane needs into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_cert, ca_key = _make_ca(folder)
    sa_key, sa_pub = _write_service_account_keys(folder)
    front_proxy_ca, front_proxy_cert, front_proxy_key = _make_ca(
        folder, "front-proxy-ca", "tritonresnet-testground-front-proxy-ca"
    )
    return Pki(
        folder=folder,
        ca=ca,
        apiserver=_issue_serving(
            folder, "apiserver", ca_cert, ca_key, "kube-apiserver", APISERVER_DNS_NAMES, APISERVER_IPS
        ),
        admin=_issue_client(folder, "admin", ca_cert, ca_key, "kubernetes-admin", ["system:masters"]),
        controller_manager=_issue_client(
            folder, "controller-manager", ca_cert, ca_key, "system:kube-controller-manager", []
        ),
        scheduler=_issue_client(folder, "scheduler", ca_cert, ca_key, "system:kube-scheduler", []),
        service_account_key=sa_key,
        service_account_pub=sa_pub,
        front_proxy_ca=front_proxy_ca,
        front_proxy_client=_issue_client(
            folder, "front-proxy-client", front_proxy_cert, front_proxy_key, FRONT_PROXY_CLIENT, []
        ),
    )
