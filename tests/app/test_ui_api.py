"""The web UI's named endpoints, driven over HTTP with gradio_client like any script would."""

from __future__ import annotations

import io
import urllib.error
import urllib.parse
import urllib.request

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from .app_server import start_app

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the app is local: never via a proxy


@pytest.fixture(scope="module")
def running_app(tmp_path_factory):
    """4 labelled classes × 4 images of 32 px, indexed with ``pixels`` and ``random:resnet10t``, served locally."""
    app = start_app(tmp_path_factory.mktemp("ui"), n_classes=4, per_class=4, size=32)
    yield app
    app.demo.close()


@pytest.fixture(scope="module")
def client(running_app):
    # download_files=False: results stay JSON; a returned dict with a "path" is not fetched as a file.
    return Client(running_app.url, download_files=False, verbose=False)


def _rel(running_app, path) -> str:
    return path.relative_to(running_app.collection).as_posix()


@pytest.mark.parametrize("index", ["pixels", "random"])
def test_search_finds_the_query_itself_first(client, running_app, index):
    query = running_app.images[5]
    gallery, results = client.predict(handle_file(str(query)), index, 4, api_name="/search")

    assert [r["rank"] for r in results] == [1, 2, 3, 4]
    assert results[0]["path"] == _rel(running_app, query)
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert all(a["score"] >= b["score"] for a, b in zip(results, results[1:]))
    # The gallery shows the same results, captioned "score · path".
    assert len(gallery) == 4
    assert gallery[0]["caption"] == f"{results[0]['score']:.3f} · {results[0]['path']}"


def test_compare_runs_one_query_against_each_index(client, running_app):
    query = running_app.images[9]
    by_index = client.predict(handle_file(str(query)), ["pixels", "random"], 3, api_name="/compare")

    assert set(by_index) == {"pixels", "random"}
    for results in by_index.values():
        assert len(results) == 3
        assert results[0]["path"] == _rel(running_app, query)
        assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_compare_defaults_to_every_index(client, running_app):
    by_index = client.predict(handle_file(str(running_app.images[0])), [], 2, api_name="/compare")
    assert list(by_index) == ["pixels", "random"]


