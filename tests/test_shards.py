"""Token shards decode back to the normalized corpus; dtype, split, boundaries, tokenizer mismatch, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vnmini.data.corpus import read_documents
from vnmini.data.shards import ShardReader, dtype_for_vocab, prepare_shards
from vnmini.errors import VnminiError
from vnmini.text.tokenizer_train import train_tokenizer

LINES = [f"Điều {i}. Người lao động thứ {i} được hoà giải về thuỷ lợi, khoẻ mạnh và quý trọng." for i in range(60)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(LINES * 2, vocab_size=500, is_text=True)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in LINES), encoding="utf-8")
    return path


def test_shards_decode_to_normalized_corpus(tmp_path, tok, corpus):
    m = prepare_shards([corpus], tok, tmp_path / "s", val_fraction=0.1, shard_tokens=1024, progress=False)
    assert m["dtype"] == "uint16" and m["tokenizer_hash"] == tok.hash
    assert m["splits"]["val"]["documents"] == 6 and m["splits"]["train"]["documents"] == 54
    assert len(m["splits"]["train"]["files"]) > 1  # documents run across shard files
    train = ShardReader(tmp_path / "s", "train", tokenizer_hash=tok.hash)
    val = ShardReader(tmp_path / "s", "val")
    assert len(train) == m["splits"]["train"]["tokens"]
    # Reading across a file boundary equals the concatenation of the files.
    whole = np.concatenate([np.fromfile(tmp_path / "s" / f["name"], dtype=np.uint16)
                            for f in m["splits"]["train"]["files"]])
    assert np.array_equal(train.read(1000, 100), whole[1000:1100].astype(np.int64))
    assert train.read(len(train) - 3, 10).tolist() == whole[-3:].tolist()
    decoded = [tok.decode(d) for d in train.iter_documents()] + [tok.decode(d) for d in val.iter_documents()]
    assert sorted(decoded) == sorted(read_documents(corpus))
    assert train.read(0, 1)[0] == tok.bos_id
    assert (m["splits"]["train"]["bytes"] + m["splits"]["val"]["bytes"]
            == sum(len(t.encode()) for t in read_documents(corpus)))


def test_dtype_and_mismatch(tmp_path, tok, corpus):
    assert dtype_for_vocab(65535) == np.uint16 and dtype_for_vocab(65536) == np.uint32
    prepare_shards([corpus], tok, tmp_path / "s", val_fraction=0.0, progress=False)
    other = train_tokenizer(LINES, vocab_size=400, is_text=True, seed_weight=0)
    with pytest.raises(VnminiError, match=f"made with tokenizer {tok.hash}.*uses tokenizer {other.hash}"):
        ShardReader(tmp_path / "s", tokenizer_hash=other.hash)
    (tmp_path / "s" / "train_0000.bin").write_bytes(b"\x00\x01")
    with pytest.raises(VnminiError, match="expected"):
        ShardReader(tmp_path / "s")


def test_too_few_documents_for_val(tmp_path, tok):
    f = tmp_path / "one.txt"
    f.write_text(LINES[0], encoding="utf-8")
    with pytest.raises(VnminiError, match="--val-fraction 0"):
        prepare_shards([f], tok, tmp_path / "s", val_fraction=0.01, progress=False)
    assert not (tmp_path / "s").exists()  # atomic: nothing half-written


@pytest.mark.parametrize("bad", ["empty", "bin.txt", "trunc.txt.gz", "wrong.jsonl"])
def test_cli_bad_inputs_exit_2(tmp_path, tok, cli, bad):
    import gzip

    tok.save(tmp_path / "tok")
    p = tmp_path / bad
    if bad == "empty":
        p.mkdir()
    elif bad == "bin.txt":
        p.write_bytes(b"\x7fELF\x00\x00" * 50)
    elif bad == "trunc.txt.gz":
        p.write_bytes(gzip.compress(("\n".join(LINES)).encode())[:30])
    else:
        p.write_text('{"body": "x"}\n', encoding="utf-8")
    code, out, err = cli("data", "prepare", p, "--tokenizer", tmp_path / "tok", "--out", tmp_path / "s",
                         "--no-progress")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and bad in err


def test_cli_prepare(tmp_path, tok, corpus, cli):
    tok.save(tmp_path / "tok")
    code, out, err = cli("data", "prepare", corpus, "-t", tmp_path / "tok", "-o", tmp_path / "s",
                         "--val-fraction", "0.1", "--no-progress")
    assert code == 0, err
    assert "train" in out and (tmp_path / "s" / "manifest.json").is_file()
