"""Failures a user meets early, through the real entry point: typos, two runs in one folder,
Ctrl-C in training, a full disk, a changed shape on --resume, an export that fails its own
verification, leftovers of a killed writer, ``distill --teacher-cache`` without --seq-len."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import VI_SAMPLE, save_random_teacher

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def vnmini(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vnmini.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


@pytest.mark.parametrize("argv, says", [
    (["trian"], "No such command 'trian'"),
    (["tokenizer", "adpot"], "No such command 'adpot'"),
    (["export", "gguf", "--bogus"], "No such option: --bogus"),
    (["train", "--max-steps", "many"], "Invalid value for '--max-steps'"),
])
def test_typos_print_usage_and_exit_2(argv, says):
    r = vnmini(*argv)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and "Usage:" in r.stderr and "Traceback" not in r.stderr + r.stdout


def _train_args(law, out, steps, **kw):
    args = ["train", "--data", law / "shards", "--tokenizer", law / "tok", "--out", out, "--preset", "micro",
            "--max-steps", steps, "--seq-len", "16", "--micro-batch", "1", "--global-batch-tokens", "16",
            "--eval-every", "0", "--save-every", "0", "--sample-tokens", "0", "--threads", "1", "--no-progress"]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


@pytest.fixture(scope="module")
def law(tmp_path_factory, law_corpus):
    """Shards + tokenizer, and a random teacher checkpoint saved with that tokenizer."""
    d = tmp_path_factory.mktemp("law")
    save_random_teacher(d / "teacher", law_corpus(d), hidden=32, layers=1, heads=2, kv_heads=1)
    return d


def _start_slow_train(law, out, steps=100000):
    # SIGINT back to the default in the child: a pytest started in the background of a non-interactive shell
    # (`pytest &`, CI runners) inherits SIGINT ignored and so would every child, and Ctrl-C must reach the trainer.
    p = subprocess.Popen([sys.executable, "-m", "vnmini.cli", *map(str, _train_args(law, out, steps))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until it is training (has written a step)
        m = out / "metrics.jsonl"
        if m.is_file() and '"loss"' in m.read_text(encoding="utf-8"):
            return p
        if p.poll() is not None:
            raise AssertionError(f"the run ended early: {p.stderr.read().decode()[-500:]}")
        time.sleep(0.1)
    p.kill()
    raise AssertionError("the run did not start training within 120 s")


def test_two_runs_in_one_folder_the_second_is_refused(law, tmp_path, cli):
    out = tmp_path / "run"
    p = _start_slow_train(law, out)
    try:
        code, _, err = cli(*_train_args(law, out, 3))
        assert code == 2 and "another vnmini process" in err and str(p.pid) in err, err
    finally:
        p.kill()
        p.communicate(timeout=60)
    # The kernel dropped the dead process's lock: the folder is usable again.
    code, _, err = cli(*_train_args(law, out, 3), "--resume")
    assert code == 0, err


def test_ctrl_c_saves_a_resumable_checkpoint(law, tmp_path, cli):
    out = tmp_path / "run"
    p = _start_slow_train(law, out, steps=400)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    err = err.decode()
    assert p.returncode == 130, err
    assert "saved" in err and "--resume" in err and "Traceback" not in err, err
    saved = [d for d in out.glob("step_*") if (d / "trainer_state.pt").is_file()]
    assert saved, f"no checkpoint after Ctrl-C: {sorted(x.name for x in out.iterdir())}"
    step = json.loads((saved[0] / "vnmini.json").read_text())["step"]
    assert step >= 1
    code, stdout, err = cli(*_train_args(law, out, 400), "--resume")
    assert code == 0 and f"resumed from {saved[0]} at step {step}" in stdout, err


def test_resume_with_another_shape_is_one_line(law, tmp_path, cli):
    out = tmp_path / "run"
    assert cli(*_train_args(law, out, 2, save_every=1))[0] == 0
    code, _, err = cli(*_train_args(law, out, 4, preset="tiny"), "--resume")
    assert code == 2 and "another model shape" in err and len(err.strip().splitlines()) == 1, err


def test_disk_full_is_one_line_and_leaves_nothing(law, tmp_path, cli, tiny_checkpoint, monkeypatch):
    """ENOSPC at the rename that publishes each output (where a full disk surfaces last)."""
    real_replace = os.replace

    def full(src, dst, *a, **kw):
        if str(tmp_path) in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *a, **kw)

    src = tmp_path / "src.txt"
    src.write_text(VI_SAMPLE * 3, encoding="utf-8")
    cases = {
        "tokenizer": ["tokenizer", "train", src, "-o", tmp_path / "tok", "--vocab-size", "280"],
        "shards": ["data", "prepare", src, "--tokenizer", law / "tok", "-o", tmp_path / "shards"],
        "clean.jsonl": ["corpus", "clean", src, "-o", tmp_path / "clean.jsonl"],
        "onnx": ["export", "onnx", tiny_checkpoint, "-o", tmp_path / "onnx", "--no-verify"],
        "run": _train_args(law, tmp_path / "run", 2),
        "cache": ["teacher", "cache", "--teacher", law / "teacher", "--data", law / "shards", "-o", tmp_path / "cache",
                  "--seq-len", "16", "--max-windows", "2", "--no-progress", "--device", "cpu"],
    }
    monkeypatch.setattr(os, "replace", full)
    for name, argv in cases.items():
        code, _, err = cli(*argv)
        assert code == 2 and "No space left on device" in err and "Traceback" not in err, (name, err)
        assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1, (name, err)
        left = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("src.txt", "run"))
        assert not [x for x in left if x.startswith((name, f".{name}"))], (name, left)


def test_failed_verification_never_gets_the_final_name(tiny_checkpoint, tmp_path, cli, monkeypatch):
    import vnmini.export.gguf_verify as gv

    real = gv.check_chat

    def wrong(llm, tok):
        r = real(llm, tok)
        return {**r, "equal": False}

    monkeypatch.setattr(gv, "check_chat", wrong)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.gguf"
    code, _, err = cli("export", "gguf", tiny_checkpoint, "-o", out, "--quant", "f32")
    assert code == 2 and "verification FAILED" in err and "chat" in err, err
    assert sorted(p.name for p in out_dir.iterdir()) == [], "a failed export left files behind"
    code, _, err = cli("export", "gguf", tiny_checkpoint, "-o", out, "--quant", "f32", "--keep-failed")
    assert code == 2 and "m.failed.gguf" in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["m.failed.gguf", "m.failed.verify.json",
                                                         "m.failed.verify.md"]
    assert not json.loads((out_dir / "m.failed.verify.json").read_text())["passed"]


def test_leftovers_of_a_killed_writer_are_cleaned(tiny_checkpoint, tmp_path, cli):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=60)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [tmp_path / f".m.gguf.{dead.pid}.x1.tmp", tmp_path / f".m.gguf.{dead.pid}.x2.f32.tmp"]
        for s in stale:
            s.write_bytes(b"half")
        stale_dir = tmp_path / f".onnx.{dead.pid}.y.tmp"
        stale_dir.mkdir()
        (stale_dir / "model.onnx").write_bytes(b"half")
        busy = tmp_path / f".m.gguf.{alive.pid}.z.tmp"
        busy.write_bytes(b"another writer, still running")
        assert cli("export", "gguf", tiny_checkpoint, "-o", tmp_path / "m.gguf", "--quant", "f32",
                   "--no-verify")[0] == 0
        assert cli("export", "onnx", tiny_checkpoint, "-o", tmp_path / "onnx", "--no-verify")[0] == 0
        assert not any(s.exists() for s in [*stale, stale_dir]) and busy.exists()
    finally:
        alive.kill()
        alive.wait(timeout=60)


def test_distill_from_a_cache_takes_its_seq_len(law, tmp_path, cli):
    code, _, err = cli("teacher", "cache", "--teacher", law / "teacher", "--data", law / "shards", "-o",
                       tmp_path / "cache", "--seq-len", "16", "-k", "4", "--max-windows", "8", "--no-progress",
                       "--device", "cpu")
    assert code == 0, err
    code, _, err = cli("distill", "--teacher-cache", tmp_path / "cache", "--data", law / "shards", "--tokenizer",
                       law / "tok", "--student-preset", "micro", "--out", tmp_path / "kd", "--max-steps", "2",
                       "--micro-batch", "1", "--global-batch-tokens", "16", "--eval-every", "0",
                       "--sample-tokens", "0", "--no-progress", "--device", "cpu")
    assert code == 0, err
    prov = json.loads((Path(tmp_path / "kd" / "final") / "vnmini.json").read_text())
    assert prov["config"]["seq_len"] == 16
