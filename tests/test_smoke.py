from tests.factories import protocol_payload


def test_create_and_read(client):
    payload = protocol_payload()
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 201, response.get_json()
    got = client.get(f"/v1/protocols/{payload['id']}")
    assert got.status_code == 200
    assert got.get_json()["version"] == 1
