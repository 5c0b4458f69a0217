"""GET /openapi.json documents every route as the gateway serves it: the hot path included (it has
no FastAPI route), the bodies the image handlers read by hand, who may call each operation, and
errors in OpenAI's shape."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from gateway.images.parameters import IGNORED_ENUMS, IGNORED_TEXT, READ
from tests.api.conftest import admin_headers

GENERATIONS = "/v1/images/generations"


def _schema(client: TestClient) -> dict[str, Any]:
    r = client.get("/openapi.json")  # no key: the schema is public (it holds no deployment data)
    assert r.status_code == 200
    schema: dict[str, Any] = r.json()
    return schema


def _component(schema: dict[str, Any], ref: str) -> dict[str, Any]:
    found: dict[str, Any] = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return found


def test_the_hot_path_is_documented_with_the_body_openai_sdks_send(bare_client: TestClient) -> None:
    schema = _schema(bare_client)
    operation = schema["paths"][GENERATIONS]["post"]
    assert operation["security"] == [{"teamKey": []}]
    body = _component(schema, operation["requestBody"]["content"]["application/json"]["schema"]["$ref"])
    assert body["required"] == ["prompt"] and body["additionalProperties"] is True
    assert set(body["properties"]) >= {
        "model", "prompt", "n", "size", "response_format", "output_format", "output_compression", "quality",
        "style", "background", "moderation", "user", "seed", "negative_prompt", "num_inference_steps",
        "guidance_scale", "stream", "partial_images",
    }  # fmt: skip
    # Only what the gateway reads or knows to ignore: a documented field must not pass upstream unread.
    assert set(body["properties"]) <= READ | IGNORED_ENUMS.keys() | IGNORED_TEXT
    assert body["properties"]["quality"]["enum"] == sorted(IGNORED_ENUMS["quality"])
    answers = operation["responses"]["200"]["content"]["application/json"]["schema"]["anyOf"]
    assert {a["$ref"].rsplit("/", 1)[1] for a in answers} == {"ImagesResponse", "DryRun"}
    assert {p["name"] for p in operation["parameters"]} >= {"dryRun", "Idempotency-Key", "x-gateway-provider"}


def test_the_hot_path_has_no_fastapi_route_and_serves_the_documented_example(
    served: tuple[TestClient, str],
) -> None:
    client, team_id = served
    app = client.app
    # FastAPI's router alone does not know the path: only GatewayApp's hot path serves it...
    router_only = TestClient(app.router)  # type: ignore[attr-defined]
    assert router_only.post(GENERATIONS, json={"prompt": "x"}).status_code == 404
    # ...and it serves the body the schema gives as its example.
    schema = _schema(client)
    operation = schema["paths"][GENERATIONS]["post"]
    body = _component(schema, operation["requestBody"]["content"]["application/json"]["schema"]["$ref"])
    example = body["examples"][0]
    key = client.post(f"/admin/teams/{team_id}/keys", headers=admin_headers()).json()["key"]
    r = client.post(GENERATIONS, json=example, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == example["n"]


def test_edits_document_their_multipart_body(bare_client: TestClient) -> None:
    schema = _schema(bare_client)
    operation = schema["paths"]["/v1/images/edits"]["post"]
    body = _component(schema, operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"])
    assert set(body["required"]) == {"image", "prompt"}
    assert {"image[]", "mask", "strength"} <= set(body["properties"])
    # Files, as generators and clients recognise them: a file part is a string of format binary
    # (one image is a list of one part on the wire), sent with an image type.
    assert body["properties"]["image"]["items"] == {"type": "string", "format": "binary"}
    assert {k: body["properties"]["mask"][k] for k in ("type", "format")} == {"type": "string", "format": "binary"}
    encoding = operation["requestBody"]["content"]["multipart/form-data"]["encoding"]
    assert encoding["image"]["contentType"].startswith("image/png")
    # A form field cannot be null: parameters not sent are absent.
    assert "null" not in str(body["properties"]["n"])


def test_each_operation_names_who_may_call_it(bare_client: TestClient) -> None:
    paths = _schema(bare_client)["paths"]
    assert paths["/v1/models"]["get"]["security"] == [{"teamKey": []}]
    assert paths["/v1/usage"]["get"]["security"] == [{"teamKey": []}]
    assert paths["/admin/teams"]["post"]["security"] == [{"adminKey": []}]
    assert paths["/admin/usage"]["get"]["security"] == [{"adminKey": []}]
    assert paths["/metrics"]["get"]["security"] == [{"metricsToken": []}]
    assert "security" not in paths["/health"]["get"]


def test_errors_are_documented_in_openai_shape_and_no_422_is(bare_client: TestClient) -> None:
    schema = _schema(bare_client)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            assert responses["4XX"] == {"$ref": "#/components/responses/Error"}, (method, path)
    error = schema["components"]["responses"]["Error"]["content"]["application/json"]["schema"]
    detail = _component(schema, _component(schema, error["$ref"])["properties"]["error"]["$ref"])
    assert detail["required"] == ["message", "type", "param", "code"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_responses_have_their_shapes(bare_client: TestClient) -> None:
    paths = _schema(bare_client)["paths"]

    def ref(path: str, method: str = "get", status: str = "200") -> str:
        found: str = paths[path][method]["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        return found.rsplit("/", 1)[1]

    assert ref("/v1/models") == "ModelList"
    assert ref("/v1/usage") == "Usage"
    assert ref("/admin/teams", "post", "201") == "TeamObject"
    assert ref("/admin/teams/{team_id}/keys", "post", "201") == "NewApiKey"
    assert "text/csv" in paths["/admin/usage"]["get"]["responses"]["200"]["content"]
