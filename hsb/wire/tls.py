"""TLS on the links (docs/tls.md): the standard library's `ssl`, nothing home-made.

With a `[tls]` section every host, peer and admin link is mutual TLS (TLS 1.3; 1.2 too with
`min_version = "1.2"`, at the cost said in `_contexts`): both sides present a certificate that chains to the CA, and the HMAC challenge runs
inside the encrypted channel as before. Names are checked at the application level, where the
link says who it is: a server accepts a client only if the certificate names the name the link
claims in its `auth` (a host claiming host-a must present host-a's certificate), and a client
accepts a server only if its certificate names the name the server gives in its challenge.
Hostnames and addresses are not checked (the CA is the cluster's own: membership is the check).

The terminal link can have TLS too (`terminals = true`): a server certificate, and terminals'
certificates optional; a terminal that presents one must log on with a name it names.

A SIGHUP's `reload()` reads the three files once (copies in a private directory: files
replaced meanwhile cannot mix), checks them, and builds new contexts from them; only if all of
that worked are they put in use, else the ones in use stay untouched. Listeners keep the context
they were made with: its SNI callback, which OpenSSL calls at every handshake (with or without a
server name), hands the connection the current one. (Loading new files into the contexts in use
instead kept a certificate of the old key type beside the new one, and a load that failed half
way left a context with a certificate and no key.) Established connections are not touched.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import ssl
import stat
import tempfile
import weakref
from dataclasses import dataclass, replace
from typing import Any

from hsb.fsutil import path_problem
from hsb.plural import span

MIN_VERSION = ssl.TLSVersion.TLSv1_2  # what a client offers at least (a server may ask for more)
SERVER_MIN = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}  # `[tls] min_version`


class TLSError(Exception):
    """A certificate, key or CA file that cannot be used: the message names it and the fix."""


@dataclass
class TLSFiles:
    ca_file: str
    cert_file: str
    key_file: str
    min_version: str = "1.3"  # the listeners' least TLS version (`[tls] min_version`)
    # hsbcpd's `[tls] terminal_ca_file`: the CAs whose terminal certificates the terminal
    # listener takes ("": those of ca_file); trusted there only, never on the host or admin links
    terminal_ca_file: str = ""

    def named(self) -> list[tuple[str, str]]:
        """(key, path) of each file given, as `[tls]` names them."""
        keys = ("ca_file", "cert_file", "key_file", "terminal_ca_file")
        return [(k, getattr(self, k)) for k in keys if getattr(self, k)]


class _Passphrase(Exception):
    """OpenSSL asked for the key's passphrase (raised by `_no_passphrase`: never a prompt)."""


def _no_passphrase() -> bytes:
    # without a password callback OpenSSL prompts on the terminal (a daemon's SIGHUP would wait
    # on it, and under systemd it fails as EINVAL, which says nothing)
    raise _Passphrase


def load_chain(ctx: ssl.SSLContext, cert_file: str, key_file: str | None) -> None:
    """`ctx.load_cert_chain` that never prompts: a key protected by a passphrase is a TLSError."""
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except _Passphrase:
        key = key_file or cert_file
        raise TLSError(
            f"tls.key_file: {key} is protected by a passphrase; hsb needs a key without one, readable only by its user"
            f" (openssl pkey -in {key} -out {key}.plain, then chmod 600 and use that file)"
        ) from None


def _file_problem(label: str, path: str) -> str | None:
    why = path_problem(path)  # (a NUL: os.stat would raise ValueError)
    if why is not None:
        return f"tls.{label}: {path!r} {why}; give a plain file path"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"tls.{label}: {path} does not exist (hsbctl tls init --dir DIR makes a CA and certificates)"
    except PermissionError:
        return f"tls.{label}: {path} cannot be reached by this user (permission denied on it or a folder above it); give the daemon's user access"
    except OSError as exc:
        return f"tls.{label}: {path} cannot be read ({exc.strerror or exc})"
    if not stat.S_ISREG(st.st_mode):
        return f"tls.{label}: {path} is not a regular file; give the path of a PEM file"
    if not os.access(path, os.R_OK):
        return f"tls.{label}: {path} cannot be read by this user (permission denied); give the daemon's user read access"
    return None


