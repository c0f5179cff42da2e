"""Celery with nothing tuned: the baseline the template is measured against.

    celery -A bench.untuned worker --pool=gevent --concurrency=500 -Q io

Only the broker and result backend are set. The example tasks are shared tasks
(``@app.task`` registers them on every app), so this app runs the very same code with
Celery's defaults: per-thread result backend, early acks, prefetch x4, mingle and gossip on.
A separate module rather than an env switch in ``celery_app``: the shipped app has no
"untuned" mode that could be switched on by mistake.
"""

from celery import Celery

from {{ cookiecutter.package }}.settings import get_settings
from {{ cookiecutter.package }}.tasks import cpu, io

# Imported for their side effect: shared tasks register on every app, this one too.
TASK_MODULES = (cpu, io)
_url = get_settings().broker_url
app = Celery("{{ cookiecutter.package }}", broker=_url, backend=_url)
