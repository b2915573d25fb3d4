#!/usr/bin/env python3
"""A stand-in for clamdscan: same exit codes, same output shape, only knows the EICAR file.

Usage: fake_scanner.py FILE. Prints "FILE: Eicar-Test-Signature FOUND" and exits 1 when the
file contains the EICAR test string, prints "FILE: OK" and exits 0 otherwise, and prints
"FILE: No such file or directory. ERROR" on stderr and exits 2 when the file cannot be read.
Reads the file in chunks, so any size works.
"""

from __future__ import annotations

import sys

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
CHUNK = 1 << 16


def contains_eicar(path: str) -> bool:
    """Whether the file holds the EICAR string anywhere (also across chunk boundaries)."""
    tail = b""
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            if EICAR in tail + chunk:
                return True
            tail = chunk[-(len(EICAR) - 1) :]
    return False


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: fake_scanner.py FILE", file=sys.stderr)
        return 2
    path = argv[1]
    try:
        infected = contains_eicar(path)
    except FileNotFoundError:
        print(f"{path}: No such file or directory. ERROR", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{path}: {exc.strerror}. ERROR", file=sys.stderr)
        return 2
    if infected:
        print(f"{path}: Eicar-Test-Signature FOUND")
        return 1
    print(f"{path}: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
