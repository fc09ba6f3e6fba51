"""eval_text (sliding-window bits per byte) and eval_mc (VMLU-format multiple choice).

Oracle: transformers' LlamaForCausalLM on the same checkpoint, scored with the
Hugging Face perplexity recipe (labels -100 outside the new tokens of each window).
"""

from __future__ import annotations

import json
import math
import unicodedata

import numpy as np
import pytest
import torch
from conftest import VI_SAMPLE

from vnmini.errors import VnminiError
from vnmini.eval.bpb import eval_text, text_prefix
from vnmini.eval.mc import MC_PROMPT, eval_mc, read_mc, sample_mc_path, strip_letter
from vnmini.text.normalization import normalize


@pytest.fixture
def gen(tiny_checkpoint):
    import vnmini

    return vnmini.load(tiny_checkpoint)


@pytest.fixture
def hf_model(tiny_checkpoint):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_checkpoint, torch_dtype=torch.float32).eval()


def hf_sliding_nll(model, ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """Summed NLL by the HF perplexity guide's recipe (independent of vnmini's loop)."""
    x = torch.tensor([ids])
    n, prev_end, total, count = len(ids), 0, 0.0, 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        trg_len = end - prev_end
        inp = x[:, begin:end]
        labels = inp.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            logits = model(inp).logits.double()
        lp = torch.log_softmax(logits[0, :-1], -1)
        tg = labels[0, 1:]
        m = tg != -100
        total -= float(lp[m].gather(1, tg[m][:, None]).sum())
        count += int(m.sum())
        prev_end = end
        if end == n:
            break
    return total, count


@pytest.mark.parametrize("window,stride", [(64, 23), (256, None)])
def test_eval_text_matches_transformers_sliding_windows(gen, hf_model, window, stride):
    text = VI_SAMPLE * 4
    res = eval_text(gen, text, stride=stride, context=window)
    ids = gen.tokenizer.encode(text, add_bos=True)
    assert len(ids) > window  # more than one window
    ref_nll, ref_count = hf_sliding_nll(hf_model, ids, window, stride or window // 2)
    assert res["tokens"] == ref_count == len(ids) - 1
    assert res["bytes"] == len(normalize(text).encode("utf-8"))
    assert res["nll"] == pytest.approx(ref_nll, rel=1e-5)
    assert res["bpb"] == pytest.approx(ref_nll / (math.log(2) * res["bytes"]), rel=1e-5)
    assert res["ppl"] == pytest.approx(math.exp(ref_nll / ref_count), rel=1e-5)


def test_eval_text_documents_bos_not_scored_and_nfd_input(gen, tmp_path):
    docs = ["Điều 1. Bộ luật này quy định địa vị pháp lý.", "Xin chào! Hôm nay trời đẹp quá.", "Hòa bình, khỏe mạnh."]
    f = tmp_path / "docs.jsonl"
    f.write_text("\n".join(json.dumps({"text": d}, ensure_ascii=False) for d in docs) + "\n", encoding="utf-8")
    res = eval_text(gen, f)
    n_text = sum(len(gen.tokenizer.encode(d)) for d in docs)
    assert res["tokens"] == n_text
    assert res["bytes"] == sum(len(d.encode()) for d in docs)
    # NFD + old-style tones in a .txt give the same numbers as the clean text.
    clean = "\n".join(docs)
    messy = unicodedata.normalize("NFD", clean.replace("Hòa", "Hoà").replace("khỏe", "khoẻ"))
    (tmp_path / "a.txt").write_text(clean, encoding="utf-8")
    (tmp_path / "b.txt").write_text(messy, encoding="utf-8")
    ra, rb = eval_text(gen, tmp_path / "a.txt"), eval_text(gen, str(tmp_path / "b.txt"))
    assert ra["bpb"] == rb["bpb"] and ra["tokens"] == rb["tokens"]


def test_eval_text_max_tokens_and_bad_input(gen, tmp_path):
    res = eval_text(gen, VI_SAMPLE * 3, max_tokens=57, stride=17, context=40)
    assert res["tokens"] == 57
    with pytest.raises(VnminiError, match="--stride"):
        eval_text(gen, VI_SAMPLE, stride=40, context=40)
    with pytest.raises(VnminiError, match="empty"):
        eval_text(gen, "   ")
    with pytest.raises(VnminiError, match="nope.txt"):
        eval_text(gen, tmp_path / "nope.txt")


def test_text_prefix_cuts_at_a_line_end_and_never_inside_a_character():
    text = "Điều 1.\nNgười đại diện\nxyz"
    first = len("Điều 1.\n".encode())
    assert text_prefix(text, first) == "Điều 1.\n"
    for n in range(first, len(text.encode())):  # any cut inside line 2 falls back to line 1's end
        assert text_prefix(text, n) == ("Điều 1.\nNgười đại diện\n" if n >= first + len("Người đại diện\n".encode())
                                        else "Điều 1.\n")
    assert text_prefix("Đ" * 5, 3) == "Đ"  # no line end: whole characters only (Đ is 2 bytes)
    assert text_prefix(text, 10**6) == text


def test_eval_mc_logprobs_match_transformers(gen, hf_model):
    items = list(read_mc(sample_mc_path()))[:4]
    res = eval_mc(gen, sample_mc_path(), limit=4, return_items=True)
    tok = gen.tokenizer
    for it, got in zip(items, res["items"], strict=True):
        ctx = tok.encode(MC_PROMPT.format(question=it["question"]), add_bos=True)
        ref = []
        for choice in it["choices"]:
            cont = tok.encode(" " + choice)
            with torch.no_grad():
                lp = torch.log_softmax(hf_model(torch.tensor([ctx + cont])).logits[0].double(), -1)
            ref.append(float(sum(lp[len(ctx) - 1 + i, t] for i, t in enumerate(cont))))
        np.testing.assert_allclose(got["logprobs"], ref, rtol=1e-5)
        assert got["pick"] == int(np.argmax(ref))
    assert res["accuracy"] == np.mean([g["pick"] == g["answer"] for g in res["items"]])


def test_eval_mc_model_taught_the_answers_scores_full(tiny_checkpoint, tmp_path):
    """A model trained on the right answers must score 100%; the same model untrained does not."""
    import vnmini
    from vnmini.checkpoint import load_checkpoint
    from vnmini.runtime.torch_backend import TorchGenerator

    items = [
        {"question": "Thủ đô của Việt Nam là gì?", "choices": ["A. Huế", "B. Hà Nội", "C. Vinh"], "answer": "B"},
        {"question": "Tiếng Việt có mấy thanh?", "choices": ["A. Sáu", "B. Ba", "C. Hai", "D. Tám"], "answer": "A"},
        {"question": "Số nào lớn nhất?", "choices": ["A. 3", "B. 1", "C. 2", "D. 0", "E. 9"], "answer": "E"},
    ]
    f = tmp_path / "mc.jsonl"
    f.write_text("\n".join(json.dumps(it, ensure_ascii=False) for it in items), encoding="utf-8")
    ckpt = load_checkpoint(tiny_checkpoint)
    model, tok = ckpt.model.train(), ckpt.tokenizer
    seqs = [tok.encode(MC_PROMPT.format(question=it["question"]) + " "
                       + strip_letter(it["choices"][ord(it["answer"]) - 65]),
                       add_bos=True) for it in items]
    width = max(map(len, seqs))
    x = torch.full((len(seqs), width), tok.pad_id)
    y = torch.full((len(seqs), width), -100)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s)
        y[i, : len(s) - 1] = torch.tensor(s[1:])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    res = eval_mc(TorchGenerator(model.eval(), tok), f)
    assert res == {"accuracy": 1.0, "accuracy_norm": 1.0, "n": 3, "chance": pytest.approx((1 / 3 + 1 / 4 + 1 / 5) / 3),
                   "backend": "torch"}
    assert eval_mc(vnmini.load(tiny_checkpoint), f)["accuracy"] < 1.0


@pytest.mark.parametrize("line,match", [
    ("{not json", "invalid JSON"),
    ('{"question": "Q?", "choices": ["A. x", "B. y"], "answer": "C"}', "outside the 2 choices"),
    ('{"question": "Q?", "choices": ["A. x"], "answer": "A"}', "at least 2"),
    ('{"question": "", "choices": ["A. x", "B. y"], "answer": "A"}', "question"),
    ('{"question": "Q?", "choices": ["A. x", "B. y"]}', "missing 'answer'"),
    ('{"question": "Q?", "choices": ["A. x", "B. y"], "answer": "AB"}', "not a letter"),
])
def test_read_mc_rejects_bad_lines(tmp_path, line, match):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"question": "Q?", "choices": ["A. x", "B. y"], "answer": 1}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(VnminiError, match=match) as e:
        list(read_mc(f))
    assert "bad.jsonl:2" in str(e.value)


