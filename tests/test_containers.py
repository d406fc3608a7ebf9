"""The container recipes (Dockerfile, compose.yaml, deploy/kubernetes/): no container engine
runs here, so each is checked by the schema or linter its ecosystem uses (hadolint, the
Compose Specification's JSON schema, the Kubernetes API schemas in strict mode), and what
they say about bulkhook (commands, probes, ports, settings) is checked against the code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.config import Settings

from .processes import REPO, Stack, procfile_command

BIN = Path(sys.executable).parent
KUBERNETES = REPO / "deploy" / "kubernetes"
MANIFESTS = sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)


def dockerfile_instruction(name: str) -> str:
    """The last NAME instruction of the Dockerfile, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    found = [line for line in text.splitlines() if line.startswith(name + " ")]
    return found[-1][len(name) + 1 :].strip()


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def containers(kind: str, name: str) -> list[dict]:
    for path in MANIFESTS:
        for doc in documents(path):
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc["spec"]["template"]["spec"]["containers"]
    raise KeyError((kind, name))


# --- the checkers, and proof that each can fail -------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    result = run(BIN / "hadolint", REPO / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_fail_on_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /app && pip install flask\n")
    result = run(BIN / "hadolint", bad)
    assert result.returncode != 0 and "DL3006" in result.stdout  # untagged image


def test_compose_file_matches_the_compose_specification() -> None:
    result = run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec",
                 REPO / "compose.yaml")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_does_fail_on_a_typo(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text((REPO / "compose.yaml").read_text().replace("depends_on:", "depend_on:", 1))
    result = run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", bad)
    assert result.returncode != 0 and "depend_on" in result.stdout


def test_kubernetes_manifests_validate_strictly() -> None:
    result = run(BIN / "kubernetes-validate", "--strict", *MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == 6  # every document was checked


def test_kubernetes_validation_does_fail_on_a_misspelt_field(tmp_path: Path) -> None:
    bad = tmp_path / "web.yaml"
    bad.write_text((KUBERNETES / "web.yaml").read_text().replace("livenessProbe", "livenesProbe"))
    result = run(BIN / "kubernetes-validate", "--strict", bad)
    assert result.returncode != 0 and "livenesProbe" in result.stdout + result.stderr


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = documents(KUBERNETES / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]


# --- what the recipes say about bulkhook ----------------------------------------------------


def test_image_runs_the_procfile_commands() -> None:
    assert json.loads(dockerfile_instruction("CMD")) == procfile_command("web")
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    assert compose["worker"]["command"] == procfile_command("worker")
    assert containers("Deployment", "bulkhook-worker")[0]["command"][:2] == procfile_command(
        "worker"
    )


def test_image_runs_as_a_non_root_user() -> None:
    assert dockerfile_instruction("USER").split(":")[0] == "10001"
    for name in ("bulkhook-web", "bulkhook-worker"):
        (container,) = containers("Deployment", name)
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_image_healthcheck_passes_on_a_live_web_and_fails_without_one(tmp_path: Path) -> None:
    """The HEALTHCHECK command itself, run against the Procfile's web process."""
    command = json.loads(dockerfile_instruction("HEALTHCHECK").split("CMD", 1)[1])
    command[0] = sys.executable
    stack = Stack(tmp_path, "container-key")
    try:
        env = {"PORT": str(stack.port)}
        assert subprocess.run(command, env=env, timeout=10).returncode == 0
    finally:
        stack.close()
    assert subprocess.run(command, env=env, timeout=10, capture_output=True).returncode != 0


def test_kubernetes_probes_and_ports_match_the_app(client) -> None:
    (web,) = containers("Deployment", "bulkhook-web")
    port = {p["name"]: p["containerPort"] for p in web["ports"]}["http"]
    env = {e["name"]: e.get("value") for e in web["env"]}
    assert env["PORT"] == str(port)
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert client.get(web[probe]["httpGet"]["path"]).status_code == 200


def test_kubernetes_settings_parse_and_the_key_comes_from_the_secret(tmp_path: Path) -> None:
    (config,) = documents(KUBERNETES / "config.yaml")
    (secret,) = documents(KUBERNETES / "secret.yaml")
    (web,) = containers("Deployment", "bulkhook-web")
    key_file = {e["name"]: e.get("value") for e in web["env"]}["BULKHOOK_SIGNATURE_KEY_FILE"]
    mount = next(m for m in web["volumeMounts"] if key_file.startswith(m["mountPath"] + "/"))
    assert key_file.rsplit("/", 1)[1] in secret["stringData"]
    assert mount["readOnly"] is True
    # As the pod would see it: the Secret's file, the ConfigMap's settings.
    (tmp_path / "signature-key").write_text(secret["stringData"]["signature-key"])
    settings = Settings.from_env({**config["data"], "BULKHOOK_SIGNATURE_KEY_FILE":
                                  str(tmp_path / "signature-key")})  # fmt: skip
    settings.require_redis()
    assert settings.signature_keys == ("change-me",)
    assert settings.trusted_proxies == 1


def test_compose_mounts_files_that_exist() -> None:
    services = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), source


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx (.ci/run installs it)")
def test_compose_nginx_config_is_accepted_by_nginx(tmp_path: Path) -> None:
    """`nginx -t` on the compose server block, with `web` pointed at loopback."""
    snippets = tmp_path / "snippets"
    snippets.mkdir()
    shutil.copy(REPO / "deploy" / "nginx" / "bulkhook-proxy.conf", snippets)
    conf = (REPO / "deploy" / "nginx" / "compose.conf").read_text()
    assert "server web:8000;" in conf
    site = (
        conf.replace("server web:8000;", "server 127.0.0.1:8000;")
        .replace("/etc/nginx/snippets/", f"{snippets}/")
        .replace("listen 80;", "listen 127.0.0.1:18080;")
    )
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        f"events {{}}\nhttp {{\naccess_log off;\n{site}\n}}\n"
    )
    result = run("nginx", "-t", "-c", main, "-p", tmp_path)
    assert result.returncode == 0, result.stderr
