"""schemathesis hooks for scripts/api-check: value generators for the custom string
formats the OpenAPI documents use."""

import json

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
