"""TLS between agents, `mlsmctl` and the controller: one place for how a client
trusts the controller, when a token may go in clear text, and what a failed
connection tells the person who has to fix it.

    context = client_context(ca_file)           # the system's CAs, or this one
    refuse_clear_text(url, insecure=False)      # a token to another host needs https
    said = explain(exc, url)                    # one line with the fix, or None

The controller serves HTTPS when given a certificate and its key (uvicorn's own
TLS); `check_server_files` tries the pair before it starts, so that a wrong key is
one line at start-up rather than a traceback from the event loop.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from mlsm.errors import UserError

__all__ = ["check_server_files", "client_context", "explain", "is_loopback", "refuse_clear_text"]

CA_HINT = "give the CA that signed it with --ca-file (or MLSM_CA_FILE)"


def client_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """Verify the controller against this CA file, else the system's trust store."""
    if ca_file is None or str(ca_file) == "":
        return ssl.create_default_context()
    path = Path(ca_file)
    try:
        return ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise UserError(f"--ca-file {path}: no such file") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise UserError(f"--ca-file {path}: not a PEM certificate file ({exc})") from None


def check_server_files(cert: str | Path, key: str | Path) -> None:
    """Whether the controller can serve HTTPS with this certificate and key."""
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).is_file():
            raise UserError(f"{flag} {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise UserError(f"--tls-key {key} is not the key of --tls-cert {cert}") from None
        raise UserError(
            f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate and its unencrypted "
            f"key ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read --tls-cert {cert} or --tls-key {key}: {exc}") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refuse_clear_text(url: str, *, insecure: bool, secret: str = "token") -> None:
    """A token never goes over plain HTTP to another machine unless the operator says
    `--insecure`: anyone on the path could act as this node (or admin) with it."""
    parts = urlsplit(url)
    if parts.scheme != "http" or insecure or is_loopback(parts.hostname or ""):
        return
    raise UserError(
        f"{url} is plain HTTP to another machine: the {secret} would cross the network "
        "in clear text. Serve the controller over HTTPS (mlsm-controller run --tls-cert "
        "FILE --tls-key FILE) and use https://, or pass --insecure if this network is "
        "trusted"
    )


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def explain(exc: BaseException, url: str) -> str | None:
    """What a TLS failure means and what fixes it, in one line; None when it is not
    one (a refused connection, a timeout: the caller says those)."""
    parts = urlsplit(url)
    host = parts.hostname or url
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            code = cause.verify_code
            detail = cause.verify_message or str(cause)
            if code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
                return (
                    f"the controller's certificate at {host} has expired: renew it "
                    "(mlsm-controller run --tls-cert with a current certificate)"
                )
            if code == 9:  # X509_V_ERR_CERT_NOT_YET_VALID
                return f"the controller's certificate at {host} is not valid yet: check clocks"
            if code == 62 or "hostname" in detail.lower() or "IP address" in detail:
                return (
                    f"the controller's certificate is not for {host} ({detail}): connect by "
                    "a name it lists, or issue it with this name among its subject "
                    "alternative names"
                )
            if code in (18, 19, 20, 21):  # self-signed, or an unknown issuer
                return (
                    f"the controller's certificate at {host} is not signed by a CA this "
                    f"machine trusts ({detail}): {CA_HINT}"
                )
            return f"cannot verify the controller's certificate at {host} ({detail}): {CA_HINT}"
        if isinstance(cause, ssl.SSLError):
            text = f"{cause.reason or ''} {cause}".upper()
            if any(s in text for s in ("WRONG_VERSION_NUMBER", "RECORD_LAYER", "PACKET_LENGTH")):
                return (
                    f"{url} does not speak TLS: use http://, or serve the controller over "
                    "HTTPS (--tls-cert and --tls-key)"
                )
            return f"TLS with {host} failed: {cause.reason or cause}"
    if parts.scheme == "http" and any(
        "disconnected without sending a response" in str(c) or isinstance(c, ConnectionResetError)
        for c in _causes(exc)
    ):
        return (
            f"{url} closed the connection without an answer: if the controller serves "
            f"HTTPS, use https://{parts.netloc}"
        )
    return None
