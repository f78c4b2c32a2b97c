"""Schemathesis checks for Agentry's GraphQL API (loaded with SCHEMATHESIS_HOOKS=fuzz_checks).

Schemathesis' own `not_a_server_error` counts every GraphQL error as a server failure, including
the expected ones (FORBIDDEN, NOT_FOUND, BAD_USER_INPUT …). Agentry's contract is narrower and
stricter: no HTTP 5xx, and every error carries an `extensions.code` that is not
INTERNAL_SERVER_ERROR.
"""

import schemathesis


@schemathesis.check
def no_internal_error(ctx, response, case):
    if response.status_code >= 500:
        raise AssertionError(f"HTTP {response.status_code}: {response.text[:300]}")
    try:
        payload = response.json()
    except Exception as error:  # noqa: BLE001 - any non-JSON answer is a failure
        raise AssertionError(f"the answer is not JSON: {error}") from error
    errors = payload.get("errors") if isinstance(payload, dict) else None
    for error in errors or []:
        code = (error.get("extensions") or {}).get("code")
        if code is None:
            raise AssertionError(f"an error without extensions.code: {error}")
        if code == "INTERNAL_SERVER_ERROR":
            raise AssertionError(f"INTERNAL_SERVER_ERROR: {error.get('message')}")
    return None
