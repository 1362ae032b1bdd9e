#!/bin/sh
# As the official image does: a redis-server started without a configuration file listens
# on every address with protected mode off (the stack's network is its only client).
set -e
if [ "${1:-}" = redis-server ]; then
    shift
    set -- redis-server --protected-mode no "$@"
fi
exec "$@"
