"""``glm_core.data_files``: JSON-lines reading, with errors naming the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from glm_core.data_files import iter_jsonl, read_jsonl
from glm_core.errors import DataError


def test_objects_with_their_line_numbers_blank_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n\n  \r\n{"b": [2]}\r\n{"c": "x"}\r{"d": null}')
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (4, {"b": [2]}), (5, {"c": "x"}), (6, {"d": None})]
    assert read_jsonl(str(path)) == [{"a": 1}, {"b": [2]}, {"c": "x"}, {"d": None}]


def test_unicode_line_separators_inside_strings_do_not_end_a_line(tmp_path: Path) -> None:
    # JSON allows U+2028, U+2029 and U+0085 unescaped in strings (json.dumps(ensure_ascii=False) writes them so).
    path = tmp_path / "d.jsonl"
    path.write_text('{"t": "a\u2028b\u0085c"}\n{"t": "d"}\n', encoding="utf-8")
    assert list(iter_jsonl(path)) == [(1, {"t": "a\u2028b\u0085c"}), (2, {"t": "d"})]


def test_empty_file_reads_as_no_objects(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n\n")
    assert read_jsonl(path) == []


def test_missing_file_names_the_file_and_its_kind(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=r"nope\.jsonl: task file not found; expected a JSON-lines file"):
        read_jsonl(path, kind="task file")


def test_a_directory_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read data file"):
        read_jsonl(tmp_path)


def test_bad_utf8_names_the_line_and_the_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    data = b'{"a": 1}\n{"b": "caf\xe9"}\n'
    path.write_bytes(data)
    assert data.index(b"\xe9") == 19  # the offset counts from the start of the file, not of the line
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid UTF-8 \(byte 0xe9 at offset 19\)"):
        read_jsonl(path)


def test_malformed_json_names_the_line_and_what_was_expected(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid JSON \(.*\); expected a JSON object per line"):
        read_jsonl(path)


def test_a_line_that_is_not_an_object_names_what_one_line_must_hold(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:2: expected a JSON object with text, got list"):
        read_jsonl(path, record="a JSON object with text")


def test_lines_after_the_last_one_read_are_not_checked(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n{oops\n\xff\n')
    rows = iter_jsonl(path)
    assert next(rows) == (1, {"a": 1})
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid JSON"):
        next(rows)
