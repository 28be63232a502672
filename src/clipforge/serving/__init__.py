"""The service: ``clipforge serve MODEL|BUNDLE [--index DIR]`` — OpenAI-shaped embeddings, ranking, zero-shot
classification and index search over HTTP, with dynamic batching, limits, metrics and a search page.

    from clipforge.serving import ServeConfig, create_app, serve
    app = create_app(ServeConfig(model="ViT-B-32", index="my-index"))   # any ASGI server, or:
    serve(ServeConfig(model="bundle/", port=8000))

Level 5 (docs/architecture.md): built on runtime (ONNX bundles), models (torch) and search (indexes). FastAPI,
uvicorn, prometheus-client and python-multipart come with ``pip install 'clipforge[serve]'``.
"""
from clipforge.serving.config import ServeConfig


def __getattr__(name: str):
    if name == "create_app":
        from clipforge.serving.app import create_app

        return create_app
    if name == "serve":
        from clipforge.serving.server import serve

        return serve
    raise AttributeError(name)


__all__ = ["ServeConfig", "create_app", "serve"]
