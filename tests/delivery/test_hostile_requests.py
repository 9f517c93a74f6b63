"""Hostile requests against the local ServiceX endpoint: each is refused with a 4xx and a reason,
and nothing from a request ever runs.

The endpoint is the real one (HTTP server and worker processes, as the other delivery tests start
it), shared by the module. Every exploit would create a sentinel file; the tests assert it does not
exist and that the refused request never reached the request store.
"""

from __future__ import annotations

import http.client
import json
import socket
import time

import conftest_delivery as shared
import pytest

from utils.delivery.local import LocalEndpoint
from utils.delivery.query import func_adl_qastle, skim_definition, uproot_raw_selection
from utils.errors import DeliveryError

workdir, inputs, endpoint = shared.workdir, shared.inputs, shared.endpoint


@pytest.fixture
def sentinel(tmp_path):
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "a request ran code on the endpoint"


def _request(ep, method, path, body=None, headers=None, token=True, host=None):
    """(status, parsed JSON or text) of one raw HTTP request to ``ep``."""
    conn = http.client.HTTPConnection("127.0.0.1", ep.port, timeout=30)
    all_headers = {"Host": host or f"127.0.0.1:{ep.port}"}
    if token:
        all_headers["Authorization"] = f"Bearer {ep.token if token is True else token}"
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
    all_headers.update(headers or {})
    try:
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        data = response.read().decode(errors="replace")
    finally:
        conn.close()
    try:
        return response.status, json.loads(data)
    except json.JSONDecodeError:
        return response.status, data


def _input(ep) -> str:
    path = ep.state_dir.parent / "hostile.root"
    if not path.is_file():
        shared.write_ntuple(path, 20, seed=9)
    return str(path)


def _submit(ep, codegen, selection, **kwargs):
    body = {
        "title": "hostile",
        "codegen": codegen,
        "file-list": [_input(ep)],
        "result-format": "root-file",
        "result-destination": "object-store",
        "selection": selection if isinstance(selection, str) else json.dumps(selection),
    }
    return _request(ep, "POST", "/servicex/transformation", body, **kwargs)


def _refused(ep, status, answer, code, *words):
    assert status == code, answer
    message = answer["message"] if isinstance(answer, dict) else answer
    assert "\n" not in message and all(w in message for w in words), message


def test_authenticated_project_queries_are_accepted(endpoint, inputs):
    """The control: the project's own queries, with the token, are served."""
    skim = skim_definition()
    for codegen, selection in (
        ("uproot-raw", uproot_raw_selection(skim, "events")),
        ("uproot", func_adl_qastle(skim, "events")),
    ):
        status, answer = _submit(endpoint, codegen, selection)
        assert status == 200, answer
        assert endpoint.store.get(answer["request_id"]) is not None


UPROOT_RAW_EXPLOITS = {
    "attribute walk to __import__": "().__class__.__base__.__subclasses__()[0].__init__.__globals__"
    "['__builtins__']['__import__']('os').system('touch {sentinel}')",
    "__import__ os system": "__import__('os').system('touch {sentinel}')",
    "attribute of a branch": "jet_pt.__class__",
    "dunder name": "__builtins__",
    "import via builtins name": "__builtins__.__import__('os')",
    "lambda calling a builtin": "(lambda: open('{sentinel}', 'w'))()",
    "getattr": "getattr(jet_pt, '__class__')",
    "eval": "eval(\"open('{sentinel}', 'w')\")",
    "exec": "exec('import os')",
    "open": "open('{sentinel}', 'w')",
    "str.format walk": "'{{0.__class__}}'.format(jet_pt)",
    "percent formatting": "'%s' % jet_pt",
    "f-string": "f'{{jet_pt}}'",
    "comprehension": "[c for c in ().__class__.__base__.__subclasses__()]",
    "walrus": "(x := jet_pt)",
    "private name": "_secret + 1",
    "huge integer": "jet_pt * 123456789012345678901234567890",
    "not an expression": "import os",
}


@pytest.mark.parametrize("where", ["cut", "expressions", "aliases"])
@pytest.mark.parametrize("name", sorted(UPROOT_RAW_EXPLOITS))
def test_uproot_raw_code_is_refused(endpoint, sentinel, name, where):
    text = UPROOT_RAW_EXPLOITS[name].format(sentinel=sentinel)
    sub = {"treename": "events"}
    if where == "cut":
        sub["cut"] = text
    elif where == "expressions":
        sub["expressions"] = ["jet_pt", text]
    else:
        sub.update(aliases={"x": text}, expressions=["x"])
    n_requests = len(endpoint.store.all())
    status, answer = _submit(endpoint, "uproot-raw", [sub])
    _refused(endpoint, status, answer, 400, "uproot-raw selection")
    assert len(endpoint.store.all()) == n_requests  # refused before anything was stored or dispatched


