"""``vnmini tokenizer adopt``: a student vocabulary that is a subset of the teacher's.

Oracles: llama-cpp-python for GGUF teachers (real vocabularies from the llama-cpp-python
sdist: Llama-2 SPM, Phi-3 SPM, Qwen2 and Llama-3 byte-level BPE), Hugging Face
``tokenizers`` for HF folders. On text whose teacher tokens are all kept, the student's
ids mapped through teacher_map.json must be the teacher's ids; any text must encode
losslessly (byte fallback / byte alphabet, never <unk>).
"""

from __future__ import annotations

import json
import unicodedata

import pytest
from conftest import LAW_LINES, VI_SAMPLE

from vnmini.text.adopt import MAP_FILE, adopt_tokenizer
from vnmini.text.tokenizer import VnTokenizer

EXTRA = ["  12345 số\n\nxuống  dòng\t😀 I'm OK, 3,14%", unicodedata.normalize("NFD", "Hoà bình, thuỷ lợi, Điều 7."),
         "ĐIỀU 15. Nghĩa vụ dân sự — “bồi thường” (khoản 2)!"]


def _corpus(tmp_path):
    lines = [*VI_SAMPLE.splitlines(), *LAW_LINES, *EXTRA]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, lines


def _check(tok, teacher_encode, lines, min_equal):
    """Lossless on every line; exactly the teacher's ids on lines whose teacher tokens are all kept."""
    m = tok.teacher_map.student_to_teacher
    kept = set(m)
    equal = 0
    for line in lines:
        norm = tok.normalize(line)
        got = tok.encode(line)
        assert tok.decode(got) == norm, norm
        unk = tok.hf.token_to_id(tok.specials.unk) if tok.specials.unk else None
        assert unk not in got, norm
        want = teacher_encode(norm)
        if all(t in kept for t in want):
            assert [m[i] for i in got] == want, norm
            equal += 1
    assert equal >= min_equal, f"only {equal} of {len(lines)} lines were all-kept"


