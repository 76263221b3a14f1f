"""Pretrain a tiny ELECTRA with `electra-fast pretrain`, then fine-tune its discriminator on each downstream task:
classification (a TSV file), named entities (a CoNLL file) and question answering (a SQuAD v2.0 file), each
against the same architecture from scratch. Small generated files; about two minutes on a laptop CPU:

    python examples/finetune_tasks.py

The same from the shell: `electra-fast finetune --model DIR --task classification --train FILE --validation FILE`.
"""
import io
import json
import os
import random
import tempfile

from electra_fast.cli import main as electra_fast
from electra_fast.finetune import FinetuneOptions, finetune

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
        f.writelines(" ".join(sentence()) + "\n" for _ in range(2000))
    electra_fast(["pretrain", "--corpus", corpus, "--out", os.path.join(work, "pretrain"), "--steps", "150",
                  "--num-layers", "1", "--hidden-size", "64", "--num-heads", "2", "--intermediate-size", "128",
                  "--embedding-size", "64", "--vocab-size", "300", "--seq-len", "32", "--batch-size", "16"])
    model = os.path.join(work, "pretrain", "discriminator")
    tasks = {"classification": (classification_file, ".tsv", {"text_columns": ("sentence",)}),
             "token-classification": (conll_file, ".conll", {}),
             "question-answering": (squad_file, ".json", {"max_length": 64})}
    for task, (write, extension, settings) in tasks.items():
        train, validation = (os.path.join(work, f"{task}-{part}{extension}") for part in ("train", "dev"))
        write(train, 400)
        write(validation, 100)
        for from_scratch in (False, True):
            results = finetune(FinetuneOptions(model=model, task=task, train=train, validation=validation,
                                               from_scratch=from_scratch, lr=1e-3, epochs=5, batch_size=16, seeds=3,
                                               progress=False, log=io.StringIO(), **settings))
            scores = ", ".join(f"{k} {v:.3f}" for k, v in results["median"].items())
            print(f"{task:22s} {'from scratch' if from_scratch else 'pretrained':12s} median of 3: {scores}")
