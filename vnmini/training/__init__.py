"""vnmini.training -- everything that updates weights.

- :mod:`.config`: :class:`~vnmini.training.config.TrainConfig`, the one source of the
  training knobs, their defaults and their ``--help`` text.
- :mod:`.trainer`: the loop (grad accumulation, AMP, checkpoints, resume, metrics).
- :mod:`.schedule`: the lr schedule and the ``--max-minutes`` time plan (probe, plan, re-plan).
- :mod:`.recipes`: the recipe rules (batch, lr, warmup, shape for a budget), with their evidence.
- :mod:`.plan`: ``vnmini plan`` / ``--plan auto`` (a throughput probe + the recipes).
- :mod:`.rundir`: what a run folder holds; finding the checkpoint to resume.
- :mod:`.dist`: torchrun/DDP/FSDP2 glue.
- :mod:`.pretrain`: ``vnmini.train`` (from scratch or continued).
- :mod:`.sft`: chat fine-tuning, loss on assistant turns only, packed.
- :mod:`.distill`: online logit KD, KD from a teacher cache, sequence-level KD.
- :mod:`.teacher_cache` / :mod:`.teacher_generate`: run the teacher once.
- :mod:`.plots`: loss / bpb curves as PNG.

    from vnmini.training.pretrain import train
    train(data="shards/", preset="tiny", max_steps=2000, out="runs/tiny")
"""
