"""Pretraining data at corpus scale: reading a corpus of any size and format (`corpus`), turning it into
memory-mapped token shards with their tokenizer (`prepare`: electra_fast.prepare, with the options of `config`,
PrepareConfig; `cli`: `electra-fast prepare`), and reading the shards back as training windows (`shards`)."""
