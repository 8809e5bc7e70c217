"""The shipped deployment examples and the generated config reference stay valid."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy.cli import build_parser
from proxy.config import ProxyConfig, config_from_dict
from tests.support.servers import REPO

DEPLOY = REPO / "deploy"
POD_MANIFEST = DEPLOY / "kubernetes" / "pod.yaml"
SYSTEMD_UNIT = DEPLOY / "systemd" / "channels-proxy.service"


def test_kubernetes_manifest_matches_the_kubernetes_schema():
    # kubernetes-validate ships the Kubernetes JSON schemas inside the package: no network.
    tool = shutil.which("kubernetes-validate")
    assert tool, "kubernetes-validate is not installed (pip install kubernetes-validate)"
    done = subprocess.run(
        [tool, "--strict", str(POD_MANIFEST)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed for resource") == 3, done.stdout


def test_kubernetes_validation_catches_a_broken_pod(tmp_path):
    tool = shutil.which("kubernetes-validate")
    assert tool, "kubernetes-validate is not installed (pip install kubernetes-validate)"
    documents = list(yaml.safe_load_all(POD_MANIFEST.read_text()))
    pod = next(d for d in documents if d["kind"] == "Pod")
    # A misspelt key is what hand-edited manifests get wrong most; --strict refuses it.
    pod["spec"]["containers"][1]["livenessProbe"]["httpGets"] = {"path": "/healthz"}
    broken = tmp_path / "pod.yaml"
    broken.write_text(yaml.safe_dump(pod))
    done = subprocess.run(
        [tool, "--strict", str(broken)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "'httpGets' was unexpected" in done.stdout + done.stderr


def test_kubernetes_sidecar_config_and_arguments_are_the_proxys():
    documents = list(yaml.safe_load_all(POD_MANIFEST.read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    config = config_from_dict(yaml.safe_load(config_map["data"]["proxy.yaml"]), "configmap")
    pod = next(d for d in documents if d["kind"] == "Pod")
    proxy = next(c for c in pod["spec"]["containers"] if c["name"] == "channels-proxy")
    args = build_parser().parse_args(proxy["args"])
    mount = next(m for m in proxy["volumeMounts"] if m["name"] == "proxy-config")
    assert Path(args.config).parent == Path(mount["mountPath"])
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert ports == {"http": config.listen.port, "admin": config.admin.port}
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The kubelet must wait for the drain before it kills the pod.
    assert pod["spec"]["terminationGracePeriodSeconds"] > config.shutdown.deadline
    jupyter = next(c for c in pod["spec"]["containers"] if c["name"] == "jupyter-server")
    assert "--ServerApp.ip=127.0.0.1" in jupyter["args"]
    assert config.routes[0].upstream == "http://127.0.0.1:8888"


def _unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(SYSTEMD_UNIT.read_text())
    return parser


def test_systemd_unit_runs_the_proxy_and_reloads_with_sighup():
    unit = _unit()
    service = unit["Service"]
    command = shlex.split(service["ExecStart"])
    assert command[0] == "/usr/local/bin/channels-proxy"
    args = build_parser().parse_args(command[1:])
    assert args.config == "/etc/channels-proxy/proxy.yaml"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    default_deadline = ProxyConfig.model_fields["shutdown"].default_factory().deadline  # type: ignore[misc]
    assert int(service["TimeoutStopSec"]) > default_deadline
    assert service["RestartPreventExitStatus"] == "2"  # the CLI's exit code for config errors
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze missing (Debian: systemd)"
)
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    # verify insists that ExecStart exists; point it at a real executable, change nothing else.
    stand_in = tmp_path / "channels-proxy"
    stand_in.write_text(f'#!/bin/sh\nexec {sys.executable} -m proxy "$@"\n')
    stand_in.chmod(0o755)
    unit = tmp_path / SYSTEMD_UNIT.name
    unit.write_text(
        SYSTEMD_UNIT.read_text().replace("/usr/local/bin/channels-proxy", str(stand_in))
    )
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120
    )
    # verify only warns (exit 0) about unknown keys and bad values: any line about the unit fails.
    complaints = [ln for ln in (done.stdout + done.stderr).splitlines() if unit.name in ln]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def test_config_reference_is_generated_from_the_schema():
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "gen_config_reference.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    reference = (REPO / "config" / "reference.md").read_text()
    for key in ("listen.tls.cert", "routes[].request_headers.remove", "routes[].tls.ca_bundle"):
        assert f"`{key}`" in reference
    assert "`watch`" in reference and "${VAR:-default}" in reference
