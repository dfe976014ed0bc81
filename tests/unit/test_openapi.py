"""The OpenAPI document matches the app's routes and is a valid OpenAPI 3.1 document."""

import schemathesis

from api.openapi import flask_rules_as_paths


def test_every_route_is_documented_and_nothing_else(client, app):
    document = client.get("/api/openapi.json").get_json()
    documented = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert documented == flask_rules_as_paths(app)


def test_the_document_loads_as_openapi(client):
    document = client.get("/api/openapi.json").get_json()
    schema = schemathesis.openapi.from_dict(document)
    operations = list(schema.get_all_operations())
    assert len(operations) == sum(len(ops) for ops in document["paths"].values())


def test_generate_body_is_the_workflow_schema(client):
    document = client.get("/api/openapi.json").get_json()
    body = document["paths"]["/api/generate"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert body["properties"]["steps"] == {"type": "integer", "minimum": 1, "maximum": 200}
    assert body["properties"]["width"]["multipleOf"] == 16
    assert "timeout_minutes" in body["properties"]


def test_docs_page_works_without_any_cdn(client):
    page = client.get("/api/docs").get_data(as_text=True)
    assert "https://" not in page and "http://" not in page
    assert client.get("/api/docs/swagger-ui-bundle.js").status_code == 200
    assert client.get("/api/docs/init.js").status_code == 200
