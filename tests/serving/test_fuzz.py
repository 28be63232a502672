"""Schema-driven fuzzing: schemathesis generates requests from /openapi.json against a live server (an index loaded,
API keys on); no request may get a 5xx, and the server still answers a good request afterwards."""
import itertools

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from clipforge.search import IndexConfig, build_index
from clipforge.serving import ServeConfig, create_app

from serving_helpers import png_bytes, running

KEY = "fuzz-key-0123"


@pytest.fixture(scope="module")
def live(tiny_spec, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "coll").mkdir()
    for i in range(6):
        (root / "coll" / f"{i}.png").write_bytes(png_bytes(i))
    build_index(str(root / "coll"), root / "idx", IndexConfig(model=tiny_spec, show_progress=False, workers=0))
    config = ServeConfig(model=tiny_spec, device="cpu", index=str(root / "idx"), api_keys=(KEY,), max_inputs=16,
                         max_text_chars=2000, max_body_bytes=1 << 20)
    with running(create_app(config)) as url:
        yield url


def test_no_request_gets_a_server_error(live):
    schema = schemathesis.openapi.from_url(f"{live}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9, [op.label for op in operations]
    fuzzed = dict.fromkeys(GenerationMode, 0)
    for operation, mode in itertools.product(operations, GenerationMode):  # valid requests, then invalid ones
        @given(operation.as_strategy(mode))
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def fuzz(case):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {KEY}"}
            _check(case)

        try:
            fuzz()
            fuzzed[mode] += 1
        except Unsatisfiable:  # a route with no inputs (GET /healthz) has no invalid requests to make
            assert mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET", operation.label
    assert fuzzed[GenerationMode.POSITIVE] == len(operations)
    assert fuzzed[GenerationMode.NEGATIVE] >= 7  # every POST route and the thumbnail route


def _check(case):
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:  # every refusal is the JSON error shape
        assert response.json()["error"]["message"], response.text[:300]


def test_still_serving_after_the_fuzzing(live):
    response = httpx.post(f"{live}/v1/embeddings", json={"input": "after the fuzz"},
                          headers={"X-API-Key": KEY}, timeout=30)
    assert response.status_code == 200
