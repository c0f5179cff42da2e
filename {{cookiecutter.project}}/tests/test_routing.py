"""Routing and worker commands: every task reaches the queue of its module, each worker its pool."""

import pytest

from {{ cookiecutter.package }}.celery_app import TASK_ROUTES, app
from {{ cookiecutter.package }}.health import beats
from {{ cookiecutter.package }}.settings import Settings
from {{ cookiecutter.package }}.worker import io_commands, worker_argv, worker_env

PACKAGE = "{{ cookiecutter.package }}"


def our_tasks() -> list[str]:
    app.loader.import_default_modules()
    return sorted(name for name in app.tasks if name.startswith(PACKAGE + "."))


def test_every_task_is_explicitly_routed_to_its_module_queue():
    names = our_tasks()
    assert len(names) >= 5
    for name in names:
        expected = name.split(".")[-2]  # tasks/cpu.py -> "cpu", tasks/io.py -> "io"
        route = app.amqp.router.route({}, name)
        assert route["queue"].name == expected, name


def test_each_queue_has_its_own_exchange_and_key():
    for queue in app.conf.task_queues:
        assert (queue.exchange.name, queue.routing_key) == (queue.name, queue.name)
    route = app.amqp.router.route({}, PACKAGE + ".tasks.io.fetch")
    assert (route["queue"].exchange.name, route["queue"].routing_key) == ("io", "io")


def test_routes_only_name_declared_queues():
    declared = {q.name for q in app.conf.task_queues}
    assert declared == {"cpu", "io"}
    assert {r["queue"] for r in TASK_ROUTES.values()} == declared


def test_only_json_is_accepted():
    assert app.conf.accept_content == ["json"]
    assert app.conf.result_accept_content == ["json"]
    assert app.conf.task_serializer == app.conf.result_serializer == "json"
    assert app.conf.event_serializer == "json"
    assert "pickle" not in str(app.conf.accept_content) + str(app.conf.result_accept_content)


def argv(kind, **env):
    return worker_argv(kind, Settings(redis_url="redis://:pw@r:6379/0", **env))


def test_cpu_worker_command():
    cmd = argv("cpu", cpu_pool="prefork", cpu_concurrency="auto")
    assert {
        "--queues=cpu",
        "--pool=prefork",
        "--concurrency=auto",
        "--prefetch-multiplier=1",
    } <= set(cmd)
    assert any(a.startswith("--max-memory-per-child=") for a in cmd)


def test_io_worker_command_carries_the_pool():
    cmd = argv("io", io_pool="gevent", io_concurrency=321)
    assert {"--queues=io", "--pool=gevent", "--concurrency=321"} <= set(cmd)
    assert not any(a.startswith("--max-memory-per-child") for a in cmd)


def test_each_io_process_has_its_own_name_under_io():
    settings = Settings(redis_url="redis://:pw@r:6379/0", io_processes=3)
    first, second, third = (worker_argv("io", settings, n) for n in (1, 2, 3))
    # The first keeps today's name; all start "io@" (monitoring/alerts.yml matches io@.*).
    assert "--hostname=io@%h" in first
    assert "--hostname=io@%h-2" in second and "--hostname=io@%h-3" in third
    assert [a for a in first if a != "--hostname=io@%h"] == [
        a for a in second if a != "--hostname=io@%h-2"
    ]


def test_io_commands_give_each_process_a_heartbeat_the_probe_checks(tmp_path):
    base = tmp_path / "beat"
    stale = tmp_path / "beat.2"
    stale.write_text("ready")  # from the run before a restart: must not pass for the new one
    settings = Settings(redis_url="redis://:pw@r:6379/0", io_processes=2, heartbeat_file=str(base))
    commands = io_commands(settings, {"KEEP": "1"})
    assert [argv for argv, _ in commands] == [worker_argv("io", settings, n) for n in (1, 2)]
    files = [env["HEARTBEAT_FILE"] for _, env in commands]
    assert files == [f"{base}.1", f"{base}.2"] == beats(str(base))
    assert all(env["KEEP"] == "1" for _, env in commands)
    assert not stale.exists()


def test_solo_runs_one_task_per_process():
    assert "--concurrency=1" in argv("cpu", cpu_pool="solo", cpu_concurrency=8)


def test_unknown_worker_kind_is_refused():
    with pytest.raises(ValueError, match="accepted: cpu, io"):
        argv("gpu")


def test_prefork_gets_soft_shutdown_on_its_command_line_only():
    settings = Settings(
        redis_url="redis://:pw@r:6379/0", cpu_pool="prefork", cpu_soft_shutdown_timeout=40
    )
    cpu = worker_argv("cpu", settings)
    assert cpu[-2:] == ["--", "worker_soft_shutdown_timeout=40"]
    assert worker_env("cpu", settings)["REMAP_SIGTERM"] == "SIGQUIT"
    # gevent crashes on soft shutdown (celery 5.7): the io worker keeps the warm one.
    assert "--" not in worker_argv("io", settings)
    assert "REMAP_SIGTERM" not in worker_env("io", settings)


def test_celery_parses_the_soft_shutdown_argument():
    # The same parser `celery worker` applies to what follows "--".
    parsed = app.loader.cmdline_config_parser(["worker_soft_shutdown_timeout=40"], "worker")
    assert parsed == {"worker_soft_shutdown_timeout": 40.0}


@pytest.mark.parametrize("env", [{"cpu_soft_shutdown_timeout": 0}, {"cpu_pool": "solo"}])
def test_no_soft_shutdown_when_off_or_not_prefork(env):
    settings = Settings(redis_url="redis://:pw@r:6379/0", **env)
    assert "--" not in worker_argv("cpu", settings)
    assert "REMAP_SIGTERM" not in worker_env("cpu", settings)


@pytest.mark.parametrize("ours", [True, False], ids=["this app", "another app (untuned)"])
def test_only_this_apps_workers_get_the_cheap_success_line(ours, monkeypatch):
    from celery import Celery, signals
    from celery.app import trace
    from celery.concurrency.gevent import TaskPool
    from celery_redis_reliable.logline import bounded_repr

    monkeypatch.setattr(trace, "saferepr", trace.saferepr)  # restored after the test

    class Worker:  # what the signal reads of a WorkController
        pool_cls = TaskPool

    worker = Worker()
    worker.app = app if ours else Celery(set_as_current=False)
    signals.worker_init.send(sender=worker)
    assert (trace.saferepr is bounded_repr) is ours
