"""hsb.wire.auth.load_secret in-process: the secret is the file's bytes without surrounding
whitespace, and each way a secret file can be unfit is refused with one line naming the fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hsb.wire.auth import SecretFileError, load_secret


def secret_file(tmp_path: Path, data: bytes, mode: int = 0o600) -> Path:
    p = tmp_path / "secret"
    p.write_bytes(data)
    os.chmod(p, mode)
    return p


def test_the_secret_is_the_files_bytes_without_surrounding_whitespace(tmp_path: Path) -> None:
    assert load_secret(secret_file(tmp_path, b"  c2VjcmV0 \n")) == b"c2VjcmV0"


@pytest.mark.parametrize(
    ("data", "mode", "says"),
    [
        (b" \n\t\n", 0o600, "is empty; put a random secret in it"),
        (b"s" * 32, 0o640, "accessible by group or others (mode 640); run 'chmod 600"),
        (b"s" * 32, 0o604, "accessible by group or others (mode 604); run 'chmod 600"),
        (b"s" * 32, 0o610, "accessible by group or others (mode 610); run 'chmod 600"),
    ],
)
def test_an_unfit_secret_file_is_refused_with_one_line_naming_the_fix(tmp_path: Path, data: bytes, mode: int, says: str) -> None:
    with pytest.raises(SecretFileError) as ei:
        load_secret(secret_file(tmp_path, data, mode))
    assert says in str(ei.value) and "\n" not in str(ei.value)


def test_a_missing_file_or_a_directory_is_refused_with_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match="does not exist; create it with"):
        load_secret(tmp_path / "nope")
    with pytest.raises(SecretFileError, match="is a directory; give the path of the secret file"):
        load_secret(tmp_path)
