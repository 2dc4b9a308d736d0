#!/usr/bin/env python3
"""Verifies a Tessera access token with PyJWT, an independent JOSE implementation.

The key is looked up by the token's `kid` in the live JWKS, as a resource server would; the
signature, `exp`, `iss` and `aud` are checked, and the claims a Tessera access token always
carries are required. Prints the claims as JSON; on any failure prints the reason to stderr
and exits 1.

    python3 interop/pyjwt_verify.py --jwks-url URL --issuer ISS --audience AUD --alg ALG TOKEN

Needs PyJWT with its crypto extra (`pip install 'PyJWT[crypto]==2.10.1'`).
"""

import argparse
import json
import sys

import jwt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jwks-url", required=True)
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--audience", required=True)
    parser.add_argument("--alg", required=True, help="the one algorithm accepted")
    parser.add_argument("token")
    args = parser.parse_args()
    try:
        header = jwt.get_unverified_header(args.token)
        if header.get("typ") != "at+jwt":
            raise jwt.InvalidTokenError(f"typ is {header.get('typ')!r}, not 'at+jwt' (RFC 9068)")
        key = jwt.PyJWKClient(args.jwks_url, cache_keys=False).get_signing_key_from_jwt(args.token)
        claims = jwt.decode(
            args.token,
            key.key,
            algorithms=[args.alg],
            audience=args.audience,
            issuer=args.issuer,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
        )
    except jwt.PyJWTError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"header": header, "claims": claims}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