def test_shipped_sample_is_clean_vietnamese():
    items = [json.loads(x) for x in sample_mc_path().read_text(encoding="utf-8").splitlines() if x.strip()]
    assert len(items) >= 20
    assert len({it["id"] for it in items}) == len(items)
    letters = "ABCDE"
    for it in items:
        for s in [it["question"], *it["choices"]]:
            assert normalize(s) == s  # NFC, new-style tones, no stray characters
        assert [c[:3] for c in it["choices"]] == [f"{letters[i]}. " for i in range(len(it["choices"]))]
    assert {it["subject"] for it in items} >= {"general", "law", "language"}
    assert len({it["answer"] for it in items}) >= 4  # answers spread over the letters
    assert [it["answer"] for it in read_mc(sample_mc_path())] == [letters.index(it["answer"]) for it in items]


def test_cli_eval_json_matches_library(cli, gen, tiny_checkpoint, tmp_path):
    f = tmp_path / "held.txt"
    f.write_text(VI_SAMPLE * 2, encoding="utf-8")
    code, out, err = cli("eval", tiny_checkpoint, "--text", f, "--mc", "sample", "--limit", "5", "--json")
    assert code == 0, err
    row = json.loads(out)
    assert row["bpb"] == pytest.approx(eval_text(gen, f)["bpb"], rel=1e-9)
    assert row["accuracy"] == eval_mc(gen, sample_mc_path(), limit=5)["accuracy"]
    assert row["n_questions"] == 5
    code, out, err = cli("eval", tiny_checkpoint, "--text", tmp_path / "missing.txt")
    assert code == 2 and "missing.txt" in err
    code, out, err = cli("eval", tiny_checkpoint)
    assert code == 2 and "--text" in err
