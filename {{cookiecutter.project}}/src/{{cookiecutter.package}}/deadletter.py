"""The dead-letter queue: tasks that failed for good wait here for a person.

    python -m {{ cookiecutter.package }}.deadletter list [--json]
    python -m {{ cookiecutter.package }}.deadletter requeue ID... | --all
    python -m {{ cookiecutter.package }}.deadletter purge ID... | --all

A task of this package that fails (out of retries, or a failure that is not retried) is
recorded in the Redis hash ``deadletter``, keyed by task id: name, arguments, queue,
exception, attempts. Keyed by id, a task that is run again after its worker died while
recording it overwrites its own entry: one entry per task, never two.

At most ``DEADLETTER_MAX`` entries are kept: recording one more drops the oldest (by failure
time, ``deadletter.index``) and counts them in ``deadletter.dropped`` (a metric and an alert).

``requeue`` sends an entry back to its queue under the same task id, then removes it, unless
the task already failed again and wrote a new entry meanwhile. A crash between the two steps
leaves the entry in place: a second requeue may run the task twice (at least once).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from celery import signals
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from {{ cookiecutter.package }}.celery_app import app
from {{ cookiecutter.package }}.settings import get_settings

logger = logging.getLogger(__name__)

KEY = "deadletter"
INDEX_KEY = "deadletter.index"  # task id -> failed_at: which entries are the oldest
DROPPED_KEY = "deadletter.dropped"  # entries dropped at the cap, ever
PACKAGE_TASKS = "{{ cookiecutter.package }}.tasks."

# Record entry ARGV[2] under id ARGV[1] (failed at ARGV[3]); keep the newest ARGV[4] entries.
# KEYS: the hash, its index, the dropped counter. Returns how many were dropped.
RECORD = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over <= 0 then return 0 end
local oldest = redis.call('ZPOPMIN', KEYS[2], over)
for i = 1, #oldest, 2 do redis.call('HDEL', KEYS[1], oldest[i]) end
redis.call('INCRBY', KEYS[3], over)
return over
"""

# Remove field ARGV[1] only while it still holds ARGV[2]: a requeued task that failed again
# since keeps its new entry. KEYS: the hash, its index.
DELETE_IF_UNCHANGED = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
    redis.call('ZREM', KEYS[2], ARGV[1])
    return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


@signals.task_failure.connect
def record(sender=None, task_id=None, exception=None, args=None, kwargs=None, **_):
    """In the worker, when a task fails for good (a retry is not a failure)."""
    if sender is None or not sender.name.startswith(PACKAGE_TASKS):
        return
    request = sender.request
    entry = {
        "id": task_id,
        "task": sender.name,
        "args": list(args or ()),
        "kwargs": dict(kwargs or {}),
        "queue": (request.delivery_info or {}).get("routing_key"),
        "exception": f"{type(exception).__name__}: {exception}",
        "attempts": (request.retries or 0) + 1,
        "failed_at": time.time(),
        "worker": request.hostname,
    }
    store(sender.backend.client, entry, get_settings().deadletter_max)


def store(client, entry: dict, keep: int) -> int:
    """Record ``entry``, keeping the newest ``keep``; returns how many old ones were dropped."""
    keys, argv = [KEY, INDEX_KEY, DROPPED_KEY], [entry["id"], json.dumps(entry)]
    dropped = client.eval(RECORD, len(keys), *keys, *argv, entry["failed_at"], keep)
    if dropped:
        logger.warning(
            "dead-letter queue full (DEADLETTER_MAX=%d): dropped the oldest %d", keep, dropped
        )
    return dropped


def entries() -> dict[str, str]:
    """Task id -> the entry as stored (JSON)."""
    raw = app.backend.client.hgetall(KEY)
    return {_text(k): _text(v) for k, v in raw.items()}


def requeue(selected: dict[str, str]) -> int:
    client = app.backend.client
    delete = client.register_script(DELETE_IF_UNCHANGED)
    for task_id, raw in selected.items():
        entry = json.loads(raw)
        app.send_task(
            entry["task"],
            args=entry["args"],
            kwargs=entry["kwargs"],
            task_id=task_id,
            queue=entry["queue"] or None,  # None: routed by task_routes
        )
        delete(keys=[KEY, INDEX_KEY], args=[task_id, raw])
    return len(selected)


def purge(selected: dict[str, str]) -> int:
    if not selected:
        return 0
    client = app.backend.client
    client.zrem(INDEX_KEY, *selected)
    return client.hdel(KEY, *selected)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


PROG = "python -m {{ cookiecutter.package }}.deadletter"
USAGE = "list [--json] | requeue ID...|--all | purge ID...|--all"


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line: what was wrong, then what is accepted.
        print(f"error: {message}; usage: {PROG} {USAGE}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = Parser(prog="deadletter", add_help=True)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    listing = commands.add_parser("list", help="show every entry")
    listing.add_argument("--json", action="store_true", help="print the entries as JSON")
    for name, what in (("requeue", "send back to its queue"), ("purge", "drop")):
        command = commands.add_parser(name, help=f"{what} the given entries")
        command.add_argument("ids", nargs="*", metavar="ID")
        command.add_argument("--all", action="store_true", help="every entry")
    args = parser.parse_args(argv)
    if args.command != "list" and bool(args.ids) == args.all:
        parser.error(f"{args.command} needs task ids or --all, not both")
    return args


def select(stored: dict[str, str], args: argparse.Namespace) -> dict[str, str]:
    if args.all:
        return stored
    unknown = [task_id for task_id in args.ids if task_id not in stored]
    if unknown:
        print(
            f"error: no dead-letter entry with id {', '.join(unknown)}; "
            "`list` shows the ids there are",
            file=sys.stderr,
        )
        raise SystemExit(1)
    return {task_id: stored[task_id] for task_id in args.ids}


def show(stored: dict[str, str], as_json: bool) -> None:
    rows = sorted((json.loads(raw) for raw in stored.values()), key=lambda e: e["failed_at"])
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("the dead-letter queue is empty")
    for entry in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["failed_at"]))
        call = ", ".join(
            [*map(repr, entry["args"]), *(f"{k}={v!r}" for k, v in entry["kwargs"].items())]
        )
        print(f"{entry['id']}  {when}  queue={entry['queue']}  attempts={entry['attempts']}")
        print(f"    {entry['task']}({call})")
        print(f"    {entry['exception']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        stored = entries()
        if args.command == "list":
            show(stored, args.json)
            return 0
        selected = select(stored, args)
        done = requeue(selected) if args.command == "requeue" else purge(selected)
    except (RedisError, OperationalError) as exc:
        print(f"error: cannot reach Redis ({' '.join(str(exc).split())})", file=sys.stderr)
        return 1
    print(f"{args.command}d {done} entr{'y' if done == 1 else 'ies'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
