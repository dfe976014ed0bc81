"""Every answer the integration tests receive is checked against the OpenAPI document.

`DocumentedAnswers.check` finds the operation a request went to, and fails the test when the
status is not one the document lists for it, or a JSON body does not match the schema listed for
that status. Installed as a response hook on the tests' HTTP sessions, it turns every request
of the suite into a check of the document against the real stack.
"""

from __future__ import annotations

import re
from functools import cache
from urllib.parse import urlsplit

import requests
from jsonschema import Draft202012Validator

# Paths that are pages or assets, not API operations.
NOT_OPERATIONS = ("/api/docs", "/api/openapi.json", "/static/", "/ui")


def _inline(schema, document):
    """The schema with every #/components/... reference replaced by what it names."""
    if isinstance(schema, dict):
        target = schema.get("$ref")
        if isinstance(target, str) and target.startswith("#/"):
            found = document
            for part in target[2:].split("/"):
                found = found[part]
            return _inline(found, document)
        return {key: _inline(value, document) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_inline(item, document) for item in schema]
    return schema


class DocumentedAnswers:
    """The document of one running sidecar, compiled for checking answers."""

    def __init__(self, document: dict) -> None:
        self.document = document
        self.routes = []
        for template, operations in document["paths"].items():
            pattern = re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(template))
            if template.endswith("{filename}"):
                pattern = pattern[: -len("[^/]+")] + ".+"  # <path:filename> spans slashes
            self.routes.append((re.compile(f"^{pattern}$"), template, operations))
        # Literal paths win over templates (/api/queue/clear before /api/queue/{job_id}).
        self.routes.sort(key=lambda route: route[1].count("{"))

    @classmethod
    def of(cls, base_url: str) -> DocumentedAnswers:
        return _load(base_url)

    def operation(self, method: str, path: str) -> tuple[str, dict] | None:
        for pattern, template, operations in self.routes:
            if pattern.match(path) and method.lower() in operations:
                return template, operations[method.lower()]
        return None

    def check(self, response: requests.Response) -> None:
        request = response.request
        path = urlsplit(request.url).path
        if path.startswith(NOT_OPERATIONS) or path == "/":
            return
        found = self.operation(request.method, path)
        if found is None:
            return  # not an API route (a probe of an unknown path): nothing documented
        template, op = found
        where = f"{request.method} {path} ({template}) answered {response.status_code}"
        answer = op["responses"].get(str(response.status_code))
        assert answer is not None, f"{where}, which the document does not list: {response.text}"
        media = response.headers.get("Content-Type", "").split(";")[0].strip()
        content = answer.get("content") or {}
        if media != "application/json" or "application/json" not in content:
            return
        schema = _inline(content["application/json"]["schema"], self.document)
        errors = sorted(Draft202012Validator(schema).iter_errors(response.json()), key=str)
        assert not errors, f"{where} with a body off its schema: {errors[0].message}"

    def hook(self, response: requests.Response, *args, **kwargs) -> None:
        self.check(response)


@cache
def _load(base_url: str) -> DocumentedAnswers:
    with requests.Session() as session:
        session.trust_env = False
        document = session.get(base_url + "/api/openapi.json", timeout=30).json()
    return DocumentedAnswers(document)
