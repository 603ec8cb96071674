"""`curl` of the catalog and tag lists, the way an operator checks what the mirror holds."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from conftest import push_tag
from skopeo import copy_through_mirror, write_registries_conf

PULLED = ["library/alpine:latest", "library/busybox:latest", "library/multi:v2s2", "private/secret:1.0",
          "library/layers40:latest"]
BUSYBOX_TAGS = ["1.35", "1.36", "1.37", "latest"]


def curl(url: str) -> tuple[int, dict, object]:
    """(status, lower-cased headers, parsed JSON body) of `curl -sS -D - URL`."""
    out = subprocess.run(["curl", "-sS", "--noproxy", "*", "-D", "-", url], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    head, _, body = out.partition("\n\n")  # text mode has turned CRLF into LF
    status_line, *header_lines = head.split("\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, json.loads(body)


def follow_pages(base_url: str, first_path: str, field: str, page_size: int) -> list:
    """Every item of a paged list, following `Link: <...>; rel="next"` as the spec says."""
    items, path, pages = [], first_path, 0
    while path:
        status, headers, body = curl(base_url + path)
        assert status == 200, (path, body)
        assert len(body[field]) <= page_size, (path, body)
        items += body[field]
        pages += 1
        link = headers.get("link")
        path = re.fullmatch(r'<([^>]+)>; rel="next"', link).group(1) if link else None
        assert pages <= 100, "paging does not end"
    return items


@pytest.fixture(scope="module")
def populated(cistern, hub, tmp_path_factory):
    """cistern after pulls of several repositories; busybox has more tags upstream."""
    for tag in BUSYBOX_TAGS[:-1]:
        push_tag(hub, "library/busybox", "latest", tag)
    conf = write_registries_conf(str(tmp_path_factory.mktemp("curl") / "registries.conf"), cistern.host)
    for image in PULLED:
        copy_through_mirror(conf, image, str(tmp_path_factory.mktemp("copy")))
    return cistern


def test_catalog_lists_what_was_pulled(populated):
    status, headers, body = curl(f"{populated.url}/v2/_catalog")
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    assert body == {"repositories": sorted(image.split(":")[0] for image in PULLED)}


def test_catalog_pages_with_link_headers(populated):
    everything = follow_pages(populated.url, "/v2/_catalog?n=2", "repositories", 2)
    assert everything == sorted(image.split(":")[0] for image in PULLED)


def test_tags_list_and_its_pages(populated):
    status, _, body = curl(f"{populated.url}/v2/library/busybox/tags/list")
    assert status == 200
    assert body == {"name": "library/busybox", "tags": BUSYBOX_TAGS}
    assert follow_pages(populated.url, "/v2/library/busybox/tags/list?n=1", "tags", 1) == BUSYBOX_TAGS


def test_private_tags_are_listed_with_stored_credentials(populated):
    status, _, body = curl(f"{populated.url}/v2/private/secret/tags/list")
    assert (status, body) == (200, {"name": "private/secret", "tags": ["1.0"]})
