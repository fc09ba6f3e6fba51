"""``vnmini plan`` and ``vnmini train --plan auto``: one function, so what the table says is what the run does.

Both run on a fake clock (as in ``test_schedule``): a micro batch costs DT, an eval or
a checkpoint exactly what the planner expects it to cost, so every candidate measures
the same tokens/s and the probe, the plan and the run are exact numbers; the models
and the data are real (tiny).
"""

from __future__ import annotations

import json

import pytest
from test_schedule import install_clock

from vnmini.training import schedule
from vnmini.training.trainer import Trainer, read_metrics

DT = 0.2  # fake seconds per micro batch
FLAGS = ["--seq-len", "16", "--micro-batch", "2", "--global-batch-tokens", "64", "--warmup-steps", "2",
         "--sample-tokens", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, law_corpus):
    d = tmp_path_factory.mktemp("plan")
    tok = law_corpus(d)
    tok.save(d / "shards")
    return d / "shards"


@pytest.fixture
def clock(monkeypatch):
    c = install_clock(monkeypatch, DT)
    ev, sv = Trainer.evaluate, Trainer.save

    def evaluate(self):
        c.t += schedule.estimate_eval_s(self._eval_rows() * self.cfg.seq_len, self.cfg.sample_tokens, 32 / DT)
        return ev(self)

    def save(self, name):
        c.t += schedule.estimate_save_s(sum(p.numel() for p in self.model.parameters()))
        return sv(self, name)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    monkeypatch.setattr(Trainer, "save", save)
    return c


def test_plan_then_train_auto_do_the_same(cli, shards, tmp_path, clock):
    code, out, err = cli("plan", "--minutes", "0.25", "--data", shards, *FLAGS, "--json")
    assert code == 0, err
    p = json.loads(out)
    assert [c["preset"] for c in p["candidates"]] == ["micro", "tiny", "mini"]  # the CPU candidates
    # One fake rate for all shapes: none gets 0.1 tokens/param here, so the smallest is chosen.
    assert p["chosen"]["preset"] == "micro" and p["notes"]
    assert p["chosen"]["tokens_per_s"] == pytest.approx(32 / DT)
    assert p["probe_s"] <= 0.1 * 15 + 3 * DT  # the probe stays within its share of the budget
    chosen = p["chosen"]
    assert (chosen["global_batch_tokens"], chosen["warmup_steps"], chosen["seq_len"]) == (64, 2, 16)  # flags kept

    run = tmp_path / "run"
    t0 = clock.t
    code, out, err = cli("train", "--data", shards, "--plan", "auto", "--max-minutes", "0.25", *FLAGS,
                         "--out", run, "--no-progress")
    assert code == 0, err
    prov = json.loads((run / "final" / "vnmini.json").read_text())
    settings = prov["plan"]["settings"]
    assert settings == {k: chosen[k] for k in settings}  # the same choice as the table
    for k in ("preset", "lr", "schedule", "eval_every", "save_every"):
        assert prov["config"][k] == chosen[k], k
    assert prov["config"]["warmup_steps"] == 2  # a flag the user gave wins over the recipe
    plans = [r for r in read_metrics(run) if r.get("event") == "plan"]
    assert abs(plans[0]["planned_steps"] - chosen["steps"]) <= 2  # the table's steps, ± the probe's rounding
    assert abs(prov["step"] - chosen["steps"]) <= 2 and clock.t - t0 <= 15 + 1e-6  # and it ends by the deadline
    assert prov["time_plan"]["elapsed_s"] == pytest.approx(clock.t - t0, abs=1e-6)  # its own probe counted too
    assert prov["plan"]["probe_s"] == pytest.approx(p["probe_s"])
    assert "epochs" in prov and prov["tokens_per_epoch"] > 0


def test_python_twin_and_table(shards, clock):
    import vnmini

    p = vnmini.plan(minutes=0.25, data=str(shards), preset="tiny", seq_len=16, micro_batch=2, threads=1,
                    sample_tokens=0)
    assert [c.preset for c in p.candidates] == ["tiny"] and p.chosen.preset == "tiny"
    table = p.table()
    assert "→" in table and "| tiny |" in table and "epochs" in table.splitlines()[0]
    assert p.chosen.epochs == pytest.approx(p.chosen.tokens / p.train_tokens)
    assert p.settings()["preset"] == "tiny" and p.settings()["schedule"] == "wsd"
    # An epochs bound (and a step bound) the user sets caps the planned steps, as the trainer will.
    small = dict(minutes=1, data=str(shards), preset="tiny", seq_len=16, micro_batch=2, threads=1, sample_tokens=0,
                 global_batch_tokens=32)
    free, few = vnmini.plan(**small).chosen, vnmini.plan(**small, max_epochs=0.5).chosen
    assert few.steps < free.steps and 0.5 <= few.epochs < 0.5 + 32 / p.train_tokens, (few, free)
    assert vnmini.plan(**small, max_steps=3).chosen.steps == 3


def test_bad_values_are_one_line(cli, shards, tmp_path):
    for bad in ("0", "-1", "nan", "inf"):
        code, _, err = cli("plan", "--minutes", bad, "--data", shards)
        assert code == 2 and "--minutes" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = cli("plan", "--minutes", "many", "--data", shards)
    assert code == 2 and "--minutes" in err and "Traceback" not in err
    code, _, err = cli("plan", "--minutes", "1")
    assert code == 2 and "--data" in err
    code, _, err = cli("train", "--data", shards, "--plan", "auto", "--out", tmp_path / "r")
    assert code == 2 and "--plan" in err and "--max-minutes" in err
    code, _, err = cli("train", "--data", shards, "--plan", "magic", "--max-minutes", "1", "--out", tmp_path / "r")
    assert code == 2 and "--plan" in err
