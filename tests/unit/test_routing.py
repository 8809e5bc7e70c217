"""Routing: longest prefix wins, legacy sockets are recognised, clients cannot steer upstream."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from proxy.config import config_from_dict
from proxy.routing import LegacyTarget, RouteTable

KERNEL = "4d2d8b4e-1c57-4f5e-9a0c-2b1f3e6d7a90"


def table(*routes: tuple[str, str], **extra: object) -> RouteTable:
    config = config_from_dict(
        {"routes": [{"prefix": p, "upstream": u, **extra} for p, u in routes]}, "test"
    )
    return RouteTable(config.routes, {"embedded": "http://127.0.0.1:5555/"})


ROUTES = table(
    ("/", "http://127.0.0.1:8888"),
    ("/static/ipython/", "http://127.0.0.1:8888/static/"),
    ("/team/", "http://127.0.0.1:9999/team/"),
    ("/api", "http://127.0.0.1:7777/v1"),
)


def upstream_of(path: str, query: str = "") -> str:
    resolved = ROUTES.match(path)
    assert resolved is not None
    return str(resolved.upstream_url_for(query=query))


def test_longest_prefix_wins() -> None:
    assert upstream_of("/team/notebooks/a.ipynb") == "http://127.0.0.1:9999/team/notebooks/a.ipynb"
    assert upstream_of("/tree") == "http://127.0.0.1:8888/tree"
    resolved = ROUTES.match("/static/ipython/components/jquery/jquery.min.js")
    assert resolved is not None and resolved.route.prefix == "/static/ipython/"


def test_order_in_the_file_does_not_matter() -> None:
    reversed_table = table(
        ("/api", "http://127.0.0.1:7777/v1"),
        ("/static/ipython/", "http://127.0.0.1:8888/static/"),
        ("/", "http://127.0.0.1:8888"),
    )
    resolved = reversed_table.match("/static/ipython/base/js/utils.js")
    assert resolved is not None and resolved.route.prefix == "/static/ipython/"


def test_static_prefix_remap() -> None:
    assert (
        upstream_of("/static/ipython/notebook/js/main.js")
        == "http://127.0.0.1:8888/static/notebook/js/main.js"
    )
    assert upstream_of("/static/ipython") == "http://127.0.0.1:8888/static/"
    assert upstream_of("/static/ipython/") == "http://127.0.0.1:8888/static/"


def test_prefix_without_slash_matches_whole_segments_only() -> None:
    assert upstream_of("/api") == "http://127.0.0.1:7777/v1/"
    assert upstream_of("/api/status") == "http://127.0.0.1:7777/v1/status"
    assert upstream_of("/apiary") == "http://127.0.0.1:8888/apiary"


def test_no_match_without_a_catch_all() -> None:
    only_static = table(("/static/", "http://127.0.0.1:8888/static/"))
    assert only_static.match("/api/kernels") is None
    assert only_static.match("/") is None
    assert only_static.match("/staticfiles/x") is None


def test_query_is_kept_and_path_stays_encoded() -> None:
    assert (
        upstream_of("/files/a%20b%2Fc.txt", "token=abc&download=1")
        == "http://127.0.0.1:8888/files/a%20b%2Fc.txt?token=abc&download=1"
    )


def test_embedded_upstream_is_resolved() -> None:
    routes = table(("/", "embedded"))
    resolved = routes.match("/api/status")
    assert resolved is not None
    assert str(resolved.upstream_url_for()) == "http://127.0.0.1:5555/api/status"


@pytest.mark.parametrize(
    ("path", "channel"),
    [
        (f"/api/kernels/{KERNEL}/shell", "shell"),
        (f"/api/kernels/{KERNEL}/iopub", "iopub"),
        (f"/api/kernels/{KERNEL}/stdin", "stdin"),
        (f"/kernels/{KERNEL}/shell", "shell"),  # IPython 1.x
        (f"/kernels/{KERNEL}/iopub/", "iopub"),
    ],
)
def test_legacy_sockets_in_both_forms(path: str, channel: str) -> None:
    resolved = ROUTES.match(path)
    assert resolved is not None
    assert resolved.legacy_target() == LegacyTarget(KERNEL, channel)


def test_legacy_sockets_under_a_prefix() -> None:
    resolved = ROUTES.match(f"/team/api/kernels/{KERNEL}/stdin")
    assert resolved is not None and resolved.route.prefix == "/team/"
    assert resolved.legacy_target() == LegacyTarget(KERNEL, "stdin")
    assert str(resolved.channels_url(KERNEL, "ABCDEF0123456789")) == (
        f"http://127.0.0.1:9999/team/api/kernels/{KERNEL}/channels?session_id=ABCDEF0123456789"
    )


@pytest.mark.parametrize(
    "path",
    [
        f"/api/kernels/{KERNEL}/channels",  # the modern socket is passed through
        f"/api/kernels/{KERNEL}/control",
        f"/api/kernels/{KERNEL}",
        f"/api/kernels/{KERNEL}/shell/extra",
        f"/api/kernel/{KERNEL}/shell",
        f"/v1/api/kernels/{KERNEL}/shell",  # not relative to the route prefix
    ],
)
def test_other_paths_are_not_legacy(path: str) -> None:
    resolved = ROUTES.match(path)
    assert resolved is not None and resolved.legacy_target() is None


def test_legacy_disabled_route_passes_everything_through() -> None:
    plain = table(("/", "http://127.0.0.1:8888"), legacy={"enabled": False})
    resolved = plain.match(f"/api/kernels/{KERNEL}/shell")
    assert resolved is not None and resolved.legacy_target() is None


@pytest.mark.parametrize(
    "kernel_id",
    [
        "abc",
        "a-b-c-d",
        "a-b-c-d-e-f",
        "..-..-..-..-..",
        "a.b-c-d-e-f",
        "a%2Fb-c-d-e-f",
        "a%2e-b-c-d-e",
        "a b-c-d-e-f",
        "ä-b-c-d-e",
        "-b-c-d-e",
        "a-b-c-d-" + "e" * 200,
    ],
)
def test_kernel_ids_that_are_not_uuid_like_are_rejected(kernel_id: str) -> None:
    resolved = ROUTES.match(f"/api/kernels/{kernel_id}/shell")
    assert resolved is not None and resolved.legacy_target() is None


@pytest.mark.parametrize(
    "path",
    [
        "//evil.example/x",
        "/static/ipython//evil.example/x",
        "/static/ipython/@evil.example/x",
        "/team/http://evil.example/x",
        "/team/%2F%2Fevil.example/x",
        "/team/\\\\evil.example/x",
        "/api@evil.example/x",
    ],
)
def test_path_cannot_change_the_upstream_host(path: str) -> None:
    resolved = ROUTES.match(path)
    assert resolved is not None
    target = resolved.upstream_url_for()
    assert target.raw_authority == resolved.upstream.raw_authority
    assert target.raw_path.startswith(resolved.upstream.raw_path.rstrip("/") + "/")


_PATH_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#")


@given(
    prefix=st.sampled_from(["/", "/static/ipython/", "/team/", "/api"]), rest=st.text(_PATH_CHARS)
)
def test_any_path_keeps_the_upstream_authority_and_base(prefix: str, rest: str) -> None:
    resolved = ROUTES.match(prefix + rest)
    if resolved is None:
        return
    target = resolved.upstream_url_for()
    assert target.scheme == resolved.upstream.scheme
    assert target.raw_authority == resolved.upstream.raw_authority
    assert target.raw_path.startswith(resolved.upstream.raw_path.rstrip("/") + "/")


def _normalised_upstream_path(url: URL) -> str:
    # What an upstream that resolves dot segments (nginx, aiohttp, most frameworks) serves.
    return posixpath.normpath(unquote(url.raw_path).replace("\\", "/"))


@pytest.mark.parametrize(
    "path",
    [
        "/team/../admin/secret",
        "/team/%2e%2e/admin/secret",
        "/team/..%2fadmin/secret",
        "/static/ipython/../../api/kernels",
        "/static/ipython/./../api/kernels",
    ],
)
def test_dot_segments_cannot_leave_the_upstream_base(path: str) -> None:
    assert ROUTES.match(path) is None