def check_files(f: TLSFiles, reloads: bool = True) -> list[str]:
    """Every problem with these files, each with its fix (the config check and the start), at
    once: each check runs when the files it reads can be read, whatever the others found; the
    line of a file that cannot be read names the checks that wait for it. `reloads`: a daemon's
    files, loaded again on SIGHUP (else hsbctl's, read at every command)."""
    errors, readable = [], set()
    for label, path in f.named():
        problem = _file_problem(label, path)
        if problem is None:
            readable.add(label)
        else:
            errors.append(problem + _waiting(label, f))
    mode = _key_mode(f.key_file)  # (a key there but not readable by this user has a mode too)
    if mode is not None and mode & (stat.S_IRWXG | stat.S_IRWXO):
        errors.append(f"tls.key_file: {f.key_file} is accessible by group or others (mode {stat.S_IMODE(mode):o}); run 'chmod 600 {f.key_file}'")
    if {"cert_file", "key_file"} <= readable:
        errors += _pair_problems(f)
    for label, cas in (("ca_file", f.ca_file), ("terminal_ca_file", f.terminal_ca_file)):
        if label not in readable:
            continue
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cas)
        except (ssl.SSLError, OSError) as exc:
            errors.append(f"tls.{label}: {cas} is not a CA certificate file ({exc})" + _waiting(label, f))
            readable.discard(label)
    if "cert_file" in readable:
        left = expires_in(f.cert_file)
        if left is not None and left.total_seconds() <= 0:
            then = "and send SIGHUP" if reloads else "and put it in place"
            errors.append(
                f"tls.cert_file: {f.cert_file} expired {span(-left.total_seconds())} ago; make a new one (hsbctl tls init, or your CA) {then}"
            )
        errors += _chain_problems(f, "ca_file" in readable)
    return errors


def _waiting(label: str, f: TLSFiles) -> str:
    """What is not checked while file `label` cannot be used: said on its line."""
    if label == "cert_file":
        return "; its key, its dates and its CA are checked once it can be read"
    if label == "key_file":
        return f"; whether it goes with {f.cert_file} is checked once it can be read"
    if label == "ca_file":
        return f"; whether {f.cert_file} was issued by a CA in it is checked once it can be read"
    return ""


def _key_mode(key_file: str) -> int | None:
    try:
        st = os.stat(key_file)
    except (OSError, ValueError):
        return None  # (said by _file_problem)
    return st.st_mode if stat.S_ISREG(st.st_mode) else None


def _pair_problems(f: TLSFiles) -> list[str]:
    """The certificate and the key load, without a prompt, and go together."""
    try:
        load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), f.cert_file, f.key_file)
    except TLSError as exc:
        return [str(exc)]
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return [f"tls.cert_file/key_file: {f.cert_file} does not go with {f.key_file}; use the key the certificate was made for"]
        return [
            f"tls.cert_file/key_file: {f.cert_file} or {f.key_file} is not a PEM certificate or key ({exc.reason or exc});"
            " give PEM files (openssl x509 -inform der -in CERT -out CERT.pem converts a DER certificate)"
        ]
    except OSError as exc:
        return [f"tls: cannot read {f.cert_file} or {f.key_file}: {exc}"]
    return []


