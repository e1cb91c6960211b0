"""The ``amqp://`` transport that reads the socket ahead (``broker/transport/amqp.py``).

Its ``_read`` against a real socket pair (what a read takes, what stays
buffered, a timeout part-way through a frame, the server closing), and a
connection made by ``new_connection()`` to a real RabbitMQ using it for
publishing and for consuming a burst of messages that arrive together.
"""

from __future__ import annotations

import socket
import threading

import pytest
from kombu import Queue

from django_tasks_q.broker.connection import new_connection
from django_tasks_q.broker.transport import amqp


@pytest.fixture
def pair():
    """(our transport reading one end of a socket pair, the other end)."""
    ours, theirs = socket.socketpair()
    transport = amqp.TCPTransport.__new__(amqp.TCPTransport)  # no server to connect to: the socket is given
    transport.sock, transport._read_buffer, transport.raise_on_initial_eintr = ours, b"", True
    transport._quick_recv = ours.recv
    yield transport, theirs
    ours.close()
    theirs.close()


def test_a_read_takes_what_the_socket_holds_and_keeps_the_rest_for_the_next(pair):
    transport, theirs = pair
    theirs.sendall(b"header1" + b"payload" + b"\xce")
    assert transport._read(7) == b"header1"
    assert transport._read_buffer == b"payload\xce"  # one recv took the frame whole
    theirs.close()  # nothing more will come: the next reads are served from the buffer alone
    assert transport._read(7) == b"payload"
    assert transport._read(1) == b"\xce"


def test_a_timeout_part_way_through_a_frame_keeps_what_was_read(pair):
    transport, theirs = pair
    transport.sock.settimeout(0.05)
    theirs.sendall(b"abc")
    with pytest.raises(socket.timeout):
        transport._read(7)
    assert transport._read_buffer == b"abc"
    theirs.sendall(b"defg")
    assert transport._read(7) == b"abcdefg"
    assert transport._read_buffer == b""


def test_a_frame_larger_than_one_read_is_read_whole(pair):
    transport, theirs = pair
    frame = bytes(range(256)) * 1024  # 256 KiB: several reads of READ_AHEAD, more than the socket buffers
    sender = threading.Thread(target=theirs.sendall, args=(frame,))
    sender.start()
    assert transport._read(len(frame)) == frame
    sender.join(5)


def test_the_server_closing_the_connection_is_an_error_that_says_so(pair):
    transport, theirs = pair
    theirs.sendall(b"abc")
    theirs.close()
    with pytest.raises(OSError, match="unexpectedly closed"):
        transport._read(7)


def test_connections_to_rabbitmq_read_ahead_and_carry_a_burst_of_messages(amqp_url):
    queue = Queue("tasksq-test-read-ahead", durable=False, auto_delete=True)
    with new_connection(amqp_url) as connection:
        channel = connection.default_channel
        assert isinstance(connection.connection.transport, amqp.TCPTransport)
        bound = queue(channel)
        bound.declare()
        producer = connection.Producer(channel)
        for number in range(200):
            producer.publish({"n": number}, routing_key=queue.name, retry=False)
        got: list[int] = []
        consumer = connection.Consumer(bound, callbacks=[lambda body, message: (got.append(body["n"]),
                                                                                 message.ack())])
        consumer.qos(prefetch_count=200)
        with consumer:
            for _ in range(400):
                if len(got) == 200:
                    break
                connection.drain_events(timeout=5)
        assert got == list(range(200))  # every message, in order, none lost between reads
        bound.delete()


def test_a_tls_read_that_would_block_is_tried_again_as_py_amqp_does():
    """``SSLWantReadError`` carries errno ENOENT (2): py-amqp's TLS transport reads again; so does ours."""
    import errno

    transport = amqp.SSLTransport.__new__(amqp.SSLTransport)
    transport._read_buffer, transport.raise_on_initial_eintr = b"", True
    answers = [b"abc", OSError(errno.ENOENT, "want read"), b"defg"]

    def recv(size):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    transport._quick_recv = recv
    assert transport._read(7) == b"abcdefg"
    assert answers == []
