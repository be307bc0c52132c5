# The Redis container's preStop hook: when this pod's Redis is the primary, hands the role to a
# replica before the pod stops, so that a planned stop (a rolling update, a drain, a deleted
# pod) fails over at once rather than after the sentinels' down-after time, and loses nothing:
# writes are paused first (they wait, and fail once this Redis stops, so their clients retry
# on the new primary), a replica catches up, then a sentinel of another pod promotes it (this
# pod's own sentinel is stopping too). Best effort, within HANDOVER_DEADLINE seconds; when it
# cannot hand over, the pod stops anyway and the sentinels fail over after their down-after
# time. Environment as in common.sh, REDIS_LOCAL (this pod's Redis from inside the pod),
# HANDOVER_PAUSE_MS (longer than the pod's grace period, so
# that no write lands once a replica caught up) and HANDOVER_DEADLINE.

deadline=$(($(date +%s) + HANDOVER_DEADLINE))
time_left() {
    [ "$(date +%s)" -lt "$deadline" ]
}

info=$(cli "$REDIS_LOCAL" "$REDIS_PORT" info replication | tr -d '\r')
case "$info" in
*role:master*) ;;
*) exit 0 ;;
esac
if printf '%s\n' "$info" | grep -q '^connected_slaves:0$'; then
    log "this pod's Redis is the primary but has no replica to hand over to"
    exit 0
fi
log "this pod's Redis is the primary: pausing writes and handing over to a replica"
if [ "$(cli "$REDIS_LOCAL" "$REDIS_PORT" client pause "$HANDOVER_PAUSE_MS" write)" != OK ]; then
    log "writes could not be paused; stopping without a hand-over"
    exit 0
fi

# Whether a replica holds everything this primary wrote (the pause also stops the primary's
# pings to its replicas, so the offset stands still).
caught_up() {
    info=$(cli "$REDIS_LOCAL" "$REDIS_PORT" info replication | tr -d '\r')
    offset=$(printf '%s\n' "$info" | sed -n 's/^master_repl_offset://p')
    [ -n "$offset" ] || return 1
    for replica in $(printf '%s\n' "$info" | sed -n 's/^slave[0-9]*:.*offset=\([0-9]*\).*/\1/p'); do
        if [ "$replica" -ge "$offset" ]; then
            return 0
        fi
    done
    return 1
}

until caught_up; do
    if ! time_left; then
        log "no replica caught up in time; stopping without a hand-over"
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

while time_left; do
    primary=$(sentinel_primary)
    if [ -n "$primary" ] && [ "$primary" != "$REDIS_SELF" ]; then
        log "the sentinel of $asked promoted $primary"
        exit 0
    fi
    sleep 0.1
done
log "no replica promoted in time; stopping anyway"
