"""Pretraining: exact resume (after an exception and after SIGKILL), NaN guard, torchrun == one process.

A tiny random model (``init_from``) on shards made from the test sample keeps
each run to a few seconds; every run uses one torch thread so float sums are
ordered the same way in every process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import VI_SAMPLE
from safetensors.torch import load_file

from vnmini.errors import VnminiError
from vnmini.training.config import TrainConfig, load_config
from vnmini.training.trainer import Interrupted, Trainer, decay_groups, global_rows, lr_at, read_metrics

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_tokenizer):
    from vnmini.data.shards import prepare_shards

    d = tmp_path_factory.mktemp("shards")
    lines = [ln for ln in VI_SAMPLE.splitlines() if ln.strip()]
    (d / "corpus.txt").write_text("\n".join(lines * 30), encoding="utf-8")
    prepare_shards([d / "corpus.txt"], tiny_tokenizer, d / "set", val_fraction=0.1, progress=False, doc_sep="line")
    tiny_tokenizer.save(d / "set")  # the shard folder carries its tokenizer
    return d / "set"


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory, tiny_tokenizer):
    from vnmini.checkpoint import save_checkpoint
    from vnmini.models import LlamaForCausalLM, ModelConfig

    cfg = ModelConfig(vocab_size=tiny_tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)
    return save_checkpoint(LlamaForCausalLM(cfg), tmp_path_factory.mktemp("init") / "ckpt", tokenizer=tiny_tokenizer)


def base(shards, init_ckpt, out, **kw):
    cfg = dict(data=str(shards), init_from=str(init_ckpt), out=str(out), seq_len=16, micro_batch=2,
               global_batch_tokens=64, max_steps=20, warmup_steps=3, lr=1e-2, eval_every=10, save_every=5,
               eval_tokens=96, sample_tokens=3, threads=1, progress=False, log_every=5)
    cfg.update(kw)
    return cfg


def cli_args(cfg: dict) -> list[str]:
    args = []
    for k, v in cfg.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + k.replace("_", "-"))
        else:
            args += [flag, str(v)]
    return args


def losses(run_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shards, init_ckpt):
    """One uninterrupted 20-step run every resume test compares against."""
    from vnmini.training.pretrain import train

    out = tmp_path_factory.mktemp("ref") / "run"
    summary = train(**base(shards, init_ckpt, out))
    return out, summary


def test_reference_run_writes_everything(reference):
    out, s = reference
    assert s["steps"] == 20 and s["tokens"] == 20 * 64
    assert np.isfinite(s["eval_bpb"]) and 0 < s["eval_bpb"] < 10
    assert (out / "final" / "trainer_state.pt").is_file() and (out / "loss.png").stat().st_size > 1000
    steps = sorted(p.name for p in out.glob("step_*"))
    assert steps == ["step_000010", "step_000015"]  # keep_last=2; the final step is saved as final/
    recs = read_metrics(out)
    evals = [r for r in recs if "eval_bpb" in r]
    assert [r["step"] for r in evals] == [10, 20] and all("sample" in r for r in evals)
    assert [st for st, _ in losses(out)] == list(range(1, 21))
    ls = [v for _, v in losses(out)]
    assert np.mean(ls[-5:]) < np.mean(ls[:5])  # it learns
    prov = json.loads((out / "final" / "vnmini.json").read_text())
    assert prov["step"] == 20 and prov["kind"] == "pretrain" and "eval_bpb" in prov
    state = torch.load(out / "final" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 20 and state["data"]["rows_consumed"] == 20 * 4


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def interrupt_at(monkeypatch, at_step: int):
    """Make the trainer see Ctrl-C when it fetches step ``at_step``'s batch; returns the real method to restore."""
    orig = Trainer._micro_batch

    def boom(self, step, micro):
        if step == at_step:
            raise KeyboardInterrupt
        return orig(self, step, micro)

    monkeypatch.setattr(Trainer, "_micro_batch", boom)
    return orig


