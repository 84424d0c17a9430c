"""The workstation side of end-to-end encryption: CA directory, sealing, the `pli` CLI, the SDK.

:class:`Client` is the documented API for practice software (REQ-LPS, docs/sdk.md).
"""

from pli.client.sdk import (
    ApiError,
    AuthenticationRequired,
    Client,
    ClientError,
    OutgoingLetter,
    PendingUpload,
    PolicyRefused,
    ReadMessage,
    RefusedMessage,
    SendResult,
    UploadInterrupted,
)

__all__ = [
    "ApiError",
    "AuthenticationRequired",
    "Client",
    "ClientError",
    "OutgoingLetter",
    "PendingUpload",
    "PolicyRefused",
    "ReadMessage",
    "RefusedMessage",
    "SendResult",
    "UploadInterrupted",
]
