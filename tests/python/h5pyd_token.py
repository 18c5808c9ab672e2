"""h5pyd against a reducer whose reads need the token (`[security] protect_reads`): refused
without it, read with it passed as h5pyd's `api_key` (sent as `Authorization: Bearer`).

    h5pyd_token.py http://HOST:PORT/ TOKEN
"""

import sys

import h5pyd


def main():
    endpoint, token = sys.argv[1:]
    try:
        h5pyd.File("/", "r", endpoint=endpoint)
    except OSError as error:
        print(f"refused without the token: {error}")
    else:
        raise SystemExit("opened without the token")
    f = h5pyd.File("/", "r", endpoint=endpoint, api_key=token)
    rows = f["beam/event_number"].shape[0]
    assert rows > 0, rows
    print(f"read with the token: beam/event_number has {rows} rows")


if __name__ == "__main__":
    main()