def _events(body: str) -> str:
    return f"(Select (call EventDataset 'bogus.root' 'events') (lambda (list e) {body}))"


QASTLE_EXPLOITS = {
    "__import__ os system": "(call (attr (call __import__ 'os') 'system') 'touch {sentinel}')",
    "__import__ inside a lambda": _events("(call (attr (call __import__ 'os') 'system') 'touch {sentinel}')"),
    "attribute walk": _events("(attr (attr e '__class__') '__subclasses__')"),
    "dunder attribute": _events("(attr e '__dict__')"),
    "getattr": _events("(call getattr e '__class__')"),
    "open": _events("(call open '{sentinel}' 'w')"),
    "eval": _events("(call eval '1')"),
    "method call": _events("(call (attr (attr e 'jet_pt') 'tolist'))"),
    "string formatting": _events("(call (attr '{{0.__class__}}' 'format') e)"),
    "lambda called directly": _events("(call (lambda (list x) (call open '{sentinel}' 'w')) 1)"),
    "free name": _events("(attr os 'system')"),
    "not a dataset": "(Select (call open '{sentinel}') (lambda (list e) e))",
    "string constant": _events("(+ (attr e 'jet_pt') 'a')"),
}


@pytest.mark.parametrize("name", sorted(QASTLE_EXPLOITS))
def test_func_adl_code_is_refused(endpoint, sentinel, name):
    n_requests = len(endpoint.store.all())
    status, answer = _submit(endpoint, "uproot", QASTLE_EXPLOITS[name].format(sentinel=sentinel))
    _refused(endpoint, status, answer, 400, "func_adl")
    assert len(endpoint.store.all()) == n_requests


@pytest.mark.parametrize(
    ("token", "words"),
    [(None, "missing 'Authorization"), ("wrong", "invalid or expired"), ("a.b.c", "invalid or expired")],
)
@pytest.mark.parametrize("path", ["/servicex", "/servicex/transformation", "/servicex/datasets"])
def test_missing_or_wrong_token_is_refused(endpoint, inputs, path, token, words):
    status, answer = _request(endpoint, "GET", path, token=token or False)
    _refused(endpoint, status, answer, 401, words)
    assert str(inputs[0].parent) not in json.dumps(answer)  # the input listing is for clients with the token


def test_unauthenticated_submission_runs_nothing(endpoint, sentinel):
    n_requests = len(endpoint.store.all())
    status, answer = _submit(endpoint, "uproot-raw", [{"treename": "events"}], token=False)
    _refused(endpoint, status, answer, 401, "Authorization")
    assert len(endpoint.store.all()) == n_requests


def test_token_refresh_gives_a_working_access_token(endpoint):
    status, answer = _request(endpoint, "POST", "/token/refresh")
    assert status == 200, answer
    access = answer["access_token"]
    assert _request(endpoint, "GET", "/servicex", token=access)[0] == 200
    forged = access[:-4] + ("AAAA" if not access.endswith("AAAA") else "BBBB")
    _refused(endpoint, *_request(endpoint, "GET", "/servicex", token=forged), 401, "invalid")
    # an access token cannot be traded for another: only the refresh token can
    _refused(endpoint, *_request(endpoint, "POST", "/token/refresh", token=access), 401, "invalid")


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "attacker.test:{port}", "127.0.0.1.nip.io:{port}"]
)
def test_wrong_host_is_refused(endpoint, host):
    status, answer = _request(endpoint, "GET", "/servicex", host=host.format(port=endpoint.port))
    _refused(endpoint, status, answer, 421, "is not this endpoint")


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}"])
def test_loopback_hosts_are_served(endpoint, host):
    assert _request(endpoint, "GET", "/servicex", host=host.format(port=endpoint.port))[0] == 200


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1", "https://localhost"])
def test_cross_site_origin_is_refused(endpoint, sentinel, origin):
    n_requests = len(endpoint.store.all())
    status, answer = _submit(endpoint, "uproot-raw", [{"treename": "events"}], headers={"Origin": origin})
    _refused(endpoint, status, answer, 403, "cross-origin")
    assert len(endpoint.store.all()) == n_requests