@pytest.mark.parametrize("name", ["llama-spm", "phi-3", "qwen2", "llama-bpe"])
def test_adopted_gguf_vocab_tokenizes_like_llama_cpp(vocab_dir, tmp_path, name):
    from llama_cpp import Llama

    path = vocab_dir / f"ggml-vocab-{name}.gguf"
    corpus, lines = _corpus(tmp_path)
    res = adopt_tokenizer(path, [corpus], vocab_size=1500, out=tmp_path / "tok", progress=False)
    assert res.coverage == 1.0 and res.counts_used == res.kept_from_corpus
    tok = VnTokenizer.load(tmp_path / "tok")  # round trip: tokenizer.json + teacher_map.json
    assert tok.vocab_size == 1500 and tok.teacher_map == res.tokenizer.teacher_map
    assert tok.style == ("sentencepiece" if name in ("llama-spm", "phi-3") else "byte-level")
    ref = Llama(str(path), vocab_only=True, verbose=False)
    teacher = [ref.detokenize([i], special=True) for i in tok.teacher_map.student_to_teacher[:50]]
    assert all(isinstance(t, bytes) for t in teacher)
    assert tok.bos_id is None or tok.teacher_map.student_to_teacher[tok.bos_id] == ref.token_bos()
    _check(tok, lambda s: ref.tokenize(s.encode(), add_bos=False, special=True), lines,
           min_equal=len(lines) * 3 // 4)


def test_adopted_hf_folders_tokenize_like_tokenizers(tmp_path):
    """Byte-level (Qwen2-style) and SentencePiece-style (▁ + byte fallback) HF folders as teachers."""
    from test_open_world import save_foreign, spm_style_tokenizer
    from tokenizers import Tokenizer

    corpus, lines = _corpus(tmp_path)
    save_foreign(tmp_path / "qwen", "qwen2", "qwen2")
    spm = tmp_path / "spm"
    VnTokenizer(spm_style_tokenizer(), chat_template="", pre_tokenizer_name=None, source="spm",
                specials=VnTokenizer.load(tmp_path / "qwen").specials.__class__(
                    bos="<s>", eos="</s>", pad=None, unk="<unk>", eot=(), add_bos=True)).save(spm)
    for folder in (tmp_path / "qwen", spm):
        ref = Tokenizer.from_file(str(folder / "tokenizer.json"))
        size = ref.get_vocab_size() - 40
        res = adopt_tokenizer(folder, [corpus], vocab_size=size, out=tmp_path / f"{folder.name}-tok", progress=False)
        tok = VnTokenizer.load(tmp_path / f"{folder.name}-tok")
        teacher = VnTokenizer.load(folder)
        assert tok.vocab_size == size and (tok.bos_id, tok.eos_id, tok.add_bos) == (teacher.bos_id, teacher.eos_id,
                                                                                     teacher.add_bos)
        assert {tok.id_to_token(i) for i in tok.stop_ids} == {teacher.id_to_token(i) for i in teacher.stop_ids}
        assert tok.chat_template == teacher.chat_template
        _check(tok, lambda s, ref=ref: ref.encode(s, add_special_tokens=False).ids, lines, min_equal=len(lines) // 2)
        assert res.tokenizer.teacher_map.teacher_vocab_size == ref.get_vocab_size()


def test_adopt_cli_and_refusals(vocab_dir, tmp_path, cli):
    corpus, _ = _corpus(tmp_path)
    gguf = vocab_dir / "ggml-vocab-llama-spm.gguf"
    out = tmp_path / "tok"
    code, so, se = cli("tokenizer", "adopt", "--from", str(gguf), "--corpus", str(corpus), "--vocab-size", "800",
                       "-o", str(out))
    assert code == 0, se
    assert "tokens per syllable" in so and (out / MAP_FILE).is_file()
    m = json.loads((out / MAP_FILE).read_text())
    assert len(m["student_to_teacher"]) == 800 and m["teacher_vocab_size"] == 32000
    code, _, se = cli("tokenizer", "adopt", "--from", str(gguf), "--corpus", str(corpus), "-o", str(out))
    assert code == 2 and "--force" in se
    for args, want in [(["--vocab-size", "100"], "--vocab-size"), (["--vocab-size", "40000"], "--vocab-size"),
                       (["--from", str(tmp_path / "nope.gguf")], "--from")]:
        base = ["tokenizer", "adopt", "--from", str(gguf), "--corpus", str(corpus), "-o", str(tmp_path / "x")]
        if args[0] == "--from":
            base[3] = args[1]
        else:
            base += args
        code, _, se = cli(*base)
        assert code == 2 and want in se and "Traceback" not in se, se
        assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["llama-spm"])  # byte-level adopted vocabs export like any Qwen2-style one
def test_a_student_with_an_adopted_vocab_exports_gguf_that_tokenizes_like_it(vocab_dir, tmp_path, name):
    """Both exporters take the adopted tokenizer; llama.cpp tokenizes the student's GGUF exactly as the student."""
    from conftest import save_random_teacher
    from llama_cpp import Llama

    from vnmini.export import to_gguf, to_onnx

    corpus, lines = _corpus(tmp_path)
    res = adopt_tokenizer(vocab_dir / f"ggml-vocab-{name}.gguf", [corpus], vocab_size=1024, out=tmp_path / "tok",
                          progress=False)
    save_random_teacher(tmp_path / "ckpt", VnTokenizer.load(tmp_path / "tok"))
    out = to_gguf(tmp_path / "ckpt", tmp_path / "s.gguf", quant="f32")
    assert out.passed and out.verify["tokenization"]["equal"], out.verify
    ref = Llama(str(tmp_path / "s.gguf"), vocab_only=True, verbose=False)
    tok = res.tokenizer
    for line in lines:
        norm = tok.normalize(line)
        assert ref.tokenize(norm.encode(), add_bos=False, special=True) == tok.encode(line), norm
    onnx = to_onnx(tmp_path / "ckpt", tmp_path / "onnx")
    assert onnx.passed, onnx.verify