def _chain_problems(f: TLSFiles, with_ca: bool) -> list[str]:
    """The daemon's own certificate must be in date and (`with_ca`: ca_file is a CA file)
    issued by a CA of ca_file: the other daemons, which trust that file, refuse it otherwise,
    and only when they next connect (a reload that put it in use would show nothing until a
    failover)."""
    try:
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature

        with open(f.cert_file, "rb") as fh:
            chain = x509.load_pem_x509_certificates(fh.read())
    except (OSError, ValueError, ImportError):
        return []  # unreadable as PEM here: the load of the pair said why
    leaf, now = chain[0], dt.datetime.now(dt.UTC)
    errors = []
    if leaf.not_valid_before_utc > now:
        errors.append(
            f"tls.cert_file: {f.cert_file} is not valid until {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC;"
            " check this machine's clock, or make the certificate again"
        )
    if not with_ca:
        return errors  # (ca_file's line says this waits for it)
    try:
        with open(f.ca_file, "rb") as fh:
            cas = x509.load_pem_x509_certificates(fh.read())
    except (OSError, ValueError):
        return errors  # (its load as a CA file said why)

    def issued(child: Any, parent: Any) -> bool:
        try:
            child.verify_directly_issued_by(parent)
            return True
        except (ValueError, TypeError, InvalidSignature):
            return False

    cert: Any = leaf
    for _ in chain:  # up through the intermediates after it in cert_file, to a CA of ca_file
        if any(issued(cert, ca) for ca in cas):
            return errors
        cert = next((c for c in chain[1:] if issued(cert, c)), None)
        if cert is None:
            break
    errors.append(
        f"tls.cert_file: {f.cert_file} was not issued by a CA in {f.ca_file}: the other daemons, which trust that file,"
        " would refuse it; make the certificate with that CA (hsbctl tls init --dir DIR), or give the CA that made it"
    )
    return errors


def not_after(cert_file: str) -> dt.datetime | None:
    """The certificate's expiry (UTC), or None if it cannot be read."""
    try:
        from cryptography import x509

        with open(cert_file, "rb") as fh:
            cert = x509.load_pem_x509_certificate(fh.read())
        return cert.not_valid_after_utc
    except (OSError, ValueError, ImportError):
        return None


# the expiry of the certificate each server context presents (weak: a context reloaded away goes)
_SERVING_NOT_AFTER: weakref.WeakKeyDictionary[ssl.SSLContext, dt.datetime | None] = weakref.WeakKeyDictionary()


def own_expired(ctx: ssl.SSLContext) -> str:
    """If the certificate a server context presents has expired, how long ago (as `span` says
    it), else "": a client that then gives up during the handshake most likely refused it so."""
    na = _SERVING_NOT_AFTER.get(ctx)
    if na is None:
        return ""
    past = (dt.datetime.now(dt.UTC) - na).total_seconds()
    return span(past) if past > 0 else ""


def expires_in(cert_file: str) -> dt.timedelta | None:
    na = not_after(cert_file)
    return None if na is None else na - dt.datetime.now(dt.UTC)


