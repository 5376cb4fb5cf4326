"""Signed binary cache entries, as Nix signs its binary caches: `push` signs what it publishes with an ed25519 key
the team holds; a machine trusts the public keys in its configuration and refuses an entry no trusted key
signed. A registry you do not control can then serve only what your keys signed.

Keys are PEM files, as `openssl genpkey -algorithm ed25519 -out cache.key` and
`openssl pkey -in cache.key -pubout -out cache.pub` make them."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from qemuprov.errors import UserError

SIGNATURE = "org.qemuprov.signature"  # annotations of the OCI manifest
SIGNER = "org.qemuprov.signer"


def statement(cache_key: str, config_digest: str, layer_digest: str) -> bytes:
    """What a signature covers: the key and the digests of both blobs (so, all their bytes)."""
    return f"qemuprov binary cache entry v1\n{cache_key}\n{config_digest}\n{layer_digest}\n".encode()


def load_private(path: Path) -> Ed25519PrivateKey:
    key = _load(path, serialization.load_pem_private_key, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"{path}: not an ed25519 private key", hint="openssl genpkey -algorithm ed25519 -out FILE")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    key = _load(path, serialization.load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise UserError(f"{path}: not an ed25519 public key", hint="openssl pkey -in PRIVATE -pubout -out FILE")
    return key


def _load(path: Path, loader: object, **kwargs: object) -> object:
    try:
        return loader(path.read_bytes(), **kwargs)  # type: ignore[operator]
    except OSError as exc:
        raise UserError(f"{path}: cannot read the key ({exc.strerror})") from None
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a PEM key ({exc})") from None


def fingerprint(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + base64.b64encode(raw).decode()


def sign(key: Ed25519PrivateKey, message: bytes) -> dict[str, str]:
    """The annotations that carry the signature."""
    return {SIGNATURE: base64.b64encode(key.sign(message)).decode(), SIGNER: fingerprint(key.public_key())}


def verify(annotations: dict[str, str], message: bytes, trusted: list[Ed25519PublicKey]) -> str | None:
    """None where a trusted key signed the message; else why not."""
    signature, signer = annotations.get(SIGNATURE), annotations.get(SIGNER)
    if not signature:
        return "it is not signed"
    for key in trusted:
        if fingerprint(key) == signer:
            try:
                key.verify(base64.b64decode(signature), message)
            except (InvalidSignature, ValueError):
                return f"its signature by {signer} does not match its content"
            return None
    return f"it is signed by {signer}, which is not among the trusted keys"
