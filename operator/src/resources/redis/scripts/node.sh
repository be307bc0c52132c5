# The Redis container of a managed Redis with Sentinel: finds the primary, writes the
# configuration and runs redis-server as the primary or its replica (extra arguments: "$@").
# Environment as in common.sh, and REDIS_PRIMARY_WAIT (seconds a restarted primary with data
# on its volume waits for the sentinels to promote a replica before it comes back as primary),
# REDIS_PERSISTENT (yes when the data directory is a claim that outlives the pod) and
# REDIS_BOOTSTRAP_SILENCE (seconds pod 0 must find nothing else running before it starts a new
# group as its first primary).

# Data this Redis may come back as primary with: only on a persistent volume (a replica's
# synchronisation leaves a dump.rdb in an emptyDir too, which must never count).
has_data() {
    [ "$REDIS_PERSISTENT" = yes ] || return 1
    [ -s "$REDIS_DATA_DIR/dump.rdb" ] || [ -n "$(ls -A "$REDIS_DATA_DIR/appendonlydir" 2>/dev/null)" ]
}

silent=0

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
        # A new group: nothing else answers. One silent round is not enough (a slow DNS
        # answer, a network not yet set up for this pod): pod 0 starting empty as primary of a
        # group that holds data would have the replicas copy its emptiness.
        if [ -z "$primary" ]; then
            silent=$((silent + 1))
        else
            silent=0
        fi
        if [ -z "$primary" ] && [ "$REDIS_SELF" = "$(first_peer)" ] && [ "$silent" -ge "$REDIS_BOOTSTRAP_SILENCE" ]; then
            primary=$REDIS_SELF
            log "no sentinel knows a primary and no other Redis answered for ${silent} rounds: starting as the first primary"
            break
        fi
        log_waiting "no sentinel knows a primary yet; waiting for $(first_peer) or the sentinels"
    fi
    sleep 1
    waited=$((waited + 1))
done

# Without persistence nothing on the data directory is this Redis' own: a snapshot left by an
# earlier synchronisation must not be loaded.
if [ "$REDIS_PERSISTENT" != yes ]; then
    rm -f "$REDIS_DATA_DIR/dump.rdb"
fi

conf="$REDIS_CONF_DIR/redis.conf"
umask 077
{
    printf '%s\n' "port $REDIS_PORT"
    printf '%s\n' "dir $REDIS_DATA_DIR"
    printf '%s\n' "requirepass $QUOTED_PASSWORD"
    printf '%s\n' "masterauth $QUOTED_PASSWORD"
    printf '%s\n' "replica-announce-ip $REDIS_SELF"
    printf '%s\n' "replica-announce-port $REDIS_PORT"
    if [ "$primary" != "$REDIS_SELF" ]; then
        printf '%s\n' "replicaof $primary $REDIS_PORT"
    fi
} >"$conf"
exec redis-server "$conf" "$@"
