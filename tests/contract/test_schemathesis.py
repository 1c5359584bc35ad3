"""Property-based conformance over the committed spec, against the app in-process.

Positive and negative cases: no 5xx, documented status codes and content types, responses
matching their schemas, and invalid data rejected.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from service.__main__ import OPENAPI_PATH
from service.app import create_app
from service.settings import Settings

schemathesis.serializer.alias("application/x-npy", "application/octet-stream")  # arbitrary bytes
schema = schemathesis.openapi.from_path(OPENAPI_PATH)
schema.config.generation.update(modes=["positive", "negative"])
schema.app = create_app(Settings(data_dir=Path(tempfile.mkdtemp(prefix="ntk-schemathesis-")),
                                 max_result_entries=200_000))

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_conforms(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS)
