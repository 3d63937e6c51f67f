#!/bin/sh
# xaiserve container entrypoint (runs under tini, which forwards SIGTERM to it).
#
#   (no args) | serve [FLAGS...] | -FLAG ...   start the server: exec xaiserve serve ... FLAGS
#   COMMAND [ARGS...]                          an executable on PATH (sh, python, xaiserve-client
#                                              ...) runs as is; anything else is an xaiserve
#                                              subcommand: exec xaiserve COMMAND ARGS
#
# Configuration is environment variables (XAISERVE_<SETTING>, read by the server itself) and
# flags. The four settings below are also passed as flags so `ps` shows where the server listens
# and what it serves; flags given to the container come after them and win.
# `exec` replaces this shell, so the server is tini's direct child: SIGTERM reaches it, it goes
# NOT_SERVING, drains for XAISERVE_DRAIN_SECONDS and exits 0.
set -eu

: "${XAISERVE_HOST:=0.0.0.0}"
: "${XAISERVE_PORT:=50051}"
: "${XAISERVE_METRICS_PORT:=9464}"
: "${XAISERVE_MODELS_DIR:=/models}"
: "${TMPDIR:=/tmp}"
export XAISERVE_HOST XAISERVE_PORT XAISERVE_METRICS_PORT XAISERVE_MODELS_DIR TMPDIR
XAISERVE_BIN="${XAISERVE_BIN:-xaiserve}"

if [ "$#" -gt 0 ]; then
    case "$1" in
        serve) shift ;;
        -*) ;;
        *)
            if command -v "$1" >/dev/null 2>&1; then
                exec "$@"
            fi
            exec "$XAISERVE_BIN" "$@"
            ;;
    esac
fi

if [ ! -d "$XAISERVE_MODELS_DIR" ]; then
    echo "xaiserve-entrypoint: warning: model repository $XAISERVE_MODELS_DIR is not a directory" >&2
fi
for dir in "${XAISERVE_DATA_DIR:-}" "${XAISERVE_ARTIFACTS:-}"; do
    if [ -n "$dir" ]; then
        mkdir -p "$dir" 2>/dev/null || \
            echo "xaiserve-entrypoint: warning: cannot create $dir" >&2
    fi
done

exec "$XAISERVE_BIN" serve \
    --host "$XAISERVE_HOST" \
    --port "$XAISERVE_PORT" \
    --metrics-port "$XAISERVE_METRICS_PORT" \
    --models "$XAISERVE_MODELS_DIR" \
    "$@"
