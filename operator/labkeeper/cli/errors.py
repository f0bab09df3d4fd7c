"""Every failure a person reads from labctl: one or two lines, never a traceback."""

from __future__ import annotations

import json
import socket
import ssl

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError, ProtocolError, ReadTimeoutError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class LabctlError(Exception):
    """A failure with what went wrong and, where there is one, what to do about it."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def lines(self) -> list[str]:
        return [f"error: {self.message}"] + ([f"hint: {self.hint}"] if self.hint else [])


def _server_message(err: ApiException) -> str:
    try:
        return json.loads(err.body).get("message") or err.reason or str(err.status)
    except (TypeError, ValueError, AttributeError):
        return err.reason or f"HTTP {err.status}"


def from_api(err: ApiException, *, namespace: str | None = None, own_namespace: str | None = None) -> LabctlError:
    """`namespace` is where the command acted (--user picks another); `own_namespace` the caller's own, if any."""
    message = _server_message(err)
    if err.status == 401:
        return LabctlError("the API server did not accept your credentials (Unauthorized)",
                           "your client certificate may have expired; ask the lab admin for a fresh kubeconfig")
    if err.status == 403:
        if "exceeded quota" in message:
            return LabctlError(f"QuotaExceeded: {message}", "stop a workspace (`labctl ls`, `labctl stop NAME`) first")
        own = "; you can use only your own namespace" + (f" ({own_namespace})" if own_namespace else "")
        if namespace and namespace != own_namespace:
            own += f", not {namespace}"
        return LabctlError(f"Forbidden: {message}", "ask the lab admin if you need this" + own)
    if err.status == 404:
        return LabctlError(f"NotFound: {message}")
    if err.status == 409:
        return LabctlError(f"Conflict: {message}", "someone changed it at the same time; run the command again")
    if err.status == 422:
        return LabctlError(f"Invalid: {message}")
    if err.status == 0 or err.status is None:
        return LabctlError(f"cannot reach the API server: {err.reason}")
    return LabctlError(f"the API server answered {err.status} {err.reason}: {message}")


def from_exception(err: BaseException, server: str = "") -> LabctlError | None:
    """A readable error for connection and timeout failures; None for anything unexpected."""
    where = f" at {server}" if server else ""
    if isinstance(err, LabctlError):
        return err
    if isinstance(err, ApiException):
        return from_api(err)
    if isinstance(err, ReadTimeoutError | socket.timeout | TimeoutError):
        return LabctlError(f"the API server{where} did not answer in time",
                           "it may be overloaded or restarting; try again in a minute")
    if isinstance(err, MaxRetryError):
        reason = err.reason
        if isinstance(reason, ReadTimeoutError):
            return from_exception(reason, server)
        if isinstance(reason, ssl.SSLError) or "SSL" in str(reason) or "CERTIFICATE" in str(reason):
            return LabctlError(f"TLS with the API server{where} failed: {_short(reason)}",
                               "the kubeconfig's certificate authority does not match the server")
        return LabctlError(f"cannot reach the API server{where}: {_short(reason)}",
                           "is the cluster up? (`labctl admin doctor` checks; on k3s: `systemctl status k3s`)")
    if isinstance(err, ProtocolError | ConnectionError):
        return LabctlError(f"the connection to the API server{where} broke: {_short(err)}")
    return None


def _short(err: object) -> str:
    text = str(err)
    for marker in ("Failed to establish a new connection: ", "] "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.rstrip("')\"").strip()[:200]