def test_text_plain_post_is_refused(endpoint, sentinel):
    """What a web page can send without a preflight: refused with and without the token."""
    body = json.dumps({"codegen": "uproot-raw", "selection": "[]", "file-list": ["/x.root"]}).encode()
    n_requests = len(endpoint.store.all())
    plain = {"Content-Type": "text/plain"}
    _refused(endpoint, *_request(endpoint, "POST", "/servicex/transformation", body, plain, token=False), 401, "Bearer")
    _refused(endpoint, *_request(endpoint, "POST", "/servicex/transformation", body, plain), 415, "application/json")
    assert len(endpoint.store.all()) == n_requests


def test_oversized_body_is_refused_unread(endpoint):
    """A Content-Length over the limit is answered at once, before any of the body arrives."""
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=30) as s:
        s.sendall(
            f"POST /servicex/transformation HTTP/1.1\r\nHost: 127.0.0.1:{endpoint.port}\r\n"
            f"Authorization: Bearer {endpoint.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {endpoint.max_body_bytes + 1}\r\n\r\n".encode()
        )
        answer = b""
        while chunk := s.recv(65536):  # the endpoint closes the connection after its answer
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413") and "over the limit" in answer, answer


def test_body_limit_is_configurable(tmp_path):
    with LocalEndpoint(tmp_path / "state", dispatch=False, max_body_bytes=1000) as ep:
        status, answer = _submit(ep, "uproot-raw", [{"treename": "events", "filter_name": ["x" * 2000]}])
        _refused(ep, status, answer, 413, "over the limit of 1000 bytes")


@pytest.fixture(scope="module")
def delivered(endpoint, inputs):
    """A finished request (bucket) with one object."""
    status, answer = _submit(endpoint, "uproot-raw", [{"treename": "events", "filter_name": "jet_pt"}])
    assert status == 200, answer
    request_id = answer["request_id"]
    for _ in range(1200):  # waits for the worker (at most 2 min), not a timing assertion
        if endpoint.store.get(request_id).status in ("Complete", "Fatal"):
            break
        time.sleep(0.1)
    assert endpoint.store.get(request_id).status == "Complete"
    return request_id


def _s3_headers(ep, access_key=None):
    key = access_key or ep.credentials.s3_access_key
    return {"Authorization": f"AWS4-HMAC-SHA256 Credential={key}/20260101/us-east-1/s3/aws4_request, Signature=0"}


@pytest.mark.parametrize(
    "path",
    [
        "/{rid}/..%2F..%2Fendpoint.json",
        "/{rid}/../../endpoint.json",
        "/{rid}/%2Fetc%2Fpasswd",
        "/{rid}/a%5C..%5Cb",
        "/{rid}/x%00.root",
        "/..%2Fendpoint.json/x",
        "/..%2F..%2F/x",
    ],
)
def test_path_traversal_in_s3_names_is_refused(endpoint, delivered, path):
    status, answer = _request(endpoint, "GET", path.format(rid=delivered), headers=_s3_headers(endpoint), token=False)
    assert status == 400, answer
    assert "not allowed" in answer["message"] or "is not a request id" in answer["message"], answer
    assert endpoint.token not in str(answer)


def test_s3_needs_the_access_key(endpoint, delivered):
    listing = f"/{delivered}?list-type=2"
    assert _request(endpoint, "GET", listing, headers=_s3_headers(endpoint), token=False)[0] == 200
    assert _request(endpoint, "GET", listing, token=False)[0] == 401
    assert _request(endpoint, "GET", listing, headers=_s3_headers(endpoint, "agc-local"), token=False)[0] == 401


@pytest.mark.parametrize("path", ["../../etc/passwd", "relative.root", "/data/../../etc/passwd", "/x\x00.root"])
def test_traversal_in_input_paths_is_refused(endpoint, path):
    body = {"codegen": "uproot-raw", "selection": '[{"treename": "events"}]', "file-list": [path]}
    status, answer = _request(endpoint, "POST", "/servicex/transformation", body)
    _refused(endpoint, status, answer, 400, "input path")


def test_deeply_nested_body_is_refused(endpoint):
    body = b"[" * 100_000 + b"]" * 100_000
    status, answer = _request(endpoint, "POST", "/servicex/transformation", body, {"Content-Type": "application/json"})
    _refused(endpoint, status, answer, 400, "nested too deeply")


def test_non_loopback_bind_is_refused(tmp_path):
    with pytest.raises(DeliveryError, match="binds loopback only"):
        LocalEndpoint(tmp_path / "state", host="0.0.0.0")
    assert not (tmp_path / "state").exists()
