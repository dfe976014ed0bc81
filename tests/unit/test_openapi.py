"""The OpenAPI document matches the app's routes and is a valid OpenAPI 3.1 document."""

import schemathesis

from api import openapi


def test_every_route_is_documented_and_nothing_else(client, app):
    document = client.get("/api/openapi.json").get_json()
    documented = {(method, path) for path, ops in document["paths"].items() for method in ops}
    routes = openapi.operations(app)
    assert documented == set(routes)
    assert all(declared is not None for _, declared in routes.values())


def test_every_success_answer_has_a_real_schema(client):
    document = client.get("/api/openapi.json").get_json()
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            for status, answer in op["responses"].items():
                if not status.startswith("2"):
                    continue
                for media, content in answer["content"].items():
                    schema = content["schema"]
                    assert schema not in ({}, {"type": "object"}), (method, path, media)


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
