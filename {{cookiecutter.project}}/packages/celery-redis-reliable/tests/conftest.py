"""The library's tests need nothing of the project's: a redis-server of their own."""

from celery_redis_reliable.fixtures import private_redis, redis_url

__all__ = ["private_redis", "redis_url"]
