# The Sentinel container of a managed Redis with Sentinel: finds the primary to watch, writes
# the configuration and runs redis-sentinel (extra arguments: "$@"). Environment as in
# common.sh, and SENTINEL_QUORUM, SENTINEL_DOWN_AFTER_MS, SENTINEL_FAILOVER_TIMEOUT_MS.

# A sentinel restarted in the same pod (its emptyDir kept) goes on with the state it wrote:
# its epochs and votes must not be forgotten mid-election.
conf="$REDIS_CONF_DIR/sentinel.conf"
if [ -s "$conf" ]; then
    log "going on with $conf"
    exec redis-sentinel "$conf" "$@"
fi

while :; do
    primary=$(sentinel_primary)
    if [ -n "$primary" ] && [ "$primary" != "$REDIS_SELF" ]; then
        break
    fi
    # Named by the sentinels or not: this pod's Redis is the primary if it runs as one (say,
    # only this container restarted).
    if [ "$(role "$REDIS_SELF")" = master ]; then
        primary=$REDIS_SELF
        break
    fi
    if [ -z "$primary" ]; then
        primary=$(running_primary)
        if [ -n "$primary" ] && [ "$primary" != wait ]; then
            break
        fi
        log_waiting "no sentinel knows a primary and no Redis runs as one yet"
    else
        log_waiting "the sentinels still name this pod's Redis the primary, which is not running; waiting for them to promote a replica"
    fi
    sleep 1
    waited=$((waited + 1))
done
log "watching $primary as the primary"

# The same id on every start of this pod's sentinel, so its peers never count it twice.
myid=$(printf '%s/%s' "$REDIS_MASTER_NAME" "$REDIS_SELF" | sha1sum | cut -c1-40)
umask 077
{
    printf '%s\n' "port $SENTINEL_PORT"
    printf '%s\n' "dir $REDIS_CONF_DIR"
    printf '%s\n' "sentinel myid $myid"
    printf '%s\n' "sentinel resolve-hostnames yes"
    printf '%s\n' "sentinel announce-hostnames yes"
    printf '%s\n' "sentinel announce-ip $REDIS_SELF"
    printf '%s\n' "sentinel announce-port $SENTINEL_PORT"
    printf '%s\n' "requirepass $QUOTED_PASSWORD"
    printf '%s\n' "sentinel sentinel-pass $QUOTED_PASSWORD"
    printf '%s\n' "sentinel monitor $REDIS_MASTER_NAME $primary $REDIS_PORT $SENTINEL_QUORUM"
    printf '%s\n' "sentinel auth-pass $REDIS_MASTER_NAME $QUOTED_PASSWORD"
    printf '%s\n' "sentinel down-after-milliseconds $REDIS_MASTER_NAME $SENTINEL_DOWN_AFTER_MS"
    printf '%s\n' "sentinel failover-timeout $REDIS_MASTER_NAME $SENTINEL_FAILOVER_TIMEOUT_MS"
    printf '%s\n' "sentinel parallel-syncs $REDIS_MASTER_NAME 1"
} >"$conf"
exec redis-sentinel "$conf" "$@"
