"""The Redis broker transport that keeps one redis client per channel (reviewapp/broker.py)."""

from __future__ import annotations

import uuid

from kombu import Connection, Queue

from reviewapp.broker import Channel, Transport


def test_the_settings_select_it_for_a_redis_broker(redis_url: str) -> None:
    from reviewapp.celery import app

    with app.connection_for_write() as conn:
        assert isinstance(conn.default_channel, Channel)


def test_a_channel_keeps_one_client_until_its_pool_changes(redis_url: str) -> None:
    with Connection(redis_url, transport=Transport) as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as a, channel.conn_or_acquire() as b:
            assert a is b and a.connection_pool is channel.pool
        channel._pool = None  # what a reconnect does: a new pool, so a new client
        with channel.conn_or_acquire() as c:
            assert c is not a and c.connection_pool is channel.pool


def test_messages_are_delivered_tracked_as_unacked_and_acked(redis_url: str) -> None:
    """The unacked bookkeeping that runs through the kept client: a delivered message is in the unacked set
    until acked, and a message rejected with requeue comes back."""
    name = f"broker-test-{uuid.uuid4().hex[:8]}"
    with Connection(redis_url, transport=Transport) as conn:
        queue = Queue(name, routing_key=name)
        with conn.Producer() as producer:
            for i in range(3):
                producer.publish({"n": i}, routing_key=name, declare=[queue])
        channel = conn.default_channel
        client = channel._create_client()
        got = []
        with conn.SimpleQueue(queue) as sq:
            for _ in range(3):
                got.append(sq.get(timeout=5))
            assert sorted(m.payload["n"] for m in got) == [0, 1, 2]
            assert client.hlen(channel.unacked_key) >= 3
            tags = [m.delivery_tag for m in got]
            got[0].reject(requeue=True)
            for m in got[1:]:
                m.ack()
            again = sq.get(timeout=5)
            assert again.payload["n"] == got[0].payload["n"]
            again.ack()
            assert not any(client.hexists(channel.unacked_key, t) for t in tags)
            sq.queue.delete()
