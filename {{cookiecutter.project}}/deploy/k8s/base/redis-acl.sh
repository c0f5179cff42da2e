#!/bin/sh
# Prints Redis's users as config lines, for redis-server to read on stdin or from a tmpfs file:
# one ACL user per role, each with the password of its own secret file (SECRETS_DIR, default
# /run/secrets, files redis_<user>_password), so no password is on a command line or in an
# environment. `default` (secret redis_password) is kept for the health check and for admins.
# The command lists were found by running each role's real process (docs/secrets.md). A
# script's redis.call()s are checked against its caller's user too, hence e.g. TIME, LREM.
# Redis 7.0+ (selectors, %R~ read-only keys). Channels name database 0 (/0.): Celery's event
# and control channels carry the db number of REDIS_URL.
set -eu
dir=${SECRETS_DIR:-/run/secrets}
secret() {
  [ -s "$dir/$1" ] || { echo "acl.sh: $dir/$1 is missing or empty" >&2; exit 1; }
  cat "$dir/$1"
}
# Redis 7.2 added CLIENT SETINFO (sent by redis-py and go-redis at connect) and WAITAOF
# (durable publish); an older server refuses a rule naming a command it does not have.
case "$(redis-server --version)" in
  *v=7.0.* | *v=7.1.*) since72= ;;
  *) since72=yes ;;
esac
connect="+ping +select${since72:+ +client|setinfo}"
# A rule in parentheses is a selector (its own keys and commands): quoted for the parser.
user() {
  line="user $1 reset on >$(secret "redis_$1_password") $connect"
  shift
  for rule in "$@"; do
    case $rule in
      "("*) line="$line \"$rule\"" ;;
      *) line="$line $rule" ;;
    esac
  done
  echo "$line"
}

echo "requirepass $(secret redis_password)"

# Takes, records, acks and restores tasks (the library's Lua scripts), stores results and
# chord counters, dead-letters, sends events, answers control broadcasts; beat (RedBeat's
# schedule and lock) runs as this user too.
user worker '~* &*' \
  +blmove +brpop +lpush +rpush +lrange +lrem +ltrim +llen \
  +hset +hsetnx +hget +hdel +hgetall +hlen \
  +zadd +zrem +zrange +zrangebyscore +zscore +zcard +zcount +zpopmin +zrank \
  +sadd +srem +smembers +sismember \
  +get +set +mget +del +exists +expire +pexpire +pttl +incr +incrby \
  +publish +subscribe +unsubscribe +psubscribe +punsubscribe \
  +eval +evalsha +script\|load +script\|exists \
  +multi +exec +discard +watch +unwatch +info +time

# The producer CLI, the web API and the dead-letter tools: enqueue, read results and queue
# lengths, durable publish. It takes no task (no BLMOVE/BRPOP/LREM) and writes no result:
# it publishes task-sent events only and subscribes to results; SET/DEL only on group
# results and the durable-publish fence; the dead-letter hash only through its commands.
user producer '~* &/0.celeryev/*' \
  +lpush +sadd +get +mget +llen +publish +unsubscribe \
  +multi +exec +info ${since72:++waitaof} \
  "(&celery-task-meta-* +subscribe +unsubscribe)" \
  "(~celery-taskset-meta-* ~durable-publish:fence +set +del)" \
  "(~deadletter ~deadletter.index +hgetall +hget +hdel +zrem +evalsha +script|load)"

# Flower: events, control broadcasts (inspect, and its API's shutdown, revoke, rate limits),
# applying tasks, results; kombu also puts back a dead worker's tasks from any consumer.
user flower '~* &*' \
  +llen +lpush +rpush +brpop +get +mget +set +del +exists +hget +hdel \
  +sadd +srem +smembers +zadd +zrem +zrange +zrangebyscore \
  +publish +subscribe +unsubscribe +psubscribe +punsubscribe \
  +eval +evalsha +script\|load +script\|exists +multi +exec +discard +watch +unwatch +info +time

# The metrics exporter (monitoring profile): reads lengths, the oldest unacked delivery and
# INFO; receives task events. Writes no task data; for `inspect stats` (pool sizes) it may
# broadcast on the control channel and use its own reply queue and kombu's binding records.
user exporter '%R~* &/0.celeryev/* &/0.celery.pidbox' \
  +llen +hlen +hvals +zrange +get +info +multi +exec +discard \
  +psubscribe +punsubscribe +subscribe +unsubscribe \
  +publish \
  "(~*.reply.celery.pidbox ~_kombu.binding.reply.celery.pidbox ~_kombu.binding_permanent.reply.celery.pidbox ~_kombu.binding.celeryev ~_kombu.binding_deadlines +brpop +del +sadd +srem +evalsha +script|load +script|exists +zadd +zrangebyscore +zrem +exists +time)"

# KEDA's redis scaler: the type and length of a key, nothing else (no value, no write).
user keda '%R~*' +type +llen +hlen +scard +zcard
