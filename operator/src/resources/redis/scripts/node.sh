# The Redis container of a managed Redis with Sentinel: finds the primary, writes the
# configuration and runs redis-server as the primary or its replica (extra arguments: "$@").
# Environment as in common.sh, and REDIS_PRIMARY_WAIT (seconds a restarted primary with data
# on its volume waits for the sentinels to promote a replica before it comes back as primary).

has_data() {
    [ -s "$REDIS_DATA_DIR/dump.rdb" ] || [ -n "$(ls -A "$REDIS_DATA_DIR/appendonlydir" 2>/dev/null)" ]
}

while :; do
    primary=$(sentinel_primary)
    if [ -n "$primary" ] && [ "$primary" != "$REDIS_SELF" ]; then
        log "the sentinels name $primary the primary: starting as its replica"
        break
    fi
    if [ "$primary" = "$REDIS_SELF" ]; then
        # This pod was the primary and its Redis restarted. Coming back as primary would hand
        # the replicas what this pod holds now (nothing, without persistence), so the sentinels
        # must promote a replica first; they do once this Redis stays away.
        if [ "$waited" -ge "$REDIS_PRIMARY_WAIT" ] && has_data; then
            log "the sentinels promoted no replica in ${waited}s: coming back as primary with the data on this volume"
            break
        fi
        log_waiting "the sentinels still name this pod the primary; waiting for them to promote a replica"
    else
        primary=$(running_primary)
        if [ -n "$primary" ] && [ "$primary" != wait ]; then
            log "no sentinel knows a primary; $primary runs as one: starting as its replica"
            break
        fi
        if [ -z "$primary" ] && [ "$REDIS_SELF" = "$(first_peer)" ]; then
            primary=$REDIS_SELF
            log "no sentinel knows a primary and no other Redis answers: starting as the first primary"
            break
        fi
        log_waiting "no sentinel knows a primary yet; waiting for $(first_peer) or the sentinels"
    fi
    sleep 1
    waited=$((waited + 1))
done

conf="$REDIS_CONF_DIR/redis.conf"
umask 077
{
    echo "port $REDIS_PORT"
    echo "dir $REDIS_DATA_DIR"
    echo "requirepass $QUOTED_PASSWORD"
    echo "masterauth $QUOTED_PASSWORD"
    echo "replica-announce-ip $REDIS_SELF"
    echo "replica-announce-port $REDIS_PORT"
    if [ "$primary" != "$REDIS_SELF" ]; then
        echo "replicaof $primary $REDIS_PORT"
    fi
} >"$conf"
exec redis-server "$conf" "$@"