def test_resume_after_interrupt_is_exact(reference, shards, init_ckpt, tmp_path, monkeypatch):
    from vnmini.training.pretrain import train

    ref_out, _ = reference
    out = tmp_path / "run"
    orig = interrupt_at(monkeypatch, 13)
    with pytest.raises(Interrupted, match="saved .*step_000013.*--resume"):  # Ctrl-C saves the last whole step
        train(**base(shards, init_ckpt, out))
    monkeypatch.setattr(Trainer, "_micro_batch", orig)
    assert (out / "step_000013").is_dir() and not (out / "final").exists()
    with pytest.raises(VnminiError, match="--resume"):
        train(**base(shards, init_ckpt, out))  # never silently restarts over a run
    s = train(**base(shards, init_ckpt, out, resume=True))
    assert s["steps"] == 20
    assert losses(out) == losses(ref_out)  # bit-for-bit
    same_weights(out / "final", ref_out / "final")


def test_sigkill_between_checkpoints_then_resume(reference, shards, init_ckpt, tmp_path, cli):
    ref_out, _ = reference
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "vnmini.cli", "train", *cli_args(base(shards, init_ckpt, out))]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            done = [st for st, _ in losses(out)] if (out / "metrics.jsonl").exists() else []
            if done and max(done) >= 7:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err.decode()[-500:]}"
    assert not (out / "final").exists() and max(st for st, _ in losses(out)) < 20
    code, _, err = cli("train", *cli_args(base(shards, init_ckpt, out, resume=True)))
    assert code == 0, err
    assert losses(out) == losses(ref_out)
    same_weights(out / "final", ref_out / "final")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(shards, init_ckpt, tiny_tokenizer, tmp_path):
    from vnmini.checkpoint import load_checkpoint
    from vnmini.data.shards import ShardReader
    from vnmini.training.batch import ce_loss
    from vnmini.training.pretrain import TokenWindows, build_config, make_model

    cfg = build_config(None, base(shards, init_ckpt, tmp_path / "run", save_every=3, eval_every=0))
    ce = ce_loss("torch")

    def poisoned(module, batch):  # the pluggable loss hook: NaN from step 5 on
        loss, m = ce(module, batch)
        return (loss * float("nan") if batch.step >= 5 else loss), m

    src = TokenWindows(ShardReader(shards, "train"), ShardReader(shards, "val"), cfg.seq_len)
    tr = Trainer(cfg, make_model(cfg, tiny_tokenizer), src, tokenizer=tiny_tokenizer, loss_fn=poisoned)
    with pytest.raises(VnminiError, match=r"step 6: loss is nan.*step_000003"):
        tr.fit()
    tr.close()
    assert (tmp_path / "run" / "step_000003" / "trainer_state.pt").is_file()
    assert not (tmp_path / "run" / "final").exists() and not list((tmp_path / "run").glob("step_000006*"))
    model = load_checkpoint(tmp_path / "run" / "step_000003").model
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_torchrun_two_processes_match_one(shards, init_ckpt, tmp_path):
    from vnmini.training.pretrain import train

    one = tmp_path / "one"
    kw = dict(max_steps=8, eval_every=4, save_every=0, sample_tokens=0, micro_batch=2, global_batch_tokens=64,
              kernels="torch")
    s1 = train(**base(shards, init_ckpt, one, **kw))  # 1 process: 2 micro steps of 2 rows
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "vnmini.cli", "train", *cli_args(base(shards, init_ckpt, two, **kw))]
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=150)
    assert p.returncode == 0, p.stderr[-2000:]
    a, b = losses(one), losses(two)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 9))  # rank 0 alone wrote the log
    np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=1e-5, atol=1e-6)
    e2 = [r for r in read_metrics(two) if "eval_bpb" in r][-1]
    assert abs(e2["eval_bpb"] - s1["eval_bpb"]) < 1e-5
    wa, wb = load_file(str(one / "final" / "model.safetensors")), load_file(str(two / "final" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)


def test_data_order_is_seeded_and_rank_slices_cover_the_global_batch():
    n = 37
    seen = np.concatenate([global_rows(7, s, 8, n) for s in range(10)])
    # Every row once per epoch (the first 37 draws are a permutation), same answer every call.
    assert sorted(seen[:n]) == list(range(n))
    assert np.array_equal(global_rows(7, 3, 8, n), global_rows(7, 3, 8, n))
    assert not np.array_equal(global_rows(7, 3, 8, n), global_rows(8, 3, 8, n))
    # Two ranks × 2 micro steps × 2 rows = the one-process batch of 4 micro steps × 2 rows.
    g = global_rows(7, 5, 8, n)
    ranks = [g[(m * 2 + r) * 2 : (m * 2 + r) * 2 + 2] for m in range(2) for r in range(2)]
    assert sorted(np.concatenate(ranks)) == sorted(g)


def test_lr_schedules():
    c = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(c, 0) == pytest.approx(0.1) and lr_at(c, 9) == pytest.approx(1.0)
    assert (lr_at(c, 10) == pytest.approx(1.0) and lr_at(c, 60) == pytest.approx(0.55)
            and lr_at(c, 110) == pytest.approx(0.1))
    w = c.replace(schedule="wsd", decay_fraction=0.5)
    assert lr_at(w, 54) == 1.0 and lr_at(w, 55) == pytest.approx(1.0) and lr_at(w, 110) == pytest.approx(0.1)
    assert lr_at(w, 82) == pytest.approx(1.0 - 0.9 * 27 / 55)


def test_config_toml_precedence_and_errors(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text('preset = "mini"\nseq_len = 128\n[optim]\nlr = 1\nschedule = "wsd"\n', encoding="utf-8")
    cfg = load_config(f, {"seq_len": 64, "max_steps": None})
    assert (cfg.preset, cfg.seq_len, cfg.lr, cfg.schedule, cfg.max_steps) == ("mini", 64, 1.0, "wsd", 1000)
    f.write_text("learning_rate = 1e-3\n", encoding="utf-8")
    with pytest.raises(VnminiError, match="unknown setting.*learning_rate"):
        load_config(f)
    with pytest.raises(VnminiError, match="--schedule"):
        load_config(None, {"schedule": "linear"})
    with pytest.raises(VnminiError, match="multiple of"):
        TrainConfig(micro_batch=3, seq_len=100, global_batch_tokens=1000).grad_accum(2)


def test_dropout_is_training_only_and_resume_stays_exact(reference, shards, init_ckpt, tmp_path, monkeypatch):
    """--dropout perturbs training forwards only; eval/export forwards are the plain decoder; resume is exact."""
    from vnmini.checkpoint import load_checkpoint
    from vnmini.training.pretrain import train

    model = load_checkpoint(init_ckpt).model.set_dropout(0.3)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model.eval()(ids)
        assert torch.equal(model.set_dropout(0.0).train()(ids), ref)  # p = 0 in training: the same ops
        model.set_dropout(0.3)
        a, b = model(ids), model(ids)
        assert not torch.allclose(a, ref, atol=1e-3) and not torch.equal(a, b)  # training mode draws masks
        assert torch.equal(model.eval()(ids), ref)

    ref_out, _ = reference
    full = tmp_path / "full"
    train(**base(shards, init_ckpt, full, dropout=0.2))
    assert losses(full) != losses(ref_out)  # the flag reaches the model
    out = tmp_path / "run"
    orig = interrupt_at(monkeypatch, 13)
    with pytest.raises(Interrupted):
        train(**base(shards, init_ckpt, out, dropout=0.2))
    monkeypatch.setattr(Trainer, "_micro_batch", orig)
    train(**base(shards, init_ckpt, out, dropout=0.2, resume=True))
    assert losses(out) == losses(full)  # the dropout masks come from the saved RNG state: bit-for-bit
    same_weights(out / "final", full / "final")
    assert json.loads((full / "final" / "config.json").read_text()) == \
        json.loads((ref_out / "final" / "config.json").read_text())  # not part of the exported architecture


def test_decay_groups_skip_norms_and_embeddings(tiny_config):
    from vnmini.models import LlamaForCausalLM

    m = LlamaForCausalLM(tiny_config(tie_word_embeddings=True))
    decay, no = decay_groups(m, 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    assert all("norm" in names[id(p)] or "embed" in names[id(p)] for p in no["params"])
    assert all(p.dim() == 2 and "embed" not in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(no["params"]) == len(list(m.parameters()))


def test_cli_train_bad_input(cli, tmp_path, shards):
    code, _, err = cli("train", "--data", tmp_path / "nope")
    assert code == 2 and "manifest.json" in err
    code, _, err = cli("train", "--data", shards, "--preset", "huge", "--out", tmp_path / "r")
    assert code == 2 and "--preset" in err
    code, _, err = cli("train", "--data", shards, "--tokenizer", tmp_path, "--out", tmp_path / "r")
    assert code == 2 and "tokenizer.json" in err
    code, _, err = cli("train", "--data", shards, "--dropout", "1.5", "--out", tmp_path / "r")
    assert code == 2 and "--dropout" in err and "[0, 1)" in err and not (tmp_path / "r").exists()
    # The schedule's shape is a flag of every training verb, validated the same way.
    teacher_text = tmp_path / "teacher.jsonl"
    teacher_text.write_text('{"text": "Điều 1. Phạm vi điều chỉnh"}\n', encoding="utf-8")
    for verb, extra in (("train", []), ("distill", ["--teacher-text", teacher_text]), ("sft", [])):
        code, _, err = cli(verb, "--data", shards, *extra, "--decay-fraction", "0", "--out", tmp_path / "r")
        assert code == 2 and "--decay-fraction" in err and "(0, 1]" in err and not (tmp_path / "r").exists(), verb


def test_flag_help_shows_the_trainconfig_defaults(cli, monkeypatch):
    """Defaults in --help come from TrainConfig (one source), and survive typer's rich markup."""
    from vnmini.training.config import SFT_DEFAULTS, TrainConfig

    monkeypatch.setenv("COLUMNS", "400")  # one help line per flag

    code, out, _ = cli("train", "--help")
    flat = " ".join(out.split())
    assert code == 0 and f"(default: {TrainConfig.schedule})" in flat and f"(default: {TrainConfig.lr})" in flat
    code, out, _ = cli("sft", "--help")
    assert code == 0 and f"(default: {SFT_DEFAULTS['lr']})" in " ".join(out.split())


def test_threads_bound_torch_and_the_numba_kernels_during_a_run(shards, init_ckpt, tiny_tokenizer, tmp_path):
    """--threads 1 holds torch and the Numba losses to one thread (two trainings sharing a 2-core machine would
    otherwise both spread their kernels over every core), and the caller's counts come back after."""
    import numba

    from vnmini.data.shards import ShardReader
    from vnmini.training.batch import ce_loss
    from vnmini.training.pretrain import TokenWindows, build_config, make_model

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba sees one thread here")
    before = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(2)
    torch.set_num_threads(2)
    cfg = build_config(None, base(shards, init_ckpt, tmp_path / "run", max_steps=3, eval_every=0, save_every=0,
                                  threads=1, kernels="numba"))
    ce = ce_loss("numba")
    seen = []

    def watched(module, batch):
        seen.append((numba.get_num_threads(), torch.get_num_threads()))
        return ce(module, batch)

    src = TokenWindows(ShardReader(shards, "train"), ShardReader(shards, "val"), cfg.seq_len)
    tr = Trainer(cfg, make_model(cfg, tiny_tokenizer), src, tokenizer=tiny_tokenizer, loss_fn=watched)
    try:
        tr.fit()
    finally:
        tr.close()
    after = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(before[0])
    torch.set_num_threads(before[1])
    assert seen and set(seen) == {(1, 1)}
    assert after == (2, 2)
