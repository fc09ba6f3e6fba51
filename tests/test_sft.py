"""Chat SFT: assistant-only loss masks, packing that never crosses conversations, the statute builder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vnmini.errors import VnminiError
from vnmini.training.sft import PackedLM, load_conversations, pack, render, split_val

CONVS = [
    [{"role": "system", "content": "Bạn là trợ lý pháp luật."},
     {"role": "user", "content": "Điều 1 quy định gì?"},
     {"role": "assistant", "content": "Phạm vi điều chỉnh."},
     {"role": "user", "content": "Còn Điều 2?"},
     {"role": "assistant", "content": "Mọi người đều bình đẳng trước pháp luật."}],
    [{"role": "user", "content": "Xin chào!"}, {"role": "assistant", "content": "Chào bạn, hôm nay trời đẹp quá."}],
    [{"role": "user", "content": "Hòa bình là gì?"}, {"role": "assistant", "content": "Khỏe mạnh, thủy lợi."}],
]


def test_render_masks_exactly_the_assistant_turns(tiny_tokenizer):
    tok = tiny_tokenizer
    for conv in CONVS:
        ids, mask = render(tok, conv)
        assert ids == tok.encode_chat(conv, add_generation_prompt=False)
        # The trained spans, decoded, are each assistant answer followed by <|im_end|>, in order.
        spans, cur = [], []
        for i, m in zip(ids, mask, strict=True):
            if m:
                cur.append(i)
            elif cur:
                spans.append(cur)
                cur = []
        if cur:
            spans.append(cur)
        answers = [m["content"] for m in conv if m["role"] == "assistant"]
        assert [tok.decode(s, skip_special=False) for s in spans] == [a + "<|im_end|>" for a in answers]
        # No user/system content and no assistant header is trained.
        trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m], skip_special=False)
        assert "assistant" not in trained and "Điều 1 quy định" not in trained


def test_pack_keeps_conversations_whole_and_separate(tiny_tokenizer):
    tok = tiny_tokenizer
    rng = np.random.default_rng(0)
    convs = [CONVS[i] for i in rng.integers(0, 3, size=25)]
    rendered = [render(tok, c) for c in convs]
    t = 160
    p = pack(rendered, t, tok.pad_id)
    assert p.conversations == 25 and p.truncated == 0
    assert len(p.input_ids) < 25  # it packs several per row
    got = []
    for r in range(len(p.input_ids)):
        seg = p.segment_ids[r]
        for s in range(seg.max() + 1):
            cols = np.flatnonzero(seg == s)
            assert np.array_equal(cols, np.arange(cols[0], cols[-1] + 1))  # contiguous
            assert np.array_equal(p.position_ids[r, cols], np.arange(len(cols)))  # positions restart
            got.append(p.input_ids[r, cols].tolist())
            # Targets: next token where it is an assistant token, -100 elsewhere, and -100 at the
            # conversation's last column (nothing of the next conversation is predicted).
            ids, mask = next(rc for rc in rendered if rc[0] == got[-1])
            want = [ids[k + 1] if mask[k + 1] else -100 for k in range(len(ids) - 1)] + [-100]
            assert p.targets[r, cols].tolist() == want
        assert (p.targets[r, seg == -1] == -100).all() and (p.input_ids[r, seg == -1] == tok.pad_id).all()
    assert sorted(got) == sorted(ids for ids, _ in rendered)  # every conversation exactly once, whole
    cut = pack([render(tok, CONVS[0])], 80, tok.pad_id)
    assert (cut.conversations, cut.truncated, cut.dropped) == (1, 1, 0)
    assert (cut.targets != -100).sum() == sum(render(tok, CONVS[0])[1][1:80])
    gone = pack([render(tok, CONVS[0])], 20, tok.pad_id)  # no assistant token within 20
    assert (gone.conversations, gone.dropped, len(gone.input_ids)) == (0, 1, 0)


def test_packed_forward_equals_each_conversation_alone(tiny_tokenizer, tiny_config):
    from vnmini.models import LlamaForCausalLM

    tok = tiny_tokenizer
    torch.manual_seed(1)
    model = LlamaForCausalLM(tiny_config(vocab_size=tok.vocab_size)).eval()
    rendered = [render(tok, c) for c in CONVS]
    p = pack(rendered, 160, tok.pad_id)
    with torch.no_grad():
        out = PackedLM(model)(*(torch.from_numpy(a) for a in (p.input_ids, p.segment_ids, p.position_ids)))
        k = 0
        for r in range(len(p.input_ids)):
            for s in range(p.segment_ids[r].max() + 1):
                cols = np.flatnonzero(p.segment_ids[r] == s)
                alone = model(torch.tensor([rendered[k][0]]))[0]
                torch.testing.assert_close(out[r, cols], alone, rtol=1e-4, atol=1e-5)
                k += 1
    assert k == 3


def test_load_conversations_refuses_bad_lines(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"messages": CONVS[1]}) + "\n" + '{"messages": [{"role": "bot", "content": "x"}]}\n')
    with pytest.raises(VnminiError, match=r"c.jsonl:2: .*role"):
        load_conversations(f)
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(VnminiError, match="no assistant"):
        load_conversations(f)
    tr, va = split_val(list(range(100)), 0.05)
    assert len(va) == 5 and sorted(tr + va) == list(range(100))


ARTICLES = [
    "QUỐC HỘI\nBỘ LUẬT\nLAO ĐỘNG\nQuốc hội ban hành Bộ luật Lao động.\nChương I",
    "Điều 1. Phạm vi điều chỉnh\nBộ luật Lao động quy định tiêu chuẩn lao động; quyền, nghĩa vụ của người lao động.",
    "Điều 2. Đối tượng áp dụng\n1. Người lao động, người học nghề.\n2. Người sử dụng lao động.",
    "Điều 3. Giải thích từ ngữ\nTrong Bộ luật này, các từ ngữ dưới đây được hiểu như sau: "
    "người lao động là người làm việc.",
]


def test_statute_builder_and_sft_end_to_end(tmp_path, tiny_tokenizer, cli):
    from vnmini.checkpoint import load_checkpoint, save_checkpoint
    from vnmini.models import LlamaForCausalLM, ModelConfig

    corpus = tmp_path / "corpus"
    (corpus / "train").mkdir(parents=True)
    (corpus / "heldout").mkdir()
    (corpus / "train" / "bo-luat-lao-dong-2019.jsonl").write_text(
        "".join(json.dumps({"text": a}, ensure_ascii=False) + "\n" for a in ARTICLES), encoding="utf-8")
    (corpus / "heldout" / "other.txt").write_text("Điều 1. Không dùng\nNội dung.\n", encoding="utf-8")
    code, out, err = cli("data", "sft-from-statutes", corpus, "--out", tmp_path / "sft.jsonl")
    assert code == 0, err
    convs = load_conversations(tmp_path / "sft.jsonl")
    assert len(convs) == 9  # 3 articles × 3 question kinds; the held-out code is not read
    qa = {c[0]["content"]: c[1]["content"] for c in convs}
    a = qa["Điều 2 của Bộ luật Lao động năm 2019 quy định gì?"]
    assert a.startswith("Điều 2. Đối tượng áp dụng\n1. Người lao động")
    assert qa["Điều 3 của Bộ luật Lao động năm 2019 có tiêu đề là gì?"].endswith("có tiêu đề: Giải thích từ ngữ.")
    assert "Bộ luật Lao động năm 2019 quy định thế nào về phạm vi điều chỉnh?" in qa

    cfg = ModelConfig(vocab_size=tiny_tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    torch.manual_seed(0)
    init = save_checkpoint(LlamaForCausalLM(cfg), tmp_path / "base", tokenizer=tiny_tokenizer)
    args = ["sft", "--data", tmp_path / "sft.jsonl", "--init-from", init, "--out", tmp_path / "chat",
            "--seq-len", "128", "--micro-batch", "2", "--global-batch-tokens", "256", "--max-steps", "6",
            "--eval-every", "3",
            "--save-every", "3", "--val-fraction", "0.2", "--sample-tokens", "3", "--threads", "1", "--no-progress",
            "--lr", "3e-3"]
    code, out, err = cli(*args)
    assert code == 0, err
    recs = [json.loads(x) for x in (tmp_path / "chat" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if "eval_bpb" in r]
    assert [r["step"] for r in evals] == [3, 6] and all(np.isfinite(r["eval_bpb"]) for r in evals)
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] + 1.0
    ck = load_checkpoint(tmp_path / "chat" / "final", require_tokenizer=True)
    assert ck.provenance["kind"] == "sft" and ck.tokenizer.hash == tiny_tokenizer.hash
    code, _, err = cli("sft", "--data", tmp_path / "sft.jsonl", "--out", tmp_path / "x")
    assert code == 2 and "--init-from" in err


def test_text_records_train_every_token_and_stay_out_of_validation(tmp_path, tiny_tokenizer):
    from vnmini.training.sft import render_items, render_text

    tok = tiny_tokenizer
    prose = "Điều 7. Người lao động được hòa giải về thủy lợi, khỏe mạnh. " * 6
    f = tmp_path / "mixed.jsonl"
    f.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in
                         [{"messages": CONVS[1]}, {"text": prose}, {"messages": CONVS[2]}]), encoding="utf-8")
    items = load_conversations(f)
    assert items[1] == prose and items[0] == CONVS[1]
    # Encoded as pretraining encodes a document, cut into seq_len pieces, every token trained.
    pieces = render_text(tok, prose, 16)
    assert [i for ids, _ in pieces for i in ids] == tok.encode(prose, add_bos=True, add_eos=True)
    assert all(len(ids) <= 16 and all(mask) and len(mask) == len(ids) for ids, mask in pieces)
    p = pack(render_items(tok, [prose], 16), 16, tok.pad_id)
    assert (p.targets != -100).sum() == sum(len(ids) - 1 for ids, _ in pieces)
    # Text records always train and don't shift which conversations are held out.
    convs = [CONVS[i % 3] for i in range(40)]
    with_text = [x for c in convs for x in (c, prose)]
    assert split_val(with_text, 0.1)[1] == split_val(convs, 0.1)[1]
    assert split_val(with_text, 0.1)[0].count(prose) == 40
    f.write_text('{"text": ""}\n')
    with pytest.raises(VnminiError, match=r"mixed.jsonl:1: .*text"):
        load_conversations(f)


def test_statute_builder_replay_mixes_in_the_articles(tmp_path, cli):
    from vnmini.data.sft_statutes import build_statute_sft

    corpus = tmp_path / "corpus"
    (corpus / "train").mkdir(parents=True)
    (corpus / "train" / "bo-luat-lao-dong-2019.jsonl").write_text(
        "".join(json.dumps({"text": a}, ensure_ascii=False) + "\n" for a in ARTICLES), encoding="utf-8")
    plain = build_statute_sft(corpus, tmp_path / "plain.jsonl")
    assert plain["text_records"] == 0
    mixed = build_statute_sft(corpus, tmp_path / "mixed.jsonl", replay=0.3)
    items = load_conversations(tmp_path / "mixed.jsonl")
    texts = [x for x in items if isinstance(x, str)]
    answers = sum(len(m["content"]) for c in items if not isinstance(c, str) for m in c if m["role"] == "assistant")
    assert mixed["text_records"] == len(texts) > 0 and mixed["conversations"] == plain["conversations"]
    assert set(texts) <= set(ARTICLES[1:]) and sum(map(len, texts)) >= 0.3 * answers
    assert [c for c in items if not isinstance(c, str)] == load_conversations(tmp_path / "plain.jsonl")  # same order
    code, _, err = cli("data", "sft-from-statutes", corpus, "--out", tmp_path / "bad.jsonl", "--replay", "-1")
    assert code == 2 and "--replay" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad.jsonl").exists()
