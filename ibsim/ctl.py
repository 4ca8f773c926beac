"""Command line for the control interface.

    python -m ibsim.ctl --control-port 4100 state
    python -m ibsim.ctl --control-port 4100 drop_client client_id=10
    python -m ibsim.ctl --control-port 4100 set_price symbol=BYND price=4.20
    python -m ibsim.ctl --control-port 4100 restart down_seconds=30

Arguments are key=value; values are read as JSON when they parse (numbers, true/false).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

from ibsim.faults import Faults


def call(port: int, command: str, kwargs: dict[str, object], timeout: float = 10.0) -> dict:
    """One control request; returns the decoded reply. Raises OSError when unreachable."""
    if command in ("state", "health"):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/{command}")
    else:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/fault/{command}",
            data=json.dumps(kwargs).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b'{"ok": false}')


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    commands = sorted(Faults.COMMANDS | {"state", "health"})
    parser = argparse.ArgumentParser(prog="python -m ibsim.ctl", description=__doc__.split("\n")[0])
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("command", choices=commands)
    parser.add_argument("args", nargs="*", help="key=value arguments")
    parser.error = lambda message: _fail(message)  # type: ignore[method-assign]
    opts = parser.parse_args(argv)
    kwargs: dict[str, object] = {}
    for item in opts.args:
        key, sep, value = item.partition("=")
        if not sep:
            return _fail(f"argument {item!r} is not key=value")
        kwargs[key] = _value(value)
    try:
        reply = call(opts.control_port, opts.command, kwargs)
    except OSError as exc:
        return _fail(f"no simulated gateway control on port {opts.control_port}: {exc}")
    print(json.dumps(reply, indent=2, default=str))
    return 0 if reply.get("ok") else 1


def _fail(message: str) -> int:
    print(f"ibsim.ctl: error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    sys.exit(main())
