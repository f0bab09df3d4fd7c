"""A user's client certificate through the CertificateSigningRequest API, and the kubeconfig
Secret the agent places in her home.

Kubernetes cannot revoke a client certificate, so the certificate's O carries the group of this
incarnation of the user (render.access.access_group) and her bindings name that group, not her name:
once she is offboarded and re-added, a certificate from before (one left in an archive or a copy of
her old ~/.kube/config) still authenticates as her name but matches no binding."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from labkeeper.api.names import LABEL_MANAGED, LABEL_USER, MANAGED_BY, kubeconfig_secret, namespace_for
from labkeeper.kube.client import Kube, owner_reference
from labkeeper.render.access import USERS_GROUP

SIGNER = "kubernetes.io/kube-apiserver-client"
CERT_LIFETIME = dt.timedelta(days=30)
# renew once two thirds of the lifetime has passed
RENEW_FRACTION = 2 / 3


@dataclass(frozen=True)
class ClusterEndpoint:
    server: str
    ca_pem: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def new_key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def csr_pem(username: str, key_pem: bytes, group: str) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"the key for {username} is a {type(key).__name__}, not an EC or RSA key")
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, USERS_GROUP),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, group),
                         x509.NameAttribute(NameOID.COMMON_NAME, username)])
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM)


def csr_name(username: str, key_pem: bytes) -> str:
    # one CSR per key: a restart finds the request it already made instead of making another
    return f"labkeeper-{username}-{hashlib.sha256(key_pem).hexdigest()[:10]}"


def kubeconfig(username: str, endpoint: ClusterEndpoint, cert_pem: bytes, key_pem: bytes, namespace: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "labkeeper", "cluster": {"server": endpoint.server,
                                                       "certificate-authority-data": _b64(endpoint.ca_pem)}}],
        "users": [{"name": username, "user": {"client-certificate-data": _b64(cert_pem),
                                              "client-key-data": _b64(key_pem)}}],
        "contexts": [{"name": "labkeeper", "context": {"cluster": "labkeeper", "user": username,
                                                       "namespace": namespace}}],
        "current-context": "labkeeper",
    })


def cert_groups(cert_pem: bytes) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return {str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)}


def needs_renewal(cert_pem: bytes, now: dt.datetime) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return now >= start + (end - start) * RENEW_FRACTION


@dataclass
class CredentialState:
    ready: bool
    message: str
    not_after: str | None = None


class Credentials:
    """Keeps `kubeconfig-<user>` in the system namespace holding a valid, signed client certificate."""

    def __init__(self, kube: Kube, system_namespace: str, endpoint: ClusterEndpoint, operator_identity: str) -> None:
        self.kube = kube
        self.namespace = system_namespace
        self.endpoint = endpoint
        self.identity = operator_identity

    def ensure(self, user: dict[str, Any], now: dt.datetime, group: str) -> CredentialState:
        """A valid certificate in `group`; one of an earlier incarnation (another group) is replaced."""
        username = user["metadata"]["name"]
        name = kubeconfig_secret(username)
        secret = self.kube.get("Secret", name, self.namespace)
        data = {k: base64.b64decode(v) for k, v in ((secret or {}).get("data") or {}).items()}
        cert = data.get("client.crt")
        if cert and not needs_renewal(cert, now) and data.get("config") and group in cert_groups(cert):
            not_after = x509.load_pem_x509_certificate(cert).not_valid_after_utc.isoformat()
            return CredentialState(True, "client certificate valid", not_after)

        key = data.get("pending.key")
        if key is None:
            # persist the key before asking, so a crash never strands a signed certificate without its key
            key = new_key_pem()
            self._write_secret(user, {**data, "pending.key": key})
        request_name = csr_name(username, key)
        request = self.kube.get("CertificateSigningRequest", request_name)
        if request is None:
            request = self.kube.create(self._csr(user, request_name, key, group))
        issued = (request.get("status") or {}).get("certificate")
        if not issued:
            self._approve(request)
            return CredentialState(False, f"waiting for CertificateSigningRequest {request_name} to be signed")
        cert = base64.b64decode(issued)
        if group not in cert_groups(cert):
            # asked for before the incarnation changed: start over with a new key
            self._write_secret(user, {k: v for k, v in data.items() if k != "pending.key"})
            self.kube.delete("CertificateSigningRequest", request_name)
            return CredentialState(False, f"CertificateSigningRequest {request_name} was for an earlier "
                                          f"incarnation of {username}; asking again")
        config = kubeconfig(username, self.endpoint, cert, key, namespace_for(username)).encode()
        self._write_secret(user, {"client.crt": cert, "client.key": key, "config": config})
        self.kube.delete("CertificateSigningRequest", request_name)
        not_after = x509.load_pem_x509_certificate(cert).not_valid_after_utc.isoformat()
        return CredentialState(True, "client certificate issued", not_after)

    def revoke(self, username: str) -> None:
        self.kube.delete("Secret", kubeconfig_secret(username), self.namespace)

    def _csr(self, user: dict[str, Any], name: str, key: bytes, group: str) -> dict[str, Any]:
        username = user["metadata"]["name"]
        return {
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"name": name, "labels": {LABEL_USER: username, LABEL_MANAGED: MANAGED_BY},
                         "ownerReferences": [owner_reference(user, block=False)]},
            "spec": {
                "request": _b64(csr_pem(username, key, group)),
                "signerName": SIGNER,
                "usages": ["client auth"],
                "expirationSeconds": int(CERT_LIFETIME.total_seconds()),
            },
        }

    def _approve(self, request: dict[str, Any]) -> None:
        conditions = (request.get("status") or {}).get("conditions") or []
        if any(c.get("type") in ("Approved", "Denied") for c in conditions):
            return
        # approve only what this operator itself asked for
        if request["spec"].get("username") != self.identity or request["spec"].get("signerName") != SIGNER:
            return
        body = dict(request)
        body["status"] = {"conditions": [{
            "type": "Approved", "status": "True", "reason": "LabkeeperApproved",
            "message": "client certificate for a labkeeper user, requested by the labkeeper operator",
        }]}
        self.kube.replace_subresource("CertificateSigningRequest", body, "approval")

    def _write_secret(self, user: dict[str, Any], data: dict[str, bytes]) -> None:
        username = user["metadata"]["name"]
        self.kube.apply({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": kubeconfig_secret(username), "namespace": self.namespace,
                         "labels": {LABEL_USER: username, LABEL_MANAGED: MANAGED_BY}},
            "data": {k: _b64(v) for k, v in data.items()},
        })
