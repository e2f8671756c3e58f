"""When trying again cannot help: the causes for which `hsbterm` stops retrying a logon.

A terminal retries whatever keeps it from logging on (a CP restarting refuses connects, resets
them, or closes them after the hello), and so must a load run during a CP restart. Some answers
say that no retry will ever get through, and while no terminal of a run was ever welcomed they
mean the run is pointed at the wrong thing:

- the CP refused the terminal for good (`unknown_terminal`, `bad_hello`, `tls_name_mismatch`):
  the name, or the certificate, is wrong; or its port did (`tls_required`: it speaks TLS and
  the terminal did not), which every terminal meets alike;
- what answers breaks the terminal link (a protocol error before any welcome: a CP's host or
  admin port sends a challenge, say): not a CP's terminal port;
- a TLS handshake failed for a reason of the peer's or the certificates' (not TLS at all there,
  a certificate that does not chain to --ca, the terminal's own --cert refused by the CP): not
  a connection dropped midway. Under TLS 1.3 the CP's refusal of the terminal's certificate
  comes after the client's side of the handshake is done, so after the hello: the connection
  is lost with that alert (`cert_refused`), which counts as the connect failure it is.

`Hopeless` counts them for a group of terminals none of which was ever welcomed and says, once
they leave no doubt, the one-line cause and its fix. A refused terminal counts once every
terminal of the group has been refused (a CP that knows only some names welcomes those), a
refusal by the port at once; a port's fault (a protocol error, a TLS failure) after STRIKES of
them. Anything else (a refused or reset connect, a close without a reason) is what a CP
restart looks like, and never counts.
"""

from __future__ import annotations

import ssl
from collections import Counter
from typing import Any

from hsb.wire.tlsio import NOT_TLS_REASONS

STRIKES = 3  # a port's faults (protocol errors, TLS failures) before a group gives up

# refusals of the CP's port itself, whatever the terminal: the first one decides
PORT_REFUSALS = frozenset({"tls_required"})
# a CP's refusals that the same terminal, trying again, always meets again
REFUSALS = frozenset({"unknown_terminal", "bad_hello", "tls_name_mismatch"}) | PORT_REFUSALS
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: not the --cp-name it names
NAME_MISMATCH = frozenset({62, 64})
# the TLS alerts of a CP that refuses the certificate the terminal presented (--cert)
CERT_REFUSED = frozenset(
    {
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    }
)


def cert_refused(exc: BaseException) -> bool:
    """The CP refused the terminal's own certificate (its TLS alert ended the connection)."""
    return isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLCertVerificationError) and str(exc.reason) in CERT_REFUSED


def _cert_fix(reason: str) -> str:
    if reason == "SSLV3_ALERT_CERTIFICATE_EXPIRED":
        return "make a new one (hsbctl tls init, or your CA), or leave --cert and --key out"
    if reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED":
        return "give --cert and --key, the terminal's own certificate"
    if reason == "TLSV1_ALERT_UNKNOWN_CA":
        return "--cert must be issued by the CA of the CP's [tls] terminal_ca_file (or its ca_file), or leave --cert and --key out"
    return (
        "--cert must be in date, name the terminal and come from the CA of the CP's [tls] terminal_ca_file"
        " (or its ca_file), or leave --cert and --key out"
    )


def tls_failure(exc: BaseException, cert: str | None = None) -> str | None:
    """The cause and fix of a TLS handshake failure that trying again cannot change; None for
    anything else (a connect refused or reset, a peer that went away mid-handshake: a restart).
    `cert` is the terminal's --cert, named when the CP refused it."""
    if not isinstance(exc, ssl.SSLError) or isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)):
        return None
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_code in NAME_MISMATCH:
        return (
            f"the CP's certificate does not name the CP of --cp-name ({exc.verify_message}): give --cp-name the CP's [cp] name,"
            " or check --cp (another daemon of the cluster answered there: a host's certificate, docs/tls.md)"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"the CP's certificate was not accepted ({exc.verify_message or exc.reason}):"
            " give --ca the CA that signed the CP's certificate (the cluster's ca.pem, docs/tls.md)"
        )
    reason = str(exc.reason or exc)
    if reason in CERT_REFUSED:
        which = f" {cert}" if cert else ""
        return f"the CP refused this terminal's certificate{which} ({reason.lower().replace('_', ' ')}): {_cert_fix(reason)}"
    if reason in NOT_TLS_REASONS:  # (a plain port answers a ClientHello with its own bytes)
        return f"it does not speak TLS ({reason.lower().replace('_', ' ')}): leave out --tls (the CP's [tls] terminals is off), or check --cp"
    return f"the TLS handshake failed ({reason.lower().replace('_', ' ')}): check --ca, --cert and --key against the CP's [tls] (docs/tls.md)"


