"""``vnmini info`` checks integrity cheaply: a truncated safetensors file, shard ``.bin``, ``.gguf`` or ONNX
data file is one line naming the file, exit 2; a whole one is reported with ``ok``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest


def _one_line_error(cli, *args) -> str:
    code, out, err = cli(*args)
    assert code == 2, (code, out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def _truncate(path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def _info_ok(cli, path) -> dict:
    code, out, err = cli("info", path, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["ok"] is True
    return d


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_truncated_safetensors(cli, tiny_checkpoint, tmp_path):
    d = _info_ok(cli, tiny_checkpoint)
    assert d["kind"] == "checkpoint" and d["tensors"] > 0
    weights = tiny_checkpoint / "model.safetensors"
    size = weights.stat().st_size
    for keep in (size // 2, size - 1, 4, 0):
        bad = tmp_path / f"cut{keep}"
        shutil.copytree(tiny_checkpoint, bad)
        _truncate(bad / "model.safetensors", keep)
        err = _one_line_error(cli, "info", bad)
        assert str(bad / "model.safetensors") in err and ("truncated" in err or "corrupt" in err)
    # Bytes appended after the last tensor are damage too (the header no longer describes the file).
    extra = tmp_path / "extra"
    shutil.copytree(tiny_checkpoint, extra)
    with open(extra / "model.safetensors", "ab") as f:
        f.write(b"\0" * 10)
    assert "model.safetensors" in _one_line_error(cli, "info", extra)
    # No weights at all: incomplete, not "fine".
    gone = tmp_path / "gone"
    shutil.copytree(tiny_checkpoint, gone)
    (gone / "model.safetensors").unlink()
    assert "model.safetensors" in _one_line_error(cli, "info", gone)


def test_check_safetensors_header_lies(tmp_path):
    from safetensors.numpy import save_file

    from vnmini.errors import VnminiError
    from vnmini.models.hf import check_safetensors

    f = tmp_path / "w.safetensors"
    save_file({"a": np.zeros((3, 4), np.float32), "b": np.ones(5, np.int64)}, str(f))
    assert check_safetensors(f) == {"tensors": 2, "bytes": f.stat().st_size}
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["a"]["shape"] = [3, 5]  # shape no longer matches its byte range
    body = json.dumps(header).encode()
    f.write_bytes(len(body).to_bytes(8, "little") + body + raw[8 + n :])
    with pytest.raises(VnminiError, match="w.safetensors"):
        check_safetensors(f)
    f.write_bytes((10**12).to_bytes(8, "little") + raw[8:])  # header length past the end
    with pytest.raises(VnminiError, match="w.safetensors"):
        check_safetensors(f)


# ------------------------------------------------------------------ shards
def test_shards_truncated_bin(cli, law_corpus, tmp_path):
    law_corpus(tmp_path)
    shards = tmp_path / "shards"
    d = _info_ok(cli, shards)
    assert d["train_tokens"] > 0 and d["val_documents"] > 0
    manifest = json.loads((shards / "manifest.json").read_text())
    name = manifest["splits"]["train"]["files"][0]["name"]
    size = (shards / name).stat().st_size
    for keep in (size // 2, size - 2):
        bad = tmp_path / f"cut{keep}"
        shutil.copytree(shards, bad)
        _truncate(bad / name, keep)
        err = _one_line_error(cli, "info", bad)
        assert str(bad / name) in err and "vnmini data prepare" in err
    (shards / manifest["splits"]["val"]["files"][0]["name"]).unlink()
    assert "val_0000.bin" in _one_line_error(cli, "info", shards)


# ------------------------------------------------------------------ GGUF
def _write_gguf(path) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.arange(64 * 32, dtype=np.float32).reshape(64, 32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(32, dtype=np.float32))
    w.add_tensor("output.weight", np.zeros((64, 32), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_truncated(cli, tmp_path):
    good = tmp_path / "m.gguf"
    _write_gguf(good)
    d = _info_ok(cli, good)
    assert d["kind"] == "gguf" and d["tensors"] == 3
    data = good.read_bytes()
    for keep in (len(data) - 1, len(data) - 2048, len(data) // 2, 200, 40):
        bad = tmp_path / f"cut{keep}.gguf"
        bad.write_bytes(data[:keep])
        err = _one_line_error(cli, "info", bad)
        assert str(bad) in err and "truncated" in err


# ------------------------------------------------------------------ ONNX
def test_onnx_truncated_external_data(cli, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path / "o"
    folder.mkdir()
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])], [w])
    onnx.save_model(helper.make_model(graph), str(folder / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    assert _info_ok(cli, folder)["external_data"] is True
    _truncate(folder / "model.onnx.data", 1000)
    err = _one_line_error(cli, "info", folder)
    assert "model.onnx.data" in err and "truncated" in err
    (folder / "model.onnx.data").unlink()
    assert "model.onnx.data" in _one_line_error(cli, "info", folder)
