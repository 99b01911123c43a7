"""openapi.yaml is generated from the app; this fails when the committed file drifts."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_openapi_yaml_matches_the_app(app, tmp_path):
    out = tmp_path / "openapi.yaml"
    result = app.test_cli_runner().invoke(args=["openapi", "write", "--format=yaml", str(out)])
    assert result.exit_code == 0, result.output
    committed = (ROOT / "openapi.yaml").read_text()
    assert out.read_text() == committed, "openapi.yaml is stale: run `make openapi` and commit it"
