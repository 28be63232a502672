"""Fixtures for model tests."""
import socket

import pytest

from model_helpers import randomize_


@pytest.fixture
def randomize():
    return randomize_


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection or name lookup fails loudly and is recorded."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert attempts == [], f"network was touched: {attempts}"
