"""The agent's TCP listener serves TLS with a certificate from files (a Kubernetes Secret); the client verifies it
against the cluster's CA; plain TCP off loopback is refused, so a bearer token never crosses a network in clear."""

from __future__ import annotations

import datetime
import ipaddress
import signal
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from thaw.agent.server import tls_context
from thaw.api.client import AgentClient
from thaw.config import AgentSettings
from thaw.errors import AgentUnavailable, ConfigError
from thaw.store.testing import free_port

TOKEN = "tls-token-for-tests-0123456789abcdef"


def make_ca_and_cert(d: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signs for ``names`` (DNS names or IPs): what cert-manager or openssl would make."""
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key, issuer_name, issuer_key, *, ca: bool, sans: list[str]):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            alt = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n) for n in sans]
            b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "thaw test CA")])
    ca = cert("thaw test CA", ca_key, ca_name, ca_key, ca=True, sans=[])
    leaf = cert(names[0], key, ca_name, ca_key, ca=False, sans=names)
    paths = d / "ca.pem", d / "tls.crt", d / "tls.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


def test_tcp_serves_tls_that_the_client_verifies(make_node, tmp_path: Path) -> None:
    ca, crt, key = make_ca_and_cert(tmp_path, ["thaw-agent"])  # one certificate for every agent, by name
    tokens = tmp_path / "tokens"
    tokens.write_text(f"operator:{TOKEN}\n")
    port = free_port()
    node = make_node("tls", namespaced=False, args=["--listen", f"127.0.0.1:{port}", "--token-file", str(tokens),
                                                   "--tls-cert", str(crt), "--tls-key", str(key)])
    url = f"https://127.0.0.1:{port}"

    with AgentClient(base_url=url, token=TOKEN, ca=ca, server_name="thaw-agent") as c:
        assert c.status().node == "tls"
    with pytest.raises(AgentUnavailable, match="CERTIFICATE_VERIFY_FAILED"):  # a CA it does not trust
        AgentClient(base_url=url, token=TOKEN, server_name="thaw-agent").status()
    with pytest.raises(AgentUnavailable):  # the certificate names thaw-agent, not this address
        AgentClient(base_url=url, token=TOKEN, ca=ca).status()
    with pytest.raises(httpx.TransportError):  # no clear text on the TLS port
        httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"Authorization": f"Bearer {TOKEN}"})
    with node.client() as c:  # the unix socket serves on, without TLS
        assert c.status().node == "tls"

    node.proc.send_signal(signal.SIGTERM)  # one signal stops both listeners
    assert node.proc.wait(timeout=30) == 0
    assert not node.socket.exists()


@pytest.mark.parametrize("listen", ["0.0.0.0:7070", "10.1.2.3:7070", "[::]:7070"])
def test_plain_tcp_off_loopback_is_refused_unless_asked_for(listen: str) -> None:
    with pytest.raises(ConfigError, match="no TLS certificate was given"):
        tls_context(AgentSettings(listen=listen))
    assert tls_context(AgentSettings(listen=listen, plain_tcp=True)) is None
    assert tls_context(AgentSettings(listen="127.0.0.1:7070")) is None


def test_a_certificate_without_its_key_is_a_clear_error(tmp_path: Path) -> None:
    _, crt, _ = make_ca_and_cert(tmp_path, ["thaw-agent"])
    with pytest.raises(ConfigError, match="give both --tls-cert and --tls-key"):
        tls_context(AgentSettings(listen="0.0.0.0:7070", tls_cert=crt))
    with pytest.raises(ConfigError, match="cannot use"):
        tls_context(AgentSettings(listen="0.0.0.0:7070", tls_cert=crt, tls_key=crt))
