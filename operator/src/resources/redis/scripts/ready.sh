# The Redis container's readiness probe: ready as the primary, or as a replica linked to its
# primary and done loading (a replica still copying the data set is not ready: a rolling
# update or a drain must not count it, nor may the sentinels be handed a primary to replace
# while it is the only other copy). Environment as in common.sh, and REDIS_LOCAL (this pod's
# Redis from inside the pod).

info=$(cli "$REDIS_LOCAL" "$REDIS_PORT" info replication | tr -d '\r')
case "$info" in
*role:master*) exit 0 ;;
esac
printf '%s\n' "$info" | grep -q '^master_link_status:up$'
