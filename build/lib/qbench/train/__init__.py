"""Making pairs where none can be downloaded: the corpus recipe (`corpus`), its tokenizer
(`tokenizer`) and pair training. Nothing is imported here, so `qbench.train.tokenizer` loads
on machines with only tokenizers and numpy."""
