"""Pretraining data at corpus scale: reading a corpus of any size and format (`corpus`), turning it into
memory-mapped token shards with their tokenizer (`prepare`: `electra-fast prepare`), and reading the shards back
as training windows (`shards`)."""
