"""Prepared data: text sources, the default corpus, the tokenizer, token shards, the training reader.

Nothing is imported here, so that a module of the package loads only what it needs."""
