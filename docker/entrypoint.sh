#!/bin/sh
# Container entrypoint for Parcel.
#
# With no arguments: check that the configuration file exists and is valid, then run the bot
# in the foreground (exec, so it receives SIGTERM from `docker stop` directly).
# With arguments: run `parcel-bot ARGS...` instead, for the admin commands, e.g.
#   docker compose run --rm parcel log --config /config/config.yaml --format json
#
# PARCEL_CONFIG: path of the configuration file (default /config/config.yaml).
set -eu

PARCEL_CONFIG="${PARCEL_CONFIG:-/config/config.yaml}"

if [ "$#" -gt 0 ]; then
    exec parcel-bot "$@"
fi

if [ ! -e "$PARCEL_CONFIG" ]; then
    echo "parcel: no configuration file at $PARCEL_CONFIG;" \
        "mount one there (e.g. -v ./config.yaml:/config/config.yaml:ro) or set PARCEL_CONFIG" >&2
    exit 2
fi
if [ ! -f "$PARCEL_CONFIG" ]; then
    echo "parcel: $PARCEL_CONFIG is not a regular file" >&2
    exit 2
fi
if [ ! -r "$PARCEL_CONFIG" ]; then
    echo "parcel: $PARCEL_CONFIG is not readable by user $(id -un 2>/dev/null || id -u)" >&2
    exit 2
fi

status=0
output=$(parcel-bot check-config --config "$PARCEL_CONFIG" 2>&1) || status=$?
if [ "$status" -ne 0 ]; then
    if [ -n "$output" ]; then
        printf '%s\n' "$output" >&2
    fi
    echo "parcel: the configuration check failed (exit status $status); not starting" >&2
    exit "$status"
fi
printf '%s\n' "$output"

exec parcel-bot run --config "$PARCEL_CONFIG"
