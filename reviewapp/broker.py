"""kombu's Redis transport, with one redis client per channel instead of one per message.

For every message it hands out and every ack, kombu's Redis channel builds a new `redis.Redis` to record
the message as unacked and then to forget it (`Channel.conn_or_acquire`). A client is only a handle on the
channel's connection pool, and it is thread-safe, but building one is not cheap: redis-py 8 copies its
table of ~200 response callbacks and checks the arguments for deprecated ones, 0.17 ms a time on the
bench host, twice per task. This channel keeps one (per pool: a reconnect gets a new pool, and a new client
with it). Selected by CELERY_BROKER_TRANSPORT in settings when the broker is Redis.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _kept_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the BRPOP client, created once per channel by kombu already
            return super()._create_client(asynchronous=True)
        client = self._kept_client
        if client is None or client.connection_pool is not self.pool:
            client = self._kept_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
