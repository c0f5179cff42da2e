"""Example periodic tasks, added to the beat schedule only where DEMO=true (celery_app.py)."""

DEMO_SCHEDULE = {
    "count-primes-every-minute": {
        "task": "{{ cookiecutter.package }}.tasks.cpu.count_primes",
        "schedule": 60.0,
        "args": (100_000,),
    },
    "ping-api-every-30s": {
        "task": "{{ cookiecutter.package }}.tasks.io.wait_on_api",
        "schedule": 30.0,
        "args": (0,),
    },
}
