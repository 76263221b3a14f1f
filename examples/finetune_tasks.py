"""Pretrain a tiny ELECTRA with `electra_fast.pretrain`, then fine-tune its discriminator on each downstream task
with `electra_fast.finetune.finetune`: classification (a TSV file), named entities (a CoNLL file) and question
answering (a SQuAD v2.0 file), each against the same architecture from scratch. Small generated files; about two
minutes on a laptop CPU (`--quick`: a few seconds' smoke run, too short to learn anything):

    python examples/finetune_tasks.py

The same from the shell: `electra-fast pretrain --corpus FILE --out DIR ...`, then
`electra-fast finetune --model DIR/discriminator --task classification --train FILE --validation FILE`.
"""
import io
import json
import os
import random
import sys
import tempfile

import electra_fast
from electra_fast.finetune import FinetuneOptions, finetune

QUICK = "--quick" in sys.argv[1:]
# pretraining steps, corpus lines, task rows (train, validation), fine-tuning epochs and seeds
STEPS, LINES, ROWS, EPOCHS, SEEDS = (4, 200, (40, 20), 1, 1) if QUICK else (150, 2000, (400, 100), 5, 3)
FRUITS = "apple banana cherry mango plum".split()
COLORS = "red green blue yellow purple".split()
OTHERS = "house cloud music paper table window garden little big happy quiet over under".split()
rng = random.Random(0)


def sentence():
    return [rng.choice(FRUITS + COLORS + OTHERS) for _ in range(rng.randint(3, 10))]


def classification_file(path, n):
    """TSV with a header: does the sentence name a fruit?"""
    with open(path, "w") as f:
        f.write("sentence\tlabel\n")
        for _ in range(n):
            words = sentence()
            f.write(f"{' '.join(words)}\t{int(any(w in FRUITS for w in words))}\n")


def conll_file(path, n):
    """CoNLL-2003 layout (token, POS, chunk, NER tag): fruits B-FOOD, colours B-COLOR."""
    with open(path, "w") as f:
        for _ in range(n):
            for word in sentence():
                tag = "B-FOOD" if word in FRUITS else "B-COLOR" if word in COLORS else "O"
                f.write(f"{word} NN O {tag}\n")
            f.write("\n")


def squad_file(path, n):
    """SQuAD v2.0: "which colour?" over a context holding one colour, or none (no answer)."""
    paragraphs = []
    for i in range(n):
        words = [w for w in sentence() if w not in COLORS]
        answers = []
        if rng.random() < 0.7:
            at = rng.randrange(len(words))
            words.insert(at, rng.choice(COLORS))
            answers.append({"text": words[at], "answer_start": len(" ".join(words[:at] + [""]))})
        paragraphs.append({"context": " ".join(words), "qas": [{"id": f"q{i}", "question": "which colour?",
                                                                "answers": answers, "is_impossible": not answers}]})
    with open(path, "w") as f:
        json.dump({"version": "v2.0", "data": [{"title": "colours", "paragraphs": paragraphs}]}, f)


with tempfile.TemporaryDirectory() as work:
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w") as f:
        f.writelines(" ".join(sentence()) + "\n" for _ in range(LINES))
    pretrained = electra_fast.pretrain(electra_fast.PretrainConfig(
        corpus=[corpus], out=os.path.join(work, "pretrain"), steps=STEPS, num_layers=1, hidden_size=64, num_heads=2,
        intermediate_size=128, embedding_size=64, vocab_size=300, seq_len=32, batch_size=16))
    print(f"pretrained {pretrained.steps} steps: loss {pretrained.metrics['loss']:.3f}, validation loss "
          f"{pretrained.valid_metrics.get('loss', float('nan')):.3f}; {pretrained.export}")
    model = pretrained.export
    tasks = {"classification": (classification_file, ".tsv", {"text_columns": ("sentence",)}),
             "token-classification": (conll_file, ".conll", {}),
             "question-answering": (squad_file, ".json", {"max_length": 64})}
    for task, (write, extension, settings) in tasks.items():
        train, validation = (os.path.join(work, f"{task}-{part}{extension}") for part in ("train", "dev"))
        write(train, ROWS[0])
        write(validation, ROWS[1])
        for from_scratch in (False, True):
            results = finetune(FinetuneOptions(model=model, task=task, train=train, validation=validation,
                                               from_scratch=from_scratch, lr=1e-3, epochs=EPOCHS, batch_size=16,
                                               seeds=SEEDS, progress=False, log=io.StringIO(), **settings))
            scores = ", ".join(f"{k} {v:.3f}" for k, v in results["median"].items())
            print(f"{task:22s} {'from scratch' if from_scratch else 'pretrained':12s} median of {SEEDS}: {scores}")
