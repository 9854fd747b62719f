"""Decrypts web push bodies with the Python `http_ece` package (Mozilla's reference for
RFC 8188), so the test proves our encryption against an implementation that is not ours.

Reads JSON lines on stdin: {"private_key": <base64url P-256 scalar>, "auth": <base64url>,
"body": <base64url>}; writes one line per input: the plaintext in base64url, or "ERROR <why>".
"""
import base64
import json
import sys

import http_ece
from cryptography.hazmat.primitives.asymmetric import ec


def b64d(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64e(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


for line in sys.stdin:
    if not line.strip():
        continue
    item = json.loads(line)
    try:
        key = ec.derive_private_key(
            int.from_bytes(b64d(item["private_key"]), "big"), ec.SECP256R1()
        )
        plain = http_ece.decrypt(
            b64d(item["body"]),
            private_key=key,
            auth_secret=b64d(item["auth"]),
            version="aes128gcm",
        )
        print(b64e(plain), flush=True)
    except Exception as e:  # report, the Rust side asserts
        print("ERROR", repr(e), flush=True)
