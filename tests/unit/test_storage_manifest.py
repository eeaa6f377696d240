from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from substratus.storage import MANIFEST_NAME, FileEntry, Manifest, build_manifest, human_size

SHA_EMPTY = hashlib.sha256(b"").hexdigest()
ZERO = "0" * 64


def _doc(*files: dict[str, object], **top: object) -> str:
    return json.dumps({"created": "x", "files": list(files), **top})


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0"),
        (1, "1"),
        (512, "512"),
        (1023, "1023"),
        (1024, "1Ki"),
        (1536, "1.5Ki"),
        (1100, "1.1Ki"),  # 1.074 rounds to one decimal
        (1075, "1Ki"),  # 1.0498 -> 1.0 -> "1Ki", never "1.0Ki"
        (1024**2 - 1, "1Mi"),  # 1023.999Ki rounds up into the next unit
        (5 * 1024**2, "5Mi"),
        (27 * 1024**3, "27Gi"),
        (int(1.5 * 1024**3), "1.5Gi"),
        (int(2.25 * 1024**4), "2.3Ti"),  # half up
        (1024**6, "1Ei"),
        (2048 * 1024**6, "2048Ei"),  # no unit above Ei
    ],
)
def test_human_size(n: int, expected: str) -> None:
    assert human_size(n) == expected


def test_human_size_rejects_negative() -> None:
    with pytest.raises(ValueError):
        human_size(-1)


def _tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "b.txt").write_text("bee")
    (root / "a.bin").write_bytes(b"\x00\x01")
    (root / "sub" / "c.txt").write_text("sea")
    (root / "sub" / "deeper" / "d").write_bytes(b"")
    (root / MANIFEST_NAME).write_text("{}")  # an old manifest at the top is not content
    (root / "sub" / MANIFEST_NAME).write_text("nested ones are")


def test_build_manifest_walks_sorted_with_hashes(tmp_path: Path) -> None:
    _tree(tmp_path)
    m = build_manifest(tmp_path)
    assert [f.path for f in m.files] == [
        "a.bin",
        "b.txt",
        "sub/c.txt",
        "sub/deeper/d",
        f"sub/{MANIFEST_NAME}",
    ]
    by_path = {f.path: f for f in m.files}
    assert by_path["b.txt"] == FileEntry("b.txt", 3, hashlib.sha256(b"bee").hexdigest())
    assert by_path["sub/deeper/d"] == FileEntry("sub/deeper/d", 0, SHA_EMPTY)
    assert m.total_size == 2 + 3 + 3 + 0 + len("nested ones are")
    assert m.created.endswith("Z") and m.created[:4].isdigit()


def test_build_manifest_follows_file_links_not_dir_links(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "real").write_text("x")
    (src / "link").symlink_to("real")
    (src / "dirlink").symlink_to(tmp_path)  # would loop if followed
    (src / "dangling").symlink_to("nowhere")
    m = build_manifest(src)
    assert [f.path for f in m.files] == ["link", "real"]
    assert m.files[0].sha256 == m.files[1].sha256


def test_build_manifest_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        build_manifest(tmp_path / "missing")


def test_manifest_json_round_trip(tmp_path: Path) -> None:
    _tree(tmp_path)
    m = build_manifest(tmp_path)
    text = m.to_json()
    doc = json.loads(text)
    assert doc["totalSize"] == m.total_size
    assert doc["files"][0] == {"path": "a.bin", "size": 2, "sha256": m.files[0].sha256}
    assert Manifest.from_json(text) == m
    assert Manifest.from_json(text.encode()) == m


@pytest.mark.parametrize(
    "path", ["../x", "/etc/passwd", "a/../../x", "a//b", "./a", "a\\b", "", MANIFEST_NAME]
)
def test_manifest_rejects_unsafe_paths(path: str) -> None:
    with pytest.raises(ValueError, match="path"):
        Manifest.from_json(_doc({"path": path, "size": 1, "sha256": ZERO}))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("not json", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"files": []}', "created"),
        (_doc(version=2), "version"),
        (_doc({"path": "a", "size": -1, "sha256": ZERO}), "size"),
        (_doc({"path": "a", "size": True, "sha256": ZERO}), "size"),
        (_doc({"path": "a", "size": 1, "sha256": "XYZ"}), "sha256"),
        (_doc({"path": "a", "size": 1, "sha256": "A" * 64}), "sha256"),
        (
            _doc(
                {"path": "a", "size": 1, "sha256": ZERO}, {"path": "a", "size": 1, "sha256": ZERO}
            ),
            "twice",
        ),
    ],
)
def test_manifest_rejects_malformed(doc: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Manifest.from_json(doc)