def _contexts(f: TLSFiles) -> tuple[ssl.SSLContext, ssl.SSLContext, ssl.SSLContext]:
    """New server, terminal-server and client contexts loaded from `f`."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    terminal_server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for ctx in (server, terminal_server, client):
        ctx.minimum_version = MIN_VERSION if ctx is client else SERVER_MIN[f.min_version]
        load_chain(ctx, f.cert_file, f.key_file)
        ctx.load_verify_locations(f.terminal_ca_file or f.ca_file if ctx is terminal_server else f.ca_file)
    client.check_hostname = False  # names are checked against what the link says (module docstring)
    client.verify_mode = ssl.CERT_REQUIRED
    server.verify_mode = ssl.CERT_REQUIRED
    terminal_server.verify_mode = ssl.CERT_OPTIONAL
    for ctx in (server, terminal_server):
        # no session tickets: a session resumed from one made before a reload would skip the
        # certificates now in use (a CA taken out would still be trusted). TLS 1.3 resumes only
        # from tickets; a TLS 1.2 client can also resume by session id (OpenSSL's server cache,
        # 300 s, which `ssl` cannot turn off): hence TLS 1.3 only by default (`min_version`).
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
        # (TLS 1.2, if allowed: a client may not make us run handshakes over and over on one
        # connection, with no deadline; TLS 1.3 has no renegotiation)
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    return server, terminal_server, client


class TLS:
    """One process's TLS: its contexts, made at start and made anew at each reload. `server`
    and `terminal_server` are the listeners' (kept: they hand each handshake the current ones),
    `client` is the current client context."""

    def __init__(self, files: TLSFiles, terminals: bool = False, pem: dict[str, bytes] | None = None, reloads: bool = True) -> None:
        """Loaded from a private copy of the files (`pem`: of these bytes instead: what a worker
        before this one loaded, hsb.cp.supervise.keep_tls), so that what is kept for a worker
        forked again is what was loaded. Raises TLSError naming what is wrong with the files
        (`reloads`: check_files')."""
        errors, loaded = _load(files, pem, reloads)
        if loaded is None:
            raise TLSError("; ".join(errors))
        self.files = files  # what a reload reads
        self.terminals = terminals
        self.server, self.terminal_server, self.client, self.not_after, names, self.pem = loaded
        self.names = sorted(names)  # (what is in use now, as not_after: not the file, which may be newer)
        self._current = (self.server, self.terminal_server)
        self.server.sni_callback = self._to_current(0)
        self.terminal_server.sni_callback = self._to_current(1)
        self.loaded_at = dt.datetime.now(dt.UTC)

    def _to_current(self, i: int) -> Any:
        def pick(sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
            cur = self._current[i]
            if sslobj.context is not cur:
                sslobj.context = cur

        return pick

    def reload(self) -> list[str]:
        """The certificate files again, into new contexts that new connections use; the
        problems instead, if the files are not usable (then nothing changes)."""
        errors, loaded = _load(self.files, None)
        if loaded is None:
            return errors
        server, terminal_server, client, new_after, names, new_pem = loaded
        self._current = (server, terminal_server)
        old, self.client = self.client, client
        if _default_client is old:  # this process's links connect with it: the new one from now on
            set_default_client(client)
        self.not_after, self.names, self.pem = new_after, sorted(names), new_pem
        self.loaded_at = dt.datetime.now(dt.UTC)
        return []

    def status(self) -> dict[str, Any]:
        na = self.not_after
        left = None if na is None else (na - dt.datetime.now(dt.UTC)).total_seconds() / 86400
        return {
            "enabled": True,
            "cert_file": self.files.cert_file,
            "names": self.names,
            "not_after": None if na is None else na.isoformat(),
            "days_left": None if left is None else round(left, 1),
            "terminals": self.terminals,
            "loaded_at": self.loaded_at.isoformat(),
        }


Loaded = tuple[ssl.SSLContext, ssl.SSLContext, ssl.SSLContext, "dt.datetime | None", set[str], dict[str, bytes]]


def _load(f: TLSFiles, pem: dict[str, bytes] | None, reloads: bool = True) -> tuple[list[str], Loaded | None]:
    """Contexts loaded from a private copy of `f`'s files (or of `pem`, their bytes as loaded
    before), each file read once, so that the bytes kept are the ones loaded: (problems, None),
    or ([], (server, terminal server, client, not_after, names, the bytes))."""
    tmp = tempfile.mkdtemp(prefix="hsb-tls-")  # mode 700: the key's copy is no one else's
    try:
        copy = replace(f, **{key: os.path.join(tmp, f"{key}.pem") for key, _ in f.named()})
        pairs = [(path, getattr(copy, key), key) for key, path in f.named()]
        got: dict[str, bytes] = {}
        try:
            for src, dst, key in pairs:
                if pem is None:
                    with open(src, "rb") as r:
                        data = r.read()
                else:
                    kept = pem.get(key)
                    if not isinstance(kept, bytes):
                        return [f"tls: the certificates kept by the worker before have no {key}"], None
                    data = kept
                got[key] = data
                with open(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as w:
                    w.write(data)
                if src == f.key_file and pem is None:
                    os.chmod(dst, stat.S_IMODE(os.stat(src).st_mode) & 0o777 or 0o600)  # its mode is checked too
        except OSError as exc:
            return [f"tls: cannot read {exc.filename or f.cert_file}: {exc.strerror or exc}"], None
        except ValueError:  # open() of a path with a NUL character in it
            bad = [f"tls.{key}" for key, path in f.named() if "\0" in path]
            return [f"tls: {', '.join(bad) or 'a path'} contains a NUL character; give plain file paths"], None
        names = {dst: src for src, dst, _ in pairs}
        errors = check_files(copy, reloads)
        if errors:
            out = []
            for e in errors:
                for c, real in names.items():
                    e = e.replace(c, real)
                out.append(e)
            return out, None
        try:
            server, terminal_server, client = _contexts(copy)
        except (ssl.SSLError, OSError, ValueError, TLSError) as exc:
            return [f"tls: the files could not be loaded ({exc})"], None
        na = not_after(copy.cert_file)
        for ctx in (server, terminal_server):  # (what a refused handshake says of our own certificate)
            _SERVING_NOT_AFTER[ctx] = na
        return [], (server, terminal_server, client, na, file_names(copy.cert_file), got)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_names(cert_file: str) -> set[str]:
    try:
        from cryptography import x509

        with open(cert_file, "rb") as fh:
            cert = x509.load_pem_x509_certificate(fh.read())
    except (OSError, ValueError, ImportError):
        return set()
    return _names_of(cert)


def _names_of(cert: Any) -> set[str]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    names = {str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names.update(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    return names


def names_der(der: bytes) -> set[str]:
    from cryptography import x509

    return _names_of(x509.load_der_x509_certificate(der))


def peer_names(transport: Any) -> set[str] | None:
    """The names in the certificate the other side presented; None on a plain connection, an
    empty set if it presented none. (A client's view: asyncio's TLS transport.)"""
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is None:
        return None
    der = sslobj.getpeercert(binary_form=True)
    if not der:
        return set()
    return names_der(der)


def reload_tls(t: TLS | None, name: str | None = None) -> bool:
    """SIGHUP: the certificate files again (logged either way); established links stay. True if
    the new ones are in use. `name`: the daemon's (`[cp] name`, `[host] name`): new files that
    do not name it are taken, as at start, but `tls_reloaded` is then a warning that says so
    (the other daemons will refuse it at their next handshake), as `--check-config` does."""
    if t is None:
        return False
    import structlog

    log = structlog.get_logger("hsb.tls")
    try:
        errors = t.reload()
    except Exception as exc:  # noqa: BLE001 - whatever it is, the contexts in use stay and the daemon goes on
        errors = [f"tls: reload failed: {type(exc).__name__}: {exc}"]
    if errors:
        log.error("tls_reload_failed", errors=errors, msg="the certificates in use stay; fix the files and send SIGHUP again")
        return False
    else:
        st = t.status()
        said: dict[str, Any] = {
            "cert": st["cert_file"],
            "names": st["names"],
            "not_after": st["not_after"],
            "msg": "new connections use these; established ones are kept",
        }
        wrong = misnamed(t, name)
        if wrong:
            said["warning"] = wrong
            log.warning("tls_reloaded", **said)
        else:
            log.info("tls_reloaded", **said)
        return True


def name_problem(cert_file: str, names: Any, name: str | None) -> str:
    """What is wrong if the certificate `cert_file` (naming `names`) does not name the daemon
    (`name`, its `[cp] name` or `[host] name`), with the fix; "" if it does. The other daemons
    check it against that name at every handshake (docs/tls.md §2). `--check-config` warns with
    it (hsb.cli), the start and a reload log it (`misnamed`)."""
    if name is None or name in names:
        return ""
    return (
        f"{cert_file} names {', '.join(sorted(names)) or 'nobody'}, not this daemon's name {name!r}:"
        f" the other daemons will refuse it at the handshake; use a certificate that names {name!r}"
        f" (hsbctl tls init --dir DIR --names {name},...)"
    )


def misnamed(t: TLS, name: str | None) -> str:
    """`name_problem` of the certificate `t` has loaded: not refused at the start or a reload (as
    `--check-config` only warns), but logged, with SIGHUP after the fix."""
    wrong = name_problem(t.files.cert_file, t.names, name)
    return f"{wrong} and send SIGHUP" if wrong else ""


def log_misnamed(t: TLS | None, name: str) -> None:
    """At the start: `tls_certificate_misnamed` if the certificate does not name the daemon."""
    wrong = "" if t is None else misnamed(t, name)
    if t is not None and wrong:
        import structlog

        structlog.get_logger("hsb.tls").warning("tls_certificate_misnamed", cert=t.files.cert_file, warning=wrong)


_default_client: ssl.SSLContext | None = None


def set_default_client(ctx: ssl.SSLContext | None) -> None:
    """The client context this process's links use unless told otherwise (its own certificate)."""
    global _default_client
    _default_client = ctx


def default_client() -> ssl.SSLContext | None:
    return _default_client
