"""``python -m ablator.engines.check DIGEST``: exit 0 when the ablator importable here is the code
the engine's artifact was rendered with (:func:`ablator.engines.common.package_digest`), else
say what differs and exit 1 (an error that would recur: engines do not retry it)."""

from __future__ import annotations

import socket
import sys

from ablator.engines.common import package_digest, package_dir


def main(argv: list[str]) -> int:
    """Compare this node's ablator with ``argv[0]``, the digest the artifact records."""
    wanted = argv[0] if argv else ""
    here = package_digest()
    if here == wanted:
        return 0
    print(
        f"ablator: {package_dir()} on {socket.gethostname()} is not the ablator this job was "
        f"rendered with (digest {here[:12]} here, {wanted[:12]} wanted); install the same ablator "
        "on every node (docs/engines.md) and submit again",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
