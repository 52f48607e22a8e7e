"""schemathesis hooks for scripts/api-check: value generators for the custom string
formats the OpenAPI documents use."""

import json
import os

import schemathesis
from hypothesis import strategies as st

# `json-object` (host: PUT /json_transport, json_data): text that parses as a JSON object.
# Integers stay within what serde_json reads exactly or as an f64.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)
schemathesis.openapi.format(
    "json-object",
    st.dictionaries(st.text(max_size=10), _values, max_size=4).map(json.dumps),
)

# Operator surfaces (/metrics; the scaler's /regions and /v1/operator/…) answer the operator token, not the
# user's or a session's: on those, the run's own credentials (its -H, named in
# BERTH_API_CHECK_CALLER_TOKEN) become the operator's. Requests without them, or with
# credentials a check corrupted, stay as they are and still get the 401.
_OPERATOR_PATHS = {"/metrics", "/regions"}
_OPERATOR = os.environ.get("BERTH_API_CHECK_OPERATOR_TOKEN", "")
_CALLER = os.environ.get("BERTH_API_CHECK_CALLER_TOKEN", "")


def _as_operator(headers):
    if not headers or not _OPERATOR or not _CALLER:
        return
    for key in list(headers):
        if key.lower() == "authorization" and headers[key] == "Bearer " + _CALLER:
            headers[key] = "Bearer " + _OPERATOR


@schemathesis.hook
def before_call(ctx, case, kwargs):
    if case.operation.path in _OPERATOR_PATHS or case.operation.path.startswith("/v1/operator/"):
        _as_operator(case.headers)
        _as_operator(kwargs.get("headers"))
