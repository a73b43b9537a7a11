"""ed25519 signatures for plugins (formats and rules in docs/signing.md).

- A single file `x.wasm` is signed by `x.wasm.sig`: the 64-byte signature, hex, over the
  SHA-256 digest of the file (GoatFlow's format).
- A directory may instead carry GoatFlow's per-binary sidecar, `<binary>.sig` or
  `<module>.wasm.sig` next to its executable or module: it covers that one file only.
  `plugin.sig` is the stronger format and wins when both are there.
- A directory is signed by `plugin.sig`, the same way, over the SHA-256 digest of its
  canonical file list: one line `<sha256 hex>  <relative/path>\\n` per regular file (every
  file but plugin.sig itself, hidden ones included), sorted by path. An added, removed or
  changed file changes the list and breaks the signature. Symlinks and other special files
  are refused: a signature cannot vouch for what a link points to.

Verification works on bytes already in memory (or on a private copy), so what was verified
is exactly what runs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .errors import SignatureError
from .inputs import MODULE_MAX_BYTES, SIGNATURE_MAX_BYTES, describe, read_regular

#: The signature files, named here only: a plugin directory's signature inside it, and a
#: single file's (`x.wasm`, `x.zip`) beside it as `x.wasm.sig`.
DIR_SIGNATURE = "plugin.sig"
SIG_SUFFIX = ".sig"


def sidecar(path: Path) -> Path:
    """The signature file of a single-file plugin (`x.wasm` -> `x.wasm.sig`)."""
    return path.with_name(path.name + SIG_SUFFIX)


# -- keys ------------------------------------------------------------------------------------


def _decode_key_text(text: str) -> bytes | None:
    text = text.strip()
    try:
        if len(text) in (64, 128) and all(c in "0123456789abcdefABCDEF" for c in text):
            return bytes.fromhex(text)
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return None


def parse_public_keys(text: str, *, source: str = "<keys>") -> list[Ed25519PublicKey]:
    """One 32-byte ed25519 public key per line, hex or base64; `#` starts a comment."""
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        raw = _decode_key_text(line)
        if raw is None or len(raw) != 32:
            raise SignatureError(f"{source}:{n}: not a 32-byte ed25519 public key in hex or "
                                 "base64")
        keys.append(Ed25519PublicKey.from_public_bytes(raw))
    if not keys:
        raise SignatureError(f"{source}: no public keys found")
    return keys


def load_trusted_keys(items: Iterable[str | os.PathLike[str] | bytes | Ed25519PublicKey]
                      ) -> list[Ed25519PublicKey]:
    """Public keys from file paths, raw 32-byte keys, or key objects (several: rotation)."""
    keys: list[Ed25519PublicKey] = []
    for item in items:
        if isinstance(item, Ed25519PublicKey):
            keys.append(item)
        elif isinstance(item, bytes):
            if len(item) != 32:
                raise SignatureError(f"a raw public key must be 32 bytes, got {len(item)}")
            keys.append(Ed25519PublicKey.from_public_bytes(item))
        else:
            path = Path(item)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise SignatureError(f"cannot read trusted key file: {exc}",
                                     path=path) from None
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            if len(data) == 32 and (text is None or _decode_key_text(text) is None):
                # a raw 32-byte key, as GoatFlow's loader takes them
                keys.append(Ed25519PublicKey.from_public_bytes(data))
                continue
            if text is None:
                raise SignatureError("trusted key file is neither text keys nor one raw "
                                     "32-byte key", path=path)
            keys.extend(parse_public_keys(text, source=str(path)))
    return keys


def generate_keypair(out: Path) -> tuple[Path, Path]:
    """Write a new private key to `out` (PEM, mode 0600) and its public key to `out.pub`."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = out.with_name(out.name + ".pub")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    for path in (out, pub):  # never overwrite a key, private or public
        if path.exists() or path.is_symlink():
            raise FileExistsError(f"{path} exists")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    fd = os.open(pub, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(f"# plughost ed25519 public key\n{raw.hex()}\n")
    return out, pub


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """A private key: PEM (what `keygen` writes), or a hex/base64 32-byte seed (or the
    64-byte seed+public form Go's ed25519 uses)."""
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (TypeError, ValueError) as exc:
            raise SignatureError(f"cannot use this private key: {exc} (passphrase-protected "
                                 "keys are not supported)", path=path) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError("not an ed25519 private key", path=path)
        return key
    raw = _decode_key_text(data.decode("ascii", "replace"))
    if raw is None or len(raw) not in (32, 64):
        raise SignatureError("not an ed25519 private key (PEM, or hex/base64 seed)", path=path)
    return Ed25519PrivateKey.from_private_bytes(raw[:32])


# -- what gets signed ------------------------------------------------------------------------


def file_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass(frozen=True)
class DirectoryListing:
    """The canonical file list of a directory plugin, and the bytes it was made from."""

    text: bytes
    files: dict[str, bytes]  # relative path -> content (what was hashed)

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.text).digest()


