# The Sentinel container of a managed Redis with Sentinel: finds the primary to watch, writes
# the configuration and runs redis-sentinel (extra arguments: "$@"). Environment as in
# common.sh, and SENTINEL_QUORUM, SENTINEL_DOWN_AFTER_MS, SENTINEL_FAILOVER_TIMEOUT_MS.

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
conf="$REDIS_CONF_DIR/sentinel.conf"
umask 077
{
    echo "port $SENTINEL_PORT"
    echo "dir $REDIS_CONF_DIR"
    echo "sentinel myid $myid"
    echo "sentinel resolve-hostnames yes"
    echo "sentinel announce-hostnames yes"
    echo "sentinel announce-ip $REDIS_SELF"
    echo "sentinel announce-port $SENTINEL_PORT"
    echo "requirepass $QUOTED_PASSWORD"
    echo "sentinel sentinel-pass $QUOTED_PASSWORD"
    echo "sentinel monitor $REDIS_MASTER_NAME $primary $REDIS_PORT $SENTINEL_QUORUM"
    echo "sentinel auth-pass $REDIS_MASTER_NAME $QUOTED_PASSWORD"
    echo "sentinel down-after-milliseconds $REDIS_MASTER_NAME $SENTINEL_DOWN_AFTER_MS"
    echo "sentinel failover-timeout $REDIS_MASTER_NAME $SENTINEL_FAILOVER_TIMEOUT_MS"
    echo "sentinel parallel-syncs $REDIS_MASTER_NAME 1"
} >"$conf"
exec redis-sentinel "$conf" "$@"
