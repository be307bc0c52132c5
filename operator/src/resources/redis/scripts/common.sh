# Shared by the Redis and the Sentinel container of a managed Redis with Sentinel (see
# sentinel.rs, which puts this file before node.sh or sentinel.sh in the container's command).
# Environment: REDIS_SELF (this pod's host name as the others reach it), REDIS_PEERS (every
# Redis pod's host name, this one included, in ordinal order), REDIS_PORT, SENTINEL_PORT,
# REDIS_MASTER_NAME, REDIS_PASSWORD_FILE (the password), REDIS_AUTH_CONF (the Secret's
# `requirepass "<password>"` line, the password quoted for a Redis configuration file),
# REDIS_CONF_DIR (writable), REDIS_DATA_DIR.
set -eu

REDIS_PASSWORD=$(cat "$REDIS_PASSWORD_FILE")
QUOTED_PASSWORD=$(sed -n 's/^requirepass //p' "$REDIS_AUTH_CONF")
if [ -z "$QUOTED_PASSWORD" ]; then
    echo "starling-redis: $REDIS_AUTH_CONF holds no requirepass line" >&2
    exit 1
fi
waited=0

log() {
    echo "starling-redis: $*" >&2
}

# Logs now and then while a loop waits (every 10th second).
log_waiting() {
    if [ $((waited % 10)) -eq 0 ]; then
        log "$* (waited ${waited}s)"
    fi
}

# cli HOST PORT ARGS...: one redis-cli call, at most 3 s, the password from the environment
# (never on a command line).
cli() {
    cli_host=$1
    cli_port=$2
    shift 2
    REDISCLI_AUTH="$REDIS_PASSWORD" timeout 3 redis-cli --no-auth-warning -h "$cli_host" \
        -p "$cli_port" --raw "$@" 2>/dev/null
}

first_peer() {
    set -- $REDIS_PEERS
    echo "$1"
}

# The primary named by the sentinel with the newest configuration epoch (a sentinel that was
# away may still name an older one); prints nothing when no sentinel knows one.
sentinel_primary() {
    best_epoch=-1
    best_host=
    for peer in $REDIS_PEERS; do
        answer=$(cli "$peer" "$SENTINEL_PORT" sentinel master "$REDIS_MASTER_NAME") || continue
        set -- $(printf '%s\n' "$answer" |
            awk 'NR % 2 == 1 { key = $0; next }
                 key == "ip" { host = $0 }
                 key == "config-epoch" { epoch = $0 }
                 END { if (host != "" && epoch ~ /^[0-9]+$/) print epoch, host }')
        [ $# -eq 2 ] || continue
        if [ "$1" -gt "$best_epoch" ]; then
            best_epoch=$1
            best_host=$2
        fi
    done
    if [ -n "$best_host" ]; then
        echo "$best_host"
    fi
}

# role HOST: the role a Redis reports (master or slave), nothing when it does not answer.
role() {
    cli "$1" "$REDIS_PORT" info replication | tr -d '\r' | sed -n 's/^role://p' || true
}

# When no sentinel knows a primary: the peer whose Redis runs as primary; "wait" when a peer's
# Redis runs as a replica (it holds data: only the sentinels may choose a primary now); nothing
# when no other Redis answers (the cluster is starting).
running_primary() {
    replica_seen=
    for peer in $REDIS_PEERS; do
        [ "$peer" = "$REDIS_SELF" ] && continue
        case $(role "$peer") in
        master)
            echo "$peer"
            return 0
            ;;
        slave) replica_seen=yes ;;
        esac
    done
    if [ -n "$replica_seen" ]; then
        echo wait
    fi
}