def refusal_fix(code: str, load: bool) -> str:
    """What to change after the CP refused a terminal with `code` (one of REFUSALS)."""
    if code == "unknown_terminal":
        if load:
            return (
                "name terminals the CP defines: --prefix, --start, --width and -n make the names (prefix + zero-padded number),"
                " as the CP's [[terminal_groups]] do (new ones load with SIGHUP)"
            )
        return "connect as a terminal the CP defines ([[terminals]] or [[terminal_groups]] in its config; new ones load with SIGHUP)"
    if code == "tls_name_mismatch":
        return "--cert must be the terminal's own certificate (naming it), or leave --cert and --key out"
    if code == "tls_required":
        return (
            "give the terminal the CP's TLS settings: --tls --ca FILE (the CA that signed the CP's certificate, the cluster's ca.pem),"
            " and --cert/--key if it has its own certificate (docs/tls.md)"
        )
    return "give the terminal's name (as the CP's config defines it)" if not load else "give terminal names the CP defines"


# Why a terminal (`hsbterm connect`), or every terminal of a load, never logged on though nothing
# said it never could; `target`: the CP's address, named unless the line names it already.


def check_cp(target: str = "") -> str:
    """The fix when nothing at --cp welcomed the terminal."""
    where = f" ({target})" if target else ""
    return f"is the CP running, and --cp its terminal_listen address{where}?"


def no_connect(failed: int, last: str | None, target: str = "") -> str:
    """No connect got through."""
    return f"no connect got through ({failed} failed, the last {last}): {check_cp(target)}"


def closed_after_hello(drops: int, target: str = "") -> str:
    """Why it never logged on: every connection was closed after its hello, with no answer."""
    where = f" ({target})" if target else ""
    return (
        f"every connection was closed after its hello with no answer ({drops}): a CP whose terminal"
        f" listener has TLS needs --tls --ca (docs/tls.md); a CP out of open files closes them too (its log says"
        f" connection_refused); else is --cp the CP's terminal_listen address{where}?"
    )


def not_a_terminal_port(target: str, detail: str) -> str:
    return f"{target} does not speak the terminal link ({detail}): --cp takes the CP's terminal_listen address (not its host_listen or admin_listen)"


class Hopeless:
    """Counts the answers no retry can change for a group of `terminals` terminals none of which
    was ever welcomed; each method returns the cause (one line, with its fix) once it is time to
    give up, else None. `cert` is the terminals' --cert, if any."""

    def __init__(self, target: str, terminals: int, *, load: bool, cert: str | None = None) -> None:
        self.target = target
        self.cert = cert
        self.terminals = terminals
        self.load = load
        self.refused: dict[Any, tuple[str, str]] = {}  # terminal -> (code, the CP's words)
        self.strikes = 0  # the port's faults
        self.cause: str | None = None

    def refusal(self, who: Any, code: str, msg: str) -> str | None:
        if code not in REFUSALS or self.cause is not None:
            return self.cause
        self.refused[who] = (code, msg)
        if code in PORT_REFUSALS:
            self.cause = f"the CP at {self.target} speaks TLS on its terminal port ({code}): {refusal_fix(code, self.load)}"
        elif len(self.refused) >= self.terminals:
            codes = Counter(c for c, _ in self.refused.values())
            code, _ = codes.most_common(1)[0]
            words = next(m for c, m in self.refused.values() if c == code)
            whom = "every terminal" if self.terminals > 1 else "the terminal"
            self.cause = f"the CP at {self.target} refused {whom} ({code}: {words[:120]}): {refusal_fix(code, self.load)}"
        return self.cause

    def protocol_error(self, detail: str) -> str | None:
        return self._strike(not_a_terminal_port(self.target, detail))

    def connect_failed(self, exc: BaseException) -> str | None:
        why = tls_failure(exc, self.cert)
        if why is None:
            return self.cause
        return self._strike(f"TLS with {self.target} failed: {why}")

    def _strike(self, cause: str) -> str | None:
        if self.cause is None:
            self.strikes += 1
            if self.strikes >= STRIKES:
                self.cause = cause
        return self.cause
