"""Key material of a prolink node: identity, bundles, signatories, rotation, revocation, TLS.

Unlike ``protocol``, this package reads and writes files (private keys mode
0600, optionally passphrase-encrypted); like ``protocol``, it never reads the
clock: every function where time matters takes ``now``.
"""

from ._files import (
    DEFAULT_SCRYPT,
    KEY_FILE_FORMAT,
    KeyFileError,
    ScryptParams,
    read_decryption_key,
    read_private_key,
    read_signing_key,
    read_tls_key,
    write_private_key,
    write_tls_key,
)
from ._identity import (
    DEFAULT_KEY_LIFETIME,
    DEFAULT_TLS_LIFETIME,
    Identity,
    IdentityError,
    export_bundle,
    generate_identity,
    import_bundle,
    import_bundle_update,
    issued_revocations,
    load_bundle_self,
    load_identity,
    recorded_bundle_version,
    renew_tls_cert,
    revoke_key,
    rotate_node_keys,
)
from ._signatories import Signatory, add_signatory, list_signatories, load_signatory
from ._storage import storage_key
from ._tls import client_ssl_context, peer_party, server_ssl_context

__all__ = [
    "DEFAULT_KEY_LIFETIME",
    "DEFAULT_SCRYPT",
    "DEFAULT_TLS_LIFETIME",
    "KEY_FILE_FORMAT",
    "Identity",
    "IdentityError",
    "KeyFileError",
    "ScryptParams",
    "Signatory",
    "add_signatory",
    "client_ssl_context",
    "export_bundle",
    "generate_identity",
    "import_bundle",
    "import_bundle_update",
    "issued_revocations",
    "list_signatories",
    "load_bundle_self",
    "load_identity",
    "load_signatory",
    "peer_party",
    "read_decryption_key",
    "read_private_key",
    "read_signing_key",
    "read_tls_key",
    "recorded_bundle_version",
    "renew_tls_cert",
    "revoke_key",
    "rotate_node_keys",
    "server_ssl_context",
    "storage_key",
    "write_private_key",
    "write_tls_key",
]
