"""Config loading: every user error names the file, the key path and the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config import ConfigError, ProxyConfig, config_from_dict, load_config

ROUTE = {"prefix": "/", "upstream": "http://127.0.0.1:8888"}
REPO = Path(__file__).resolve().parents[2]


def error_for(data: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data, "proxy.yaml")
    return caught.value


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_config_gets_documented_defaults() -> None:
    config = config_from_dict({"routes": [ROUTE]})
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 8890)
    assert (config.admin.host, config.admin.port) == ("127.0.0.1", 8891)
    assert config.routes[0].legacy.enabled is True
    assert config.routes[0].legacy.msg_spec == "auto"


def test_error_string_is_file_key_problem() -> None:
    error = error_for({"routes": [ROUTE], "bogus": 1})
    assert (error.source, error.key, error.problem) == ("proxy.yaml", "bogus", "unknown key")
    assert str(error) == "proxy.yaml: bogus: unknown key"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"routes": [ROUTE], "listen": {"hots": "127.0.0.1"}}, "listen.hots"),
        ({"routes": [{**ROUTE, "legacy": {"enabled": True, "spec": 4}}]}, "routes[0].legacy.spec"),
        ({"routes": [{**ROUTE, "timeouts": {"conect": 1}}]}, "routes[0].timeouts.conect"),
        ({"routes": [ROUTE], "sessions": {"reconnect": {"tries": 1}}}, "sessions.reconnect.tries"),
        ({"routes": [ROUTE, {**ROUTE, "prefix": "/x/", "upstrem": "http://h"}]}, "routes[1]"),
    ],
)
def test_unknown_keys_at_every_depth(data: dict[str, Any], key: str) -> None:
    error = error_for(data)
    assert error.key.startswith(key)
    assert error.problem in ("unknown key", "required key is missing")


def test_misspelled_route_key_reports_the_unknown_key() -> None:
    error = error_for({"routes": [{**ROUTE, "legcy": {}}]})
    assert str(error) == "proxy.yaml: routes[0].legcy: unknown key"


@pytest.mark.parametrize(
    ("upstream", "problem"),
    [
        ("ftp://127.0.0.1/", "is not an http(s) URL with a host, nor 'embedded'"),
        ("127.0.0.1:8888", "is not an http(s) URL with a host, nor 'embedded'"),
        ("http://", "is not an http(s) URL with a host, nor 'embedded'"),
        ("http://127.0.0.1:99999", "has a bad port"),
        ("http://127.0.0.1:8888/?token=abc", "must not have a query or fragment"),
        ("http://127.0.0.1:8888/#top", "must not have a query or fragment"),
    ],
)
def test_bad_upstream_urls(upstream: str, problem: str) -> None:
    error = error_for({"routes": [ROUTE, {"prefix": "/b/", "upstream": upstream}]})
    assert error.key == "routes[1].upstream"
    assert error.problem == f"{upstream!r} {problem}"


def test_embedded_and_https_upstreams_are_valid() -> None:
    config = config_from_dict(
        {"routes": [{"prefix": "/", "upstream": "embedded"}, {**ROUTE, "prefix": "/s/"}]}
    )
    assert [r.upstream for r in config.routes] == ["embedded", "http://127.0.0.1:8888"]


def test_duplicate_prefix_names_both_routes() -> None:
    error = error_for({"routes": [ROUTE, {**ROUTE, "upstream": "http://other:1"}]})
    assert str(error) == "proxy.yaml: routes[1].prefix: duplicate prefix '/' (also routes[0])"


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [
        ("static/", "must start with '/'"),
        ("/a?b", "must be a plain path (no query, fragment, spaces or control chars)"),
        ("/a b/", "must be a plain path (no query, fragment, spaces or control chars)"),
    ],
)
def test_bad_prefixes(prefix: str, problem: str) -> None:
    error = error_for({"routes": [{**ROUTE, "prefix": prefix}]})
    assert (error.key, error.problem) == ("routes[0].prefix", problem)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"routes": [ROUTE], "listen": {"port": "eighty"}}, "listen.port"),
        ({"routes": [ROUTE], "listen": {"port": 70000}}, "listen.port"),
        ({"routes": [ROUTE], "admin": {"port": -1}}, "admin.port"),
        ({"routes": [ROUTE], "limits": {"max_message_bytes": 0}}, "limits.max_message_bytes"),
        ({"routes": [{**ROUTE, "legacy": {"enabled": "maybe"}}]}, "routes[0].legacy.enabled"),
        ({"routes": [{**ROUTE, "legacy": {"msg_spec": 3}}]}, "routes[0].legacy.msg_spec"),
        ({"routes": [ROUTE], "logging": {"format": "xml"}}, "logging.format"),
        ({"routes": "http://127.0.0.1:8888"}, "routes"),
        ({"routes": [{**ROUTE, "error_pages": {404: "x.html"}}]}, "routes[0].error_pages"),
    ],
)
def test_bad_types_and_values_name_their_key(data: dict[str, Any], key: str) -> None:
    assert error_for(data).key == key


def test_msg_spec_accepts_numbers_and_text() -> None:
    for value, expected in ((4, "4"), ("5", "5"), ("auto", "auto")):
        route = {**ROUTE, "legacy": {"msg_spec": value}}
        assert config_from_dict({"routes": [route]}).routes[0].legacy.msg_spec == expected


def test_routes_are_required_and_not_empty() -> None:
    assert str(error_for({})) == "proxy.yaml: routes: required key is missing"
    assert error_for({"routes": []}).key == "routes"
    assert str(error_for([ROUTE])) == "proxy.yaml: the top level must be a mapping"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: file not found"


def test_invalid_yaml_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "listen:\n  host: 127.0.0.1\n  port: [8890\nroutes: []\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid YAML: line 4, column 7: ")
    assert "expected ',' or ']'" in message


def test_tab_indentation_is_invalid_yaml_with_position(tmp_path: Path) -> None:
    path = write(tmp_path, "routes:\n\t- prefix: /\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: invalid YAML: line 2, column 1: ")


def test_empty_file_needs_routes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "# nothing yet\n"))
    assert caught.value.key == "routes"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_bytes(b"routes: \xff\xfe\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problem == "file is not UTF-8 text"


def test_env_vars_expand_with_and_without_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTEBOOK_URL", "http://127.0.0.1:8888")
    monkeypatch.setenv("EMPTY_PORT", "")
    monkeypatch.delenv("UNSET_HOST", raising=False)
    path = write(
        tmp_path,
        "listen:\n"
        "  host: ${UNSET_HOST:-127.0.0.2}\n"
        "  port: ${EMPTY_PORT:-9000}\n"
        "routes:\n"
        "  - prefix: /\n"
        "    upstream: ${NOTEBOOK_URL}/base/\n",
    )
    config = load_config(path)
    assert config.listen.host == "127.0.0.2"
    assert config.listen.port == 9000  # expanded text is then validated as a port
    assert config.routes[0].upstream == "http://127.0.0.1:8888/base/"


def test_env_var_that_is_set_but_empty_without_default_stays_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EMPTY_TOKEN", "")
    route = {**ROUTE, "request_headers": {"set": {"Authorization": "token ${EMPTY_TOKEN}"}}}
    config = config_from_dict({"routes": [route]})
    assert config.routes[0].request_headers.set == {"Authorization": "token "}


def test_missing_env_var_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_UPSTREAM", raising=False)
    error = error_for({"routes": [ROUTE, {"prefix": "/b/", "upstream": "${NO_SUCH_UPSTREAM}"}]})
    assert str(error) == (
        "proxy.yaml: routes[1].upstream: environment variable NO_SUCH_UPSTREAM is not set"
    )


def test_expanded_value_is_validated_like_a_literal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAD_UPSTREAM", "localhost:8888")
    error = error_for({"routes": [{"prefix": "/", "upstream": "${BAD_UPSTREAM}"}]})
    assert error.key == "routes[0].upstream"
    assert "'localhost:8888' is not an http(s) URL" in error.problem


def test_models_are_frozen() -> None:
    config = config_from_dict({"routes": [ROUTE]})
    with pytest.raises(ValueError):
        config.listen.port = 1  # type: ignore[misc]


SHIPPED_CONFIGS = [
    "config/proxy.yaml",
    "config/examples/single-upstream.yaml",
    "config/examples/static-remap.yaml",
    "config/examples/multi-upstream-env.yaml",
]


@pytest.mark.parametrize("path", SHIPPED_CONFIGS)
def test_shipped_configs_are_valid(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The examples read their upstreams from the environment.
    monkeypatch.setenv("NOTEBOOK_A", "http://127.0.0.1:8888")
    monkeypatch.setenv("NOTEBOOK_B", "http://127.0.0.1:8889")
    monkeypatch.setenv("UPSTREAM_TOKEN", "secret")
    assert isinstance(load_config(REPO / path), ProxyConfig)


def test_default_config_runs_the_embedded_server() -> None:
    config = load_config(REPO / "config" / "proxy.yaml")
    assert [(r.prefix, r.upstream) for r in config.routes] == [("/", "embedded")]
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 8890)
    assert (config.admin.host, config.admin.port) == ("127.0.0.1", 8891)


def test_trusted_proxies_are_addresses_or_networks() -> None:
    ok = config_from_dict(
        {"routes": [ROUTE], "trusted_proxies": ["10.0.0.0/8", "127.0.0.1", "::1"]}, "f.yaml"
    )
    assert ok.trusted_proxies == ["10.0.0.0/8", "127.0.0.1", "::1"]
    with pytest.raises(ConfigError) as caught:
        config_from_dict(
            {"routes": [ROUTE], "trusted_proxies": ["10.0.0.0/8", "lb.local"]}, "f.yaml"
        )
    assert str(caught.value) == (
        "f.yaml: trusted_proxies[1]: 'lb.local' is not an IP address or network"
    )
