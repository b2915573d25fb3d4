#!/bin/sh
# Container entrypoint for Parcel.
#
# With no arguments: check that the configuration file exists and is valid, then run the bot
# in the foreground (exec, so it receives SIGTERM from `docker stop` directly).
# With arguments: run `parcel-bot ARGS...` instead, for the admin commands, e.g.
#   docker compose run --rm parcel log --config /config/config.yaml --format json
#
# PARCEL_CONFIG: path of the configuration file (default /config/config.yaml).
# PARCEL_DATA: the data volume (default /data). It must be a directory owned by the user the
# container runs as (parcel): the bot keeps its keys, its store and the checked copies of
# customers' files there. A volume owned by anyone else is refused; one the bot owns but that
# others may read (an older image made it 0755) is narrowed to 0700 first.
set -eu

PARCEL_CONFIG="${PARCEL_CONFIG:-/config/config.yaml}"
PARCEL_DATA="${PARCEL_DATA:-/data}"

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

me="$(id -un 2>/dev/null || id -u)"
if [ ! -d "$PARCEL_DATA" ]; then
    echo "parcel: no data directory at $PARCEL_DATA; mount a volume there" \
        "(e.g. -v parcel-data:$PARCEL_DATA)" >&2
    exit 2
fi
owner="$(stat -c %u "$PARCEL_DATA")"
if [ "$owner" != "$(id -u)" ]; then
    echo "parcel: $PARCEL_DATA is owned by uid $owner, not by $me (uid $(id -u)) who runs" \
        "the bot; refusing to keep its keys there. Give the volume to $me, e.g.:" \
        "docker run --rm -u 0 -v <volume>:$PARCEL_DATA --entrypoint chown <image>" \
        "-R $(id -u):$(id -g) $PARCEL_DATA" >&2
    exit 2
fi
mode="$(stat -c %a "$PARCEL_DATA")"
if [ "$mode" != "700" ]; then
    if ! chmod 0700 "$PARCEL_DATA" || [ "$(stat -c %a "$PARCEL_DATA")" != "700" ]; then
        echo "parcel: $PARCEL_DATA has mode $mode and cannot be made private (0700);" \
            "not starting" >&2
        exit 2
    fi
    echo "parcel: $PARCEL_DATA had mode $mode; made it private (700)"
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
