# The Redis container's preStop hook: when this pod's Redis is the primary, hands the role to a
# replica before the pod stops, so that a planned stop (a rolling update, a drain, a deleted
# pod) fails over at once rather than after the sentinels' down-after time, and loses nothing:
# writes are paused first (they wait, and fail once this Redis stops, so their clients retry
# on the new primary), a replica catches up, then a sentinel of another pod promotes it (this
# pod's own sentinel is stopping too). Environment as in common.sh, and HANDOVER_PAUSE_MS.

if [ "$(role "$REDIS_SELF")" != master ]; then
    exit 0
fi
log "this pod's Redis is the primary: pausing writes and handing over to a replica"
cli "$REDIS_SELF" "$REDIS_PORT" client pause "$HANDOVER_PAUSE_MS" write >/dev/null || true

# Whether a replica holds everything this primary wrote.
caught_up() {
    info=$(cli "$REDIS_SELF" "$REDIS_PORT" info replication | tr -d '\r')
    offset=$(printf '%s\n' "$info" | sed -n 's/^master_repl_offset://p')
    [ -n "$offset" ] || return 1
    for replica in $(printf '%s\n' "$info" | sed -n 's/^slave[0-9]*:.*offset=\([0-9]*\).*/\1/p'); do
        if [ "$replica" -ge "$offset" ]; then
            return 0
        fi
    done
    return 1
}

tries=0
until caught_up; do
    tries=$((tries + 1))
    if [ "$tries" -ge 100 ]; then
        log "no replica caught up in 10 s; stopping without a hand-over"
        exit 0
    fi
    sleep 0.1
done

asked=
for peer in $REDIS_PEERS; do
    [ "$peer" = "$REDIS_SELF" ] && continue
    if [ "$(cli "$peer" "$SENTINEL_PORT" sentinel failover "$REDIS_MASTER_NAME")" = OK ]; then
        asked=$peer
        break
    fi
done
if [ -z "$asked" ]; then
    log "no other sentinel took the failover; stopping without a hand-over"
    exit 0
fi

tries=0
while [ "$tries" -lt 200 ]; do
    primary=$(sentinel_primary)
    if [ -n "$primary" ] && [ "$primary" != "$REDIS_SELF" ]; then
        log "the sentinel of $asked promoted $primary"
        exit 0
    fi
    tries=$((tries + 1))
    sleep 0.1
done
log "no replica promoted in 20 s; stopping anyway"
