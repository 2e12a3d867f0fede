"""The one exception tree of the project.

::

    SocpError                      base of everything raised on purpose
    ├── ProtocolError              a peer's frame is wrong; carries the wire ERROR code to answer with
    │   ├── BadFrame               not JSON, missing or mistyped field, wrong sender      (BAD_FRAME)
    │   ├── TooLarge               frame above the size limit                             (TOO_LARGE)
    │   ├── UnknownType            ``type`` is not a SOCP frame type                      (UNKNOWN_TYPE)
    │   ├── InvalidSignature       transport or content signature does not verify        (INVALID_SIG)
    │   ├── BadKey                 weak/malformed key, or a key that contradicts a pin    (BAD_KEY)
    │   ├── StaleFrame             ``ts`` outside the replay window                       (STALE)
    │   ├── UserNotFound           recipient unknown                                      (USER_NOT_FOUND)
    │   ├── NameInUse              user id already connected here                         (NAME_IN_USE)
    │   ├── RateLimited            too many frames on one connection, or login attempts   (RATE_LIMITED)
    │   └── AuthFailed             wrong password at login (project extension)            (AUTH_FAILED)
    ├── CryptoError                local crypto failure (decryption, key file); never sent on the wire
    └── ConfigError                invalid configuration or bootstrap file

A ``ProtocolError`` fails the session that caused it, never the node: the shells turn it into an
``ERROR`` frame (and close the connection when ``fatal`` is true).
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """ERROR codes of SOCP v1.3 §9.5 plus this project's additions."""

    USER_NOT_FOUND = "USER_NOT_FOUND"
    INVALID_SIG = "INVALID_SIG"
    BAD_KEY = "BAD_KEY"
    TIMEOUT = "TIMEOUT"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    NAME_IN_USE = "NAME_IN_USE"
    BAD_FRAME = "BAD_FRAME"
    TOO_LARGE = "TOO_LARGE"
    RATE_LIMITED = "RATE_LIMITED"
    STALE = "STALE"
    AUTH_FAILED = "AUTH_FAILED"


class SocpError(Exception):
    """Base class of every exception the project raises on purpose."""


class ProtocolError(SocpError):
    """A peer sent something the protocol does not allow.

    ``code`` is the ERROR code to answer with, ``msg_ref`` names the offending frame when known,
    and ``fatal`` asks the shell to close the connection after answering.
    """

    code: ErrorCode = ErrorCode.BAD_FRAME
    fatal: bool = False

    def __init__(self, detail: str, *, msg_ref: str | None = None, fatal: bool | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.msg_ref = msg_ref
        if fatal is not None:
            self.fatal = fatal

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


class BadFrame(ProtocolError):
    """Not JSON, not an object, a missing or mistyped field, or a frame not allowed here."""

    code = ErrorCode.BAD_FRAME


class TooLarge(ProtocolError):
    """A frame above the configured size limit; the connection is closed."""

    code = ErrorCode.TOO_LARGE
    fatal = True


class UnknownType(ProtocolError):
    """A ``type`` that SOCP does not define."""

    code = ErrorCode.UNKNOWN_TYPE


class InvalidSignature(ProtocolError):
    """A transport ``sig`` or a ``content_sig`` that does not verify."""

    code = ErrorCode.INVALID_SIG


class BadKey(ProtocolError):
    """A key that is malformed, weaker than RSA-4096/e=65537, or contradicts a pinned key."""

    code = ErrorCode.BAD_KEY


class StaleFrame(ProtocolError):
    """A frame whose ``ts`` lies outside the replay window."""

    code = ErrorCode.STALE


class UserNotFound(ProtocolError):
    """The recipient is not known to be online anywhere in the network."""

    code = ErrorCode.USER_NOT_FOUND


class NameInUse(ProtocolError):
    """The user id is already connected to this server."""

    code = ErrorCode.NAME_IN_USE
    fatal = True


class RateLimited(ProtocolError):
    """The connection sent more frames than its rate limit allows; the frame is dropped."""

    code = ErrorCode.RATE_LIMITED


class AuthFailed(ProtocolError):
    """A login proof did not match the stored password verifier (project extension, PROTOCOL.md §9)."""

    code = ErrorCode.AUTH_FAILED


class CryptoError(SocpError):
    """A local cryptographic operation failed (decryption, key loading); never shown to peers."""


class ConfigError(SocpError):
    """Invalid configuration: flags, bootstrap file, data directory."""


ERROR_BY_CODE: dict[ErrorCode, type[ProtocolError]] = {
    cls.code: cls
    for cls in (BadFrame, TooLarge, UnknownType, InvalidSignature, BadKey, StaleFrame, UserNotFound,
                NameInUse, RateLimited, AuthFailed)
}
