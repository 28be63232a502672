"""Running the app: ``serve(config)`` under uvicorn, one process or ``workers`` processes with a model each.

Shutdown is graceful: on SIGTERM/SIGINT uvicorn stops accepting connections and waits for requests in flight (up to
``GRACE_S``), then the batcher finishes its queue. Several workers each load the model (memory x workers) and share
the cores (``threads`` defaults to cores / workers); beyond one machine, run replicas behind a load balancer
(examples/serve/docker-compose.yml).
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket

from clipforge.serving._deps import import_serving
from clipforge.serving.config import ServeConfig

GRACE_S = 30
_ENV = "CLIPFORGE_SERVE_CONFIG"


def check_port(host: str, port: int) -> None:
    """Fail in one line, before a model is loaded, when the address cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OSError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as e:
            raise OSError(f"cannot listen on {host}:{port} ({e.strerror}): choose another --port or stop what "
                          "uses it") from None


def _threads(config: ServeConfig) -> ServeConfig:
    if config.threads is None and config.workers > 1:
        return dataclasses.replace(config, threads=max(1, (os.cpu_count() or 1) // config.workers))
    return config


def app_from_environment():
    """The app of one worker process (uvicorn's factory when ``workers`` > 1): the config comes in ``_ENV``."""
    from clipforge.serving.app import create_app

    fields = json.loads(os.environ[_ENV])
    for name in ("image_formats", "url_hosts", "api_keys", "cors_origins"):
        fields[name] = tuple(fields[name])
    return create_app(ServeConfig(**fields))


def serve(config: ServeConfig, model=None, index=None, log_level: str = "info") -> None:
    """Blocks until the server is stopped. With one worker, ``model``/``index`` may be passed already loaded."""
    uvicorn = import_serving("uvicorn")
    config = _threads(config)
    config.check()
    common = dict(host=config.host, port=config.port, log_level=log_level, timeout_graceful_shutdown=GRACE_S,
                  proxy_headers=False, server_header=False)
    if config.workers == 1:
        from clipforge.serving.app import create_app

        uvicorn.run(create_app(config, model, index), **common)
        return
    os.environ[_ENV] = json.dumps(dataclasses.asdict(config))
    uvicorn.run("clipforge.serving.server:app_from_environment", factory=True, workers=config.workers, **common)
