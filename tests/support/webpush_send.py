#!/usr/bin/env python3
"""Sends one web push with pywebpush (a sender we did not write) and prints the answer.

Usage: webpush_send.py SUBSCRIPTION_JSON VAPID_PRIVATE_KEY SUB PAYLOAD CA_FILE

SUBSCRIPTION_JSON is what PushSubscription.toJSON() gives; VAPID_PRIVATE_KEY is the raw
32-byte P-256 key in base64url; CA_FILE is the PEM the fake's TLS certificate chains to.
Prints one line of JSON: {"status", "location", "body", "aud"} (`aud` as pywebpush set it).
Used by tests/mock_webpush.rs.
"""

import json
import sys

import requests
from pywebpush import WebPushException, webpush


def main() -> None:
    subscription = json.loads(sys.argv[1])
    vapid_key, sub, payload, ca_file = sys.argv[2:6]
    session = requests.Session()
    # Ignore REQUESTS_CA_BUNDLE and proxy variables: they would override `verify` below and
    # route a loopback request through a proxy.
    session.trust_env = False
    session.verify = ca_file
    # pywebpush fills in aud (from the endpoint) and exp (12 hours) in this dict.
    claims = {"sub": sub}
    try:
        response = webpush(
            subscription,
            data=payload,
            vapid_private_key=vapid_key,
            vapid_claims=claims,
            ttl=60,
            timeout=10,
            requests_session=session,
        )
    except WebPushException as e:
        # Raised for any status above 202; the answer is still what the test wants to see.
        if e.response is None:
            raise
        response = e.response
    print(
        json.dumps(
            {
                "status": response.status_code,
                "location": response.headers.get("Location"),
                "body": response.text,
                "aud": claims.get("aud"),
            }
        )
    )


if __name__ == "__main__":
    main()