def test_a_file_that_is_not_an_image_is_refused_with_the_reason(client, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a picture\n")
    with pytest.raises(AppError, match="Cannot use that image: not an image"):
        client.predict(handle_file(str(text)), "pixels", 3, api_name="/search")
    with pytest.raises(AppError, match="not an image"):
        client.predict(handle_file(str(text)), ["pixels"], 3, api_name="/compare")


def test_uploads_are_capped_at_20_mb(client, running_app, tmp_path):
    big = tmp_path / "huge.png"
    with open(big, "wb") as f:
        f.write(running_app.images[0].read_bytes())
        f.truncate(21 * 1024 * 1024)  # sparse: cheap to make
    with pytest.raises(ValueError, match="exceeds the maximum file size of 20971520 bytes"):
        client.predict(handle_file(str(big)), "pixels", 3, api_name="/search")


def test_an_unknown_index_is_refused_with_the_available_names(client, running_app):
    query = handle_file(str(running_app.images[0]))
    with pytest.raises(AppError, match=r"No index named 'nope'; available: pixels, random"):
        client.predict(query, "nope", 3, api_name="/search")
    with pytest.raises(AppError, match=r"No index named 'nope'"):
        client.predict(query, ["pixels", "nope"], 3, api_name="/compare")


def test_out_of_range_k_is_refused(client, running_app):
    with pytest.raises(AppError, match="k must be between 1 and"):
        client.predict(handle_file(str(running_app.images[0])), "pixels", 0, api_name="/search")


def test_only_files_of_indexed_collections_are_served(running_app, tmp_path):
    def status(path) -> int:
        url = running_app.url + "gradio_api/file=" + urllib.parse.quote(str(path))
        try:
            with _DIRECT.open(url, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    outside = tmp_path / "secret.png"
    outside.write_bytes(running_app.images[0].read_bytes())
    assert status(running_app.images[0]) == 200
    assert status(outside) == 403
    assert status(running_app.collection.parent / "indexes" / "pixels" / "manifest.json") == 403


def test_a_bare_path_payload_cannot_name_a_file_on_the_server(running_app, tmp_path):
    # gradio_client uploads local files itself, so speak the HTTP API directly, as a hostile client would.
    import json

    outside = tmp_path / "private.png"
    outside.write_bytes(running_app.images[0].read_bytes())
    call = running_app.url + "gradio_api/call/search"
    body = json.dumps({"data": [{"path": str(outside)}, "pixels", 2, False]}).encode()
    req = urllib.request.Request(call, data=body, headers={"Content-Type": "application/json"})
    with _DIRECT.open(req, timeout=10) as resp:
        event_id = json.load(resp)["event_id"]
    with _DIRECT.open(f"{call}/{event_id}", timeout=30) as resp:
        stream = resp.read().decode()
    assert "event: error" in stream and "must be uploaded" in stream
    assert "star" not in stream and "score" not in stream


def test_the_api_lists_exactly_the_named_endpoints(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/search", "/compare", "/mark", "/learn_marks"}
    assert [p["parameter_name"] for p in endpoints["/mark"]["parameters"]] == ["image", "index", "result", "right"]
    assert [p["parameter_name"] for p in endpoints["/learn_marks"]["parameters"]] == ["index"]
    assert [p["parameter_name"] for p in endpoints["/search"]["parameters"]] == ["image", "index", "k", "expand"]
    assert [p["parameter_name"] for p in endpoints["/compare"]["parameters"]] == ["image", "indexes", "k"]


# ----- serving safety, over real HTTP ----------------------------------------------------------------------------

def _non_loopback_address() -> str | None:
    """An address of this machine other than 127.x, if it has one (a UDP connect sends nothing)."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


def test_the_server_listens_on_loopback_only_and_made_no_share_link(running_app):
    import socket

    assert running_app.demo.server_name == "127.0.0.1"
    assert running_app.url.startswith("http://127.0.0.1:")
    assert getattr(running_app.demo, "share_url", None) is None
    addr = _non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address to try")
    port = urllib.parse.urlsplit(running_app.url).port
    with pytest.raises(OSError):
        socket.create_connection((addr, port), timeout=3).close()


def test_system_files_and_paths_climbing_out_of_a_collection_are_refused(running_app):
    def status(raw_path: str) -> int:
        url = running_app.url + "gradio_api/file=" + raw_path
        try:
            with _DIRECT.open(url, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    collection = str(running_app.collection)
    manifest_via_dotdot = collection + "/../indexes/pixels/manifest.json"
    for raw in ("/etc/passwd", urllib.parse.quote("/etc/passwd"), urllib.parse.quote(manifest_via_dotdot),
                manifest_via_dotdot, urllib.parse.quote(collection + "/../../../../etc/passwd"),
                collection.replace("/", "%2F") + "%2F..%2Findexes%2Fpixels%2Fmanifest.json"):
        assert status(raw) in (400, 403, 404), raw
    assert status(urllib.parse.quote(str(running_app.images[0]))) == 200  # an indexed image still is served


@pytest.mark.parametrize("name, write, reason", [
    ("bomb.png", "write_bomb_png", "too large: 40000x40000 pixels"),
    ("truncated.jpg", "write_truncated_jpeg", "truncated or corrupt image"),
    ("random.webp", "write_random", "not an image"),
    ("text.png", "write_text", "not an image"),
])
def test_hostile_uploads_are_refused_with_their_reason(client, tmp_path, name, write, reason):
    from tests import hostile

    path = getattr(hostile, write)(tmp_path / name)
    with pytest.raises(AppError, match=f"Cannot use that image: {reason}"):
        client.predict(handle_file(str(path)), "pixels", 3, api_name="/search")


@pytest.mark.parametrize("name, write", [
    ("cmyk.jpg", "write_cmyk_jpeg"), ("gray16.png", "write_gray16_png"), ("palette.gif", "write_palette_gif"),
    ("animated.gif", "write_animated"), ("rotated.jpg", "write_exif_rotated_jpeg"),
    ("été 🌞 photo.png", None),
])
def test_awkward_but_valid_uploads_are_searched(client, tmp_path, name, write):
    from tests import hostile

    path = getattr(hostile, write)(tmp_path / name) if write else hostile.write_bytes(tmp_path / name,
                                                                                      hostile.solid_png())
    _, results = client.predict(handle_file(str(path)), "pixels", 3, api_name="/search")
    assert len(results) == 3 and all(-1.0 <= r["score"] <= 1.0 + 1e-4 for r in results)


def test_the_gallery_sends_thumbnails_and_the_original_stays_served(client, running_app):
    """What the browser loads for a result is a cached JPEG thumbnail, not the original PNG."""
    gallery, results = client.predict(handle_file(str(running_app.images[3])), "pixels", 4, api_name="/search")
    thumbs = running_app.collection.parent / "indexes" / ".thumbnails"
    for item, result in zip(gallery, results):
        with _DIRECT.open(item["image"]["url"], timeout=10) as resp:
            data = resp.read()
        original = running_app.collection / result["path"]
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG" and max(im.size) <= 256
        assert data != original.read_bytes()
        assert data in {p.read_bytes() for p in thumbs.rglob("*.jpg")}  # the one made for it in the cache
        with _DIRECT.open(running_app.url + "gradio_api/file=" + urllib.parse.quote(str(original)),
                          timeout=10) as resp:
            assert resp.read() == original.read_bytes()  # the full picture is one request away


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_phone_photos_are_searched_and_a_broken_one_is_refused(client, running_app, tmp_path, fmt):
    from tests.phone import FORMATS, phone_bytes, write

    with Image.open(running_app.images[6]) as im:
        data = phone_bytes(im.convert("RGB"), fmt, quality=100)
    photo = write(tmp_path / f"phone{FORMATS[fmt]}", data)
    _, results = client.predict(handle_file(str(photo)), "pixels", 3, api_name="/search")
    assert results[0]["path"] == _rel(running_app, running_app.images[6]) and results[0]["score"] > 0.95
    broken = write(tmp_path / f"broken{FORMATS[fmt]}", data[:-12])
    with pytest.raises(AppError, match="Cannot use that image: truncated or corrupt image"):
        client.predict(handle_file(str(broken)), "pixels", 3, api_name="/search")
