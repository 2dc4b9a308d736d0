"""Credentials for the load runs, obtained from a running Tessera over its public API only.

    setup.py BASE_URL OUT_DIR TOKENS

writes OUT_DIR/email, OUT_DIR/cookie (the session cookie's value), OUT_DIR/token (one access
token) and OUT_DIR/tokens (TOKENS distinct access tokens, from refresh rotation: each refresh
answers a new access token, as a client that refreshes would hold).
"""

import http.client
import json
import secrets
import sys
import urllib.parse

PASSWORD = "bench horse battery staple 2048"


def call(conn, method, path, body=None, form=False, headers=None):
    headers = dict(headers or {})
    if body is not None:
        if form:
            data = urllib.parse.urlencode(body)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
    else:
        data = None
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    payload = response.read()
    if response.status >= 300:
        sys.exit(f"{method} {path}: {response.status} {payload[:200]!r}")
    return response, (json.loads(payload) if payload else None)


def main():
    base, out, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    email = f"bench-{secrets.token_hex(6)}@example.com"
    call(conn, "POST", "/v1/users", {"email": email, "password": PASSWORD})

    response, _ = call(conn, "POST", "/v1/login", {"email": email, "password": PASSWORD})
    cookie = None
    for name, value in response.getheaders():
        if name.lower() == "set-cookie" and "session=" in value.split(";")[0]:
            cookie = value.split(";")[0].split("=", 1)[1]
    if not cookie:
        sys.exit("no session cookie in the login answer")

    _, grant = call(conn, "POST", "/oauth2/token",
                    {"grant_type": "password", "username": email, "password": PASSWORD},
                    form=True)
    tokens = [grant["access_token"]]
    refresh = grant["refresh_token"]
    while len(tokens) < count:
        _, pair = call(conn, "POST", "/oauth2/token",
                       {"grant_type": "refresh_token", "refresh_token": refresh}, form=True)
        tokens.append(pair["access_token"])
        refresh = pair["refresh_token"]
    if len(set(tokens)) != len(tokens):
        sys.exit("refresh rotation answered a token twice")

    for name, value in [("email", email), ("password", PASSWORD), ("cookie", cookie),
                        ("token", tokens[0]), ("tokens", "\n".join(tokens))]:
        with open(f"{out}/{name}", "w") as f:
            f.write(value + "\n")


if __name__ == "__main__":
    main()
