"""Apply the realm to a Keycloak server: `python -m auth --server URL`.

Reads PUBLIC_URL (the gateway's https origin), KEYCLOAK_ADMIN_USER and
KEYCLOAK_ADMIN_PASSWORD from the environment. Production realms get neither the
command-line client nor demo users; the local stack launcher adds those itself.
"""

from __future__ import annotations

import argparse
import os
import sys

from .provision import ProvisioningError, load_realm, provision


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m auth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--server", required=True, help="Keycloak base URL, e.g. http://kc:8080/auth"
    )
    args = parser.parse_args(argv)
    missing = [
        k
        for k in ("PUBLIC_URL", "KEYCLOAK_ADMIN_USER", "KEYCLOAK_ADMIN_PASSWORD")
        if not os.environ.get(k)
    ]
    if missing:
        print(f"auth: missing environment variable(s): {', '.join(missing)}", file=sys.stderr)
        return 2
    realm = load_realm(os.environ["PUBLIC_URL"], local_dev=False)
    try:
        provision(
            args.server,
            os.environ["KEYCLOAK_ADMIN_USER"],
            os.environ["KEYCLOAK_ADMIN_PASSWORD"],
            realm,
        )
    except ProvisioningError as exc:
        print(f"auth: {exc}", file=sys.stderr)
        return 1
    print(f"auth: realm {realm['realm']} applied")
    return 0


if __name__ == "__main__":
    sys.exit(main())
