"""Checkpoints vnmini did not make: random ``transformers`` Llama / Mistral / Qwen2 models saved
with byte-level BPE tokenizers in the styles real models use (GPT-2 / SmolLM ``<|endoftext|>``,
Qwen2 with no BOS, Llama-3 ``<|begin_of_text|>`` added by the post-processor and ``<|eot_id|>``),
their own chat templates. Oracles: ``transformers`` (tokenizer, model), llama-cpp-python
(GGUF tokens and logits, through the export's verify report), onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import VI_SAMPLE
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from vnmini.text.pretokenizers import LLAMA3_REGEX, QWEN2_REGEX, detect_pre_tokenizer

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n'"
          " + m['content'] + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")

# style -> (pre-tokenizer, specials, bos, eos, pad, chat template, BOS added by a post-processor)
STYLES = {
    "gpt2": (pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
             ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|endoftext|>", "<|endoftext|>",
             "<|endoftext|>", CHATML, False),
    "smollm": (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
               ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_start|>", "<|im_end|>",
               "<|im_end|>", CHATML, False),
    "qwen2": (pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_REGEX.replace(
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])", "(?i:'s|'t|'re|'ve|'m|'ll|'d)")),
        behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
              ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", "<|endoftext|>", CHATML, False),
    "llama3": (pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
               ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|begin_of_text|>", "<|end_of_text|>", None, LLAMA3, True),
}
TWIN = {"gpt2": "gpt-2", "smollm": "starcoder", "qwen2": "qwen2", "llama3": "llama-bpe"}


def foreign_tokenizer(style: str, vocab_size: int = 420) -> Tokenizer:
    pre, specials, bos, _, _, _, post_bos = STYLES[style]
    tok = Tokenizer(models.BPE(ignore_merges=style == "llama3"))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([VI_SAMPLE] * 4, trainer=trainer)
    if post_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def save_foreign(folder, style: str, arch: str, seed: int = 0) -> None:
    """A random transformers model of ``arch`` with a ``style`` tokenizer, saved the HF way."""
    import transformers

    _, _, bos, eos, pad, template, _ = STYLES[style]
    hf_tok = foreign_tokenizer(style)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=hf_tok, bos_token=bos, eos_token=eos,
                                                pad_token=pad)
    fast.chat_template = template
    fast.save_pretrained(folder)
    kw = dict(vocab_size=hf_tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
              bos_token_id=hf_tok.token_to_id(bos) if bos else None, eos_token_id=hf_tok.token_to_id(eos))
    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config}[arch]
    if arch == "mistral":
        kw["sliding_window"] = None
    torch.manual_seed(seed)
    model_cls = {"llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM,
                 "qwen2": transformers.Qwen2ForCausalLM}[arch]
    model = model_cls(cls(**kw))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.08)  # logits with a spread, so quantized parity means something
    model.save_pretrained(folder)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_foreign_tokenizer_loads_like_transformers(style, tmp_path):
    import transformers

    from vnmini.text.normalization import normalize
    from vnmini.text.tokenizer import VnTokenizer

    save_foreign(tmp_path, style, "llama")
    ours = VnTokenizer.load(tmp_path)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert ours.pre_tokenizer_name == TWIN[style]
    assert (ours.bos_id, ours.eos_id) == (ref.bos_token_id, ref.eos_token_id)
    assert ours.add_bos == STYLES[style][6]
    for line in VI_SAMPLE.splitlines() + ["  12345 số\n\nxuống  dòng 😀"]:
        text = normalize(line)
        assert ours.encode(text, add_bos=ours.add_bos) == ref(text)["input_ids"], text
    msgs = [{"role": "user", "content": "Xin chào"}]
    want = ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    assert ours.encode_chat(msgs) == (want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want)
    stop = ref.convert_tokens_to_ids("<|eot_id|>" if style == "llama3" else "<|im_end|>")
    assert stop in ours.stop_ids


@pytest.mark.parametrize("style, arch", [("gpt2", "llama"), ("smollm", "llama"), ("qwen2", "qwen2"),
                                         ("llama3", "mistral")])
def test_foreign_folder_exports_gguf_and_onnx_with_passing_verify(style, arch, tmp_path, cli):
    from vnmini.checkpoint import load_checkpoint
    from vnmini.runtime.loader import load

    src = tmp_path / "src"
    save_foreign(src, style, arch)
    for quant in ("f32", "q8_0"):
        out = tmp_path / f"m-{quant}.gguf"
        code, stdout, err = cli("export", "gguf", src, "-o", out, "--quant", quant)
        assert code == 0 and "verify: PASSED" in stdout, err + stdout
        rep = json.loads(out.with_suffix(".verify.json").read_text())
        assert rep["tokenization"]["equal"] and rep["chat"]["equal"]
        if quant == "f32":
            assert rep["logits"]["max_rel_err"] <= 1e-3
    # The exported GGUF opens again with the source's own specials and template.
    gen = load(tmp_path / "m-f32.gguf")
    ck = load_checkpoint(src)
    assert gen.tokenizer.stop_ids == ck.tokenizer.stop_ids and gen.tokenizer.add_bos == ck.tokenizer.add_bos
    ids = ck.tokenizer.encode("Điều 1. Phạm vi", add_bos=True)
    with torch.no_grad():
        ref = ck.model(torch.tensor([ids]))[0].numpy()
    got = gen.logits(ids)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-3
    code, stdout, err = cli("export", "onnx", src, "-o", tmp_path / "onnx")
    assert code == 0 and "verify:" in stdout, err
    assert json.loads((tmp_path / "onnx" / "verify.json").read_text())["passed"]
    assert (tmp_path / "onnx" / "tokenizer_config.json").is_file()


def test_a_pre_tokenizer_without_a_llama_cpp_twin_is_refused(tmp_path, cli):
    import transformers

    hf = foreign_tokenizer("smollm")
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.ByteLevel(use_regex=False)])
    assert detect_pre_tokenizer(hf) is None
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=hf, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>")
    fast.save_pretrained(tmp_path / "src")
    save_foreign(tmp_path / "other", "smollm", "llama")
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        (tmp_path / "src" / f).write_bytes((tmp_path / "other" / f).read_bytes())
    code, _, err = cli("export", "gguf", tmp_path / "src", "-o", tmp_path / "m.gguf")
    assert code == 2 and "Whitespace" in err and "llama.cpp would tokenize" in err, err
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("case, fix", [
    ("bad_json", "not a valid tokenizers JSON"),
    ("special_past_vocab", "past the vocabulary"),
    ("unknown_arch", "not supported"),
])
def test_bad_foreign_folders_are_one_line(case, fix, tmp_path, cli):
    src = tmp_path / "src"
    save_foreign(src, "smollm", "llama")
    if case == "bad_json":
        (src / "tokenizer.json").write_text("{not json")
    elif case == "special_past_vocab":
        gen = json.loads((src / "generation_config.json").read_text())
        (src / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": [0, 99999]}))
    else:
        cfg = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**cfg, "architectures": ["MambaForCausalLM"],
                                                      "model_type": "mamba"}))
    code, _, err = cli("export", "gguf", src, "-o", tmp_path / "m.gguf")
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]  # (transformers' save progress is above)
    assert code == 2 and len(errors) == 1 and fix in errors[0] and "Traceback" not in err, err
    assert not (tmp_path / "m.gguf").exists()


def test_every_quant_of_a_foreign_qwen2_folder_passes_verify(tmp_path):
    from vnmini.export import to_gguf
    from vnmini.export.gguf_writer import GGUF_QUANTS

    save_foreign(tmp_path / "src", "qwen2", "qwen2")
    for quant in GGUF_QUANTS:
        res = to_gguf(tmp_path / "src", tmp_path / f"m-{quant}.gguf", quant=quant)
        assert res.passed and res.verify["tokenization"]["equal"] and res.verify["chat"]["equal"], res.verify


def spm_style_tokenizer() -> Tokenizer:
    """A Llama-2-style tokenizer.json: BPE over ``▁``-joined text with byte fallback (<0xNN> tokens)."""
    from tokenizers import normalizers

    norm = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.normalizer = norm
    base.train_from_iterator([VI_SAMPLE] * 4, trainer=trainers.BpeTrainer(
        vocab_size=380, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    spec = json.loads(base.to_str())["model"]
    vocab = dict(spec["vocab"])
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = norm
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return tok


def test_sentencepiece_style_folder_loads_and_exports_gguf_and_onnx(tmp_path, cli):
    import transformers

    from vnmini.text.normalization import normalize
    from vnmini.text.tokenizer import VnTokenizer

    src = tmp_path / "src"
    hf = spm_style_tokenizer()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=hf, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")
    fast.save_pretrained(src)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=hf.get_vocab_size(), hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(src)
    ours, ref = VnTokenizer.load(src), transformers.AutoTokenizer.from_pretrained(src)
    assert ours.style == "sentencepiece" and ours.add_bos and ours.pre_tokenizer_name is None
    for line in [*VI_SAMPLE.splitlines(), "chữ lạ ☃ ₫ 😀"]:  # ☃, ₫, 😀 are not in the vocab: byte fallback
        text = normalize(line)
        ids = ours.encode(text, add_bos=True)
        assert ids == ref(text)["input_ids"], text
        # bytes counted per token cover the text (+1 for the ▁ SentencePiece puts in front)
        assert int(ours.token_bytes[ids].sum()) == len(text.encode()) + 1
    # GGUF tokenizer model "llama": llama.cpp's SentencePiece tokenizer gives our ids (the verify report's oracle)
    for quant in ("f32", "q8_0"):
        out = tmp_path / f"m-{quant}.gguf"
        code, stdout, err = cli("export", "gguf", src, "-o", out, "--quant", quant)
        assert code == 0 and "verify: PASSED" in stdout, err + stdout
    from vnmini.runtime.loader import load

    gen = load(tmp_path / "m-f32.gguf")  # runs on llama.cpp's own tokenizer behind vnmini
    text = normalize("Điều 1. Xin chào ☃")
    assert gen.tokenizer.encode(text, add_bos=True) == ours.encode(text, add_bos=True)
    code, stdout, err = cli("export", "onnx", src, "-o", tmp_path / "onnx")
    assert code == 0 and json.loads((tmp_path / "onnx" / "verify.json").read_text())["passed"], err + stdout
