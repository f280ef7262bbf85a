"""TLS between agents, mlsmctl and the controller, with certificates this test makes:
the controller serves HTTPS with uvicorn's TLS; mlsmctl and agents verify it against
a CA file (or the system's store); a wrong, expired or untrusted certificate, and
HTTP and HTTPS crossed, each give one line that says what to fix; a node token never
goes over plain HTTP to another machine unless --insecure says so."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.databases import sqlite_only
from tests.integration.conftest import (
    GitRepo,
    controller_bin,
    free_port,
    issue_node_token,
    node,
    ready,
    wait_for,
)

NOW = dt.datetime.now(dt.UTC)


@dataclass
class Pair:
    cert: Path
    key: Path


class Pki:
    """A CA, and certificates it signs, written as PEM files under `root`."""

    def __init__(self, root: Path, name: str = "mlsm test CA") -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = root / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, stem: str, names: list[str], *, expired: bool = False, key_of: Pair | None = None
    ) -> Pair:
        key = ec.generate_private_key(ec.SECP256R1())
        alternatives: list[x509.GeneralName] = []
        for name in names:
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternatives.append(x509.DNSName(name))
        start, end = (
            (NOW - dt.timedelta(days=10), NOW - dt.timedelta(days=1))
            if expired
            else (NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=10))
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        pair = Pair(self.root / f"{stem}.pem", self.root / f"{stem}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key_of is not None:  # the key of another certificate: a mismatched pair
            pair.key.write_bytes(key_of.key.read_bytes())
        else:
            pair.key.write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ))  # fmt: skip
        return pair


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def trusting(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def mlsmctl(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlsm.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=60)  # fmt: skip


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    return line


@sqlite_only
def test_mlsmctl_verifies_the_controller_and_says_what_is_wrong(
    start: Callable[..., httpx.Client], repo: GitRepo, pki: Pki
) -> None:
    repo.write("nodes/gpu-1.yaml", node("gpu-1"))
    repo.commit()
    good = pki.issue("good", ["127.0.0.1", "localhost"])
    client = start(str(repo.root), "--tls-cert", str(good.cert), "--tls-key", str(good.key),
                   verify=trusting(pki.ca_file))  # fmt: skip
    url, port = str(client.base_url).rstrip("/"), client.base_url.port

    trusted = mlsmctl("get", "nodes", "--server", url, "--ca-file", str(pki.ca_file))
    assert trusted.returncode == 0, trusted.stderr
    assert "gpu-1" in trusted.stdout
    by_name = mlsmctl("get", "nodes", "--server", f"https://localhost:{port}",
                      MLSM_CA_FILE=str(pki.ca_file))  # fmt: skip
    assert by_name.returncode == 0, by_name.stderr

    untrusted = one_line_error(mlsmctl("get", "nodes", "--server", url))
    assert "not signed by a CA this machine trusts" in untrusted
    assert "--ca-file (or MLSM_CA_FILE)" in untrusted
    stranger = Pki(pki.root / "other", "another CA")
    wrong_ca = one_line_error(
        mlsmctl("get", "nodes", "--server", url, "--ca-file", str(stranger.ca_file))
    )
    assert "not signed by a CA this machine trusts" in wrong_ca
    plain = one_line_error(mlsmctl("get", "nodes", "--server", f"http://127.0.0.1:{port}"))
    assert plain.endswith(
        f"closed the connection without an answer: if the controller serves HTTPS, use "
        f"https://127.0.0.1:{port}"
    )
    missing = mlsmctl("get", "nodes", "--server", url, "--ca-file", str(pki.root / "nope.pem"))
    assert one_line_error(missing).endswith(f"--ca-file {pki.root / 'nope.pem'}: no such file")


@sqlite_only
@pytest.mark.parametrize(
    ("names", "expired", "said"),
    [
        pytest.param(["127.0.0.1"], True, "the controller's certificate at 127.0.0.1 has "
                     "expired: renew it", id="expired"),
        pytest.param(["ctl.other.example"], False, "the controller's certificate is not for "
                     "127.0.0.1", id="another-name"),
    ],
)  # fmt: skip
def test_a_certificate_that_is_expired_or_for_another_name_is_one_line(
    start: Callable[..., httpx.Client],
    repo: GitRepo,
    pki: Pki,
    names: list[str],
    expired: bool,
    said: str,
) -> None:
    repo.write("nodes/gpu-1.yaml", node("gpu-1"))
    repo.commit()
    pair = pki.issue("server", names, expired=expired)
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE  # to see it start
    client = start(str(repo.root), "--tls-cert", str(pair.cert), "--tls-key", str(pair.key),
                   verify=insecure)  # fmt: skip
    done = mlsmctl("get", "nodes", "--server", str(client.base_url).rstrip("/"),
                   "--ca-file", str(pki.ca_file))  # fmt: skip
    assert said in one_line_error(done)


@sqlite_only
def test_https_to_a_plain_http_controller_says_it_does_not_speak_tls(
    start: Callable[..., httpx.Client], repo: GitRepo
) -> None:
    repo.write("nodes/gpu-1.yaml", node("gpu-1"))
    repo.commit()
    client = start(str(repo.root))
    port = client.base_url.port
    done = mlsmctl("get", "nodes", "--server", f"https://127.0.0.1:{port}")
    assert one_line_error(done).endswith(
        f"https://127.0.0.1:{port} does not speak TLS: use http://, or serve the controller "
        "over HTTPS (--tls-cert and --tls-key)"
    )


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        pytest.param(["--tls-cert", "{good.cert}"], "--tls-cert and --tls-key go together",
                     id="cert-alone"),
        pytest.param(["--tls-cert", "{good.cert}", "--tls-key", "{other.key}"],
                     "--tls-key {other.key} is not the key of --tls-cert {good.cert}",
                     id="wrong-key"),
        pytest.param(["--tls-cert", "{root}/absent.pem", "--tls-key", "{good.key}"],
                     "--tls-cert {root}/absent.pem: no such file", id="missing-cert"),
    ],
)  # fmt: skip
def test_the_controller_refuses_a_certificate_it_cannot_serve_in_one_line(
    pki: Pki, tmp_path: Path, flags: list[str], said: str
) -> None:
    good = pki.issue("good", ["127.0.0.1"])
    other = pki.issue("other", ["127.0.0.1"])
    values = {"good": good, "other": other, "root": pki.root}
    done = subprocess.run(
        [*controller_bin(), "run", "--repo", str(tmp_path), "--listen", f"127.0.0.1:{free_port()}",
         "--database-url", f"sqlite:///{tmp_path / 'db'}", *[f.format(**values) for f in flags]],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert said.format(**values) in done.stderr


def test_a_node_token_never_goes_in_clear_text_to_another_machine(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("mlsm_node_secret\n")
    command = [sys.executable, "-m", "mlsm.agent", "run", "--controller", "http://10.255.0.7:8470",
               "--node", "gpu-1", "--token-file", str(tmp_path / "token"),
               "--storage-root", str(tmp_path / "storage")]  # fmt: skip
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert line.endswith(
        "http://10.255.0.7:8470 is plain HTTP to another machine: the node token would cross "
        "the network in clear text. Serve the controller over HTTPS (mlsm-controller run "
        "--tls-cert FILE --tls-key FILE) and use https://, or pass --insecure if this "
        "network is trusted"
    )
    said_so = subprocess.Popen([*command, "--insecure", "--heartbeat-interval", "0.2"],
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:  # it runs, and keeps trying the (unreachable) controller
        with pytest.raises(subprocess.TimeoutExpired):
            said_so.wait(1.5)
    finally:
        said_so.kill()
        said_so.wait()
    token = mlsmctl("get", "jobs", "--server", "http://10.255.0.7:8470", "--token", "t")
    assert "plain HTTP to another machine: the token would cross" in one_line_error(token)


@sqlite_only
def test_an_agent_reaches_an_https_controller_with_its_ca_file(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., object],
    repo: GitRepo,
    pki: Pki,
    database_url: str,
) -> None:
    repo.write("nodes/gpu-1.yaml", node("gpu-1"))
    repo.commit()
    good = pki.issue("good", ["127.0.0.1"])
    client = start(str(repo.root), "--tls-cert", str(good.cert), "--tls-key", str(good.key),
                   verify=trusting(pki.ca_file))  # fmt: skip
    token = issue_node_token(database_url, "gpu-1")
    start_agent(client, "gpu-1", token, MLSM_AGENT_CA_FILE=str(pki.ca_file))
    wait_for(lambda: ready(client, "gpu-1"), timeout=30)

    repo.write("nodes/gpu-2.yaml", node("gpu-2"))
    repo.commit()
    wait_for(lambda: client.get("/api/v1/nodes/gpu-2").status_code == 200)
    second = issue_node_token(database_url, "gpu-2")
    lost = start_agent(client, "gpu-2", second)  # no CA file: the system store lacks ours
    wait_for(lambda: "not signed by a CA this machine trusts" in lost.output(), timeout=30)  # type: ignore[attr-defined]
    assert not ready(client, "gpu-2")
