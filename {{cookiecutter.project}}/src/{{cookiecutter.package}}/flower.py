"""Flower with its login taken from settings (FLOWER_USER, FLOWER_PASSWORD from env or file).

    python -m {{ cookiecutter.package }}.flower --port=5555     # extra arguments go to Flower

Flower runs in this process: the login is handed over in this process's memory only, so it
is in neither the container's environment (`docker inspect`) nor any command line.
"""

from __future__ import annotations

import os
import sys

from {{ cookiecutter.package }}.settings import Settings, get_settings

MISSING_PASSWORD = (
    "settings error: FLOWER_PASSWORD is not set (Flower needs a login); accepted: "
    + "a non-empty string without ',' (env or the file flower_password in SECRETS_DIR)"
)


def basic_auth(settings: Settings) -> str:
    """Flower's FLOWER_BASIC_AUTH value; exits with one line when no password is given."""
    if settings.flower_password is None:
        print(MISSING_PASSWORD, file=sys.stderr)
        raise SystemExit(2)
    return f"{settings.flower_user}:{settings.flower_password.get_secret_value()}"


def main(args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else args
    # Set after start-up: /proc/<pid>/environ keeps showing the environment the process got.
    os.environ["FLOWER_BASIC_AUTH"] = basic_auth(get_settings())
    from {{ cookiecutter.package }}.celery_app import app

    # Flower's broker page picks its Redis client by the broker URL's scheme, and the reliable
    # transport's URL says its class path ("not supported"). Flower needs none of it: it only
    # reads events and sends broadcasts, with no acknowledged consumer to record.
    app.conf.broker_transport = "redis"
    return app.start(["flower", *args]) or 0


if __name__ == "__main__":
    sys.exit(main())