def list_directory(root: Path) -> DirectoryListing:
    """Read every file of a plugin directory into memory and build its canonical list."""
    files: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                raise SignatureError(f"contains a symlink ({name}); signed plugins cannot",
                                     path=os.path.join(dirpath, name))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if rel == DIR_SIGNATURE:
                continue
            if any(ord(c) < 32 or c == "\x7f" for c in rel):
                # a newline in a name could forge lines of the canonical list
                raise SignatureError(f"file name {rel!r} has control characters; signed "
                                     "plugins cannot", path=full)
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                raise SignatureError(f"contains {rel}, which is not a regular file; signed "
                                     "plugins cannot", path=full)
            try:
                files[rel] = read_regular(full, MODULE_MAX_BYTES)
            except OSError as exc:
                raise SignatureError(f"cannot read {rel}: {describe(exc)}", path=full) from None
    lines = [f"{hashlib.sha256(data).hexdigest()}  {rel}\n" for rel, data in sorted(
        files.items(), key=lambda kv: kv[0].encode())]
    return DirectoryListing("".join(lines).encode(), files)


# -- signing and verifying -------------------------------------------------------------------


def sign_digest(key: Ed25519PrivateKey, digest: bytes) -> str:
    return key.sign(digest).hex() + "\n"


def parse_signature(text: bytes, *, path: str | Path, plugin: str | None) -> bytes:
    try:
        sig = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise SignatureError("signature file is not hex", plugin=plugin, path=path) from None
    if len(sig) != 64:
        raise SignatureError(f"signature is {len(sig)} bytes, expected 64", plugin=plugin,
                             path=path)
    return sig


def verify_digest(digest: bytes, signature: bytes, keys: list[Ed25519PublicKey], *,
                  plugin: str | None, path: str | Path) -> int:
    """Return the index of the trusted key that signed `digest`; raise if none did."""
    for i, key in enumerate(keys):
        try:
            key.verify(signature, digest)
            return i
        except InvalidSignature:
            continue
    raise SignatureError("signature does not match the content under any trusted key "
                         "(tampered, or signed with another key)", plugin=plugin, path=path)


def sign_path(path: Path, key: Ed25519PrivateKey) -> Path:
    """Sign a .wasm/.zip file (writes `<file>.sig`) or a plugin directory (`plugin.sig`)."""
    if path.is_dir():
        out = path / DIR_SIGNATURE
        out.write_text(sign_digest(key, list_directory(path).digest))
    else:
        out = sidecar(path)
        out.write_text(sign_digest(key, file_digest(read_regular(path, MODULE_MAX_BYTES))))
    return out


def directory_signature(directory: Path, entry: Path | None) -> tuple[Path, bool] | None:
    """The signature file a plugin dir carries and whether it covers the whole directory:
    `plugin.sig` (everything), else the entry's GoatFlow sidecar (that file only)."""
    if (directory / DIR_SIGNATURE).exists():
        return directory / DIR_SIGNATURE, True
    if entry is not None and sidecar(entry).exists():
        return sidecar(entry), False
    return None


def coverage(path: Path, sig_path: Path, whole: bool) -> str:
    """What a signature vouches for, in words (for `plughost verify` and the logs)."""
    if not path.is_dir():
        return f"{sig_path.name} covers {path.name}"
    if whole:
        return f"{sig_path.name} covers every file of the directory, plugin.yaml included"
    return (f"{sig_path.name} covers {sig_path.name.removesuffix(SIG_SUFFIX)} only, not "
            f"plugin.yaml or the other files (sign the directory for {DIR_SIGNATURE})")


def verify_path(path: Path, keys: list[Ed25519PublicKey], *, plugin: str | None = None,
                entry: Path | None = None) -> tuple[int, str]:
    """Verify a file or directory on disk (the `verify` command); returns the key index
    and what the signature covers. `entry`: a directory's executable or module."""
    if path.is_dir():
        found = directory_signature(path, entry)
        sig_path, whole = found if found is not None else (path / DIR_SIGNATURE, True)
        digest = list_directory(path).digest if whole else file_digest(
            read_regular(sig_path.with_name(sig_path.name.removesuffix(SIG_SUFFIX)),
                         MODULE_MAX_BYTES))
    else:
        sig_path, whole = sidecar(path), True
        digest = file_digest(read_regular(path, MODULE_MAX_BYTES))
    try:
        sig_text = read_regular(sig_path, SIGNATURE_MAX_BYTES)
    except FileNotFoundError:
        raise SignatureError(f"unsigned: {sig_path.name} not found", plugin=plugin,
                             path=path) from None
    sig = parse_signature(sig_text, path=sig_path, plugin=plugin)
    return (verify_digest(digest, sig, keys, plugin=plugin, path=path),
            coverage(path, sig_path, whole))
