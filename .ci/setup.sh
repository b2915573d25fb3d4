#!/usr/bin/env bash
# Prepare a fresh machine for Parcel: libmagic (Debian), a virtualenv in .venv, the package
# with its test extras. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "Parcel needs Python 3.11 or newer; $("$PYTHON" --version 2>&1) found" >&2
    exit 1
fi

if ! "$PYTHON" -c 'import ctypes.util, sys; sys.exit(0 if ctypes.util.find_library("magic") else 1)'; then
    echo "installing libmagic1 (file type detection)" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    if command -v apt-get >/dev/null 2>&1; then
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libmagic1 >/dev/null
    else
        echo "libmagic is missing: install it with your system's package manager" >&2
        exit 1
    fi
fi

# The PostgreSQL tests (and the benchmark's PostgreSQL figures) run a throwaway cluster of
# Debian's server binaries in a temporary directory (bot/devdb.py); nothing else uses them.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    echo "installing postgresql (server binaries for the PostgreSQL tests)" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # The package's own cluster is not wanted: tests start theirs.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi

# Tesseract reads images, and poppler's tools PDF documents, for payment card numbers
# (policy.card_numbers, bot/attachments/ocr.py and pdf.py); the tests render text in DejaVu
# and Liberation fonts for them to read.
missing=""
command -v tesseract >/dev/null 2>&1 || missing="$missing tesseract-ocr"
command -v pdftoppm >/dev/null 2>&1 || missing="$missing poppler-utils"
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing="$missing fonts-dejavu-core"
[ -e /usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf ] \
    || missing="$missing fonts-liberation"
if [ -n "$missing" ]; then
    echo "installing$missing (OCR for card numbers, and fonts for its tests)" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.parcel-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi

# The real-browser test (tests/integration/test_element_web.py) and docs/screenshots.py drive
# ../shared/element-web in Debian's Chromium with Playwright from npm. Installed wherever that
# bundle is (and always in CI); Playwright's own browser download is off: Debian's is used.
if [ "${CI:-}" = "true" ] || [ -d ../shared/element-web ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    missing=""
    [ -x /usr/bin/chromium ] || missing="$missing chromium"
    [ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || missing="$missing fonts-noto-color-emoji"
    command -v zstd >/dev/null 2>&1 || missing="$missing zstd"
    command -v npm >/dev/null 2>&1 || missing="$missing nodejs npm"
    if [ -n "$missing" ]; then
        echo "installing$missing (browser test)" >&2
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
    fi
    if [ ! -d tests/browser/node_modules/playwright-core ] \
        || [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
        (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
    fi
fi
