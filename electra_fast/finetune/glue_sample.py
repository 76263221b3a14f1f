"""A small made-up GLUE folder in GLUE's layout as distributed, to try `electra-fast glue` without the data (and to
test it): the nine task folders with train.tsv, dev.tsv (MNLI: dev_matched.tsv, dev_mismatched.tsv) and test
files, each with GLUE's header (CoLA: none) and columns, quotes left unbalanced as GLUE's texts leave them, and a
QQP question broken over two lines (two rows of a wrong field count). The sentences are random words; each label
follows a rule of the words (`label_of`) that a fine-tuned model can learn.

    python -m electra_fast.finetune.glue_sample DIR [--train-rows 200] [--dev-rows 50] [--seed 0]
"""
from __future__ import annotations

import os
import random
import re

FRUITS = "apple banana cherry mango plum".split()
COLORS = "red green blue yellow purple".split()
OTHERS = "house river stone cloud music paper table window garden little big happy quiet over under".split()

_MNLI_COLUMNS = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
                 "sentence2_parse\tsentence1\tsentence2")
_STS_COLUMNS = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"


def _fruits(text: str) -> set[str]:
    return {word for word in re.findall(r"[a-z]+", text) if word in FRUITS}


def label_of(task: str, texts: tuple[str, ...]) -> str:
    """The label that `task`'s rule gives to `texts` (one sentence, or a pair), as the files write it."""
    if task in ("CoLA", "SST-2"):   # acceptable / positive: a fruit in the sentence
        return str(int(bool(_fruits(texts[0]))))
    first, second = _fruits(texts[0]), _fruits(texts[1])
    if task in ("MRPC", "QQP"):     # paraphrase / duplicate: the pair shares a fruit
        return str(int(bool(first & second)))
    if task == "STS-B":             # similarity: 5 × the Jaccard index of the two word sets
        a, b = set(texts[0].split()), set(texts[1].split())
        return f"{5 * len(a & b) / len(a | b):.3f}"
    if task == "MNLI":              # the hypothesis' fruit in the premise, another one, or none
        return "neutral" if not second else "entailment" if second <= first else "contradiction"
    if task == "QNLI":              # the question's fruit in the sentence
        return "entailment" if first and first <= second else "not_entailment"
    if task in ("RTE", "WNLI"):     # the hypothesis' fruit in the premise
        entailed = bool(second) and second <= first
        return ("entailment" if entailed else "not_entailment") if task == "RTE" else str(int(entailed))
    raise ValueError(f"no rule for task {task!r}")


def _sentence(rng: random.Random, fruit: str | None = None, quote: bool = False) -> str:
    words = [rng.choice(COLORS + OTHERS) for _ in range(rng.randint(3, 8))]
    if fruit:
        words[rng.randrange(len(words))] = fruit
    if quote:   # GLUE's texts hold unbalanced quotes and split clitics, read with no quoting
        at = rng.randrange(len(words))
        words[at] = '"' + words[at]
        words.insert(1, "'s")
    return " ".join(words)


def _maybe_fruit(rng: random.Random) -> str | None:
    return rng.choice(FRUITS) if rng.random() < 0.5 else None


def _pair(rng: random.Random) -> tuple[str, str]:
    """Two sentences that share a fruit half of the time (else one has another fruit, or none)."""
    fruit = rng.choice(FRUITS)
    other = rng.choice([f for f in FRUITS if f != fruit] + [None])
    return _sentence(rng, fruit), _sentence(rng, fruit if rng.random() < 0.5 else other)


def _parse(text: str) -> str:
    return "( " + " ".join(f"( {word} )" for word in text.split()) + " )"


def _rows(task: str, n: int, rng: random.Random, *, annotators: int = 1) -> list[str]:
    """n lines of `task`'s labelled file (train or dev), without the header; MNLI's with `annotators` label columns
    before the gold one."""
    lines = []
    for i in range(n):
        if task in ("CoLA", "SST-2"):
            text = _sentence(rng, _maybe_fruit(rng), quote=rng.random() < 0.2)
            label = label_of(task, (text,))
            lines.append(f"gj04\t{label}\t{'' if label == '1' else '*'}\t{text}" if task == "CoLA"
                         else f"{text}\t{label}")
            continue
        first, second = _pair(rng)
        if task == "STS-B":
            second = " ".join(first.split()[:rng.randint(0, 4)] + second.split()[:4])
        label = label_of(task, (first, second))
        if task == "MRPC":
            lines.append(f"{label}\t{1000 + 2 * i}\t{1001 + 2 * i}\t{first}\t{second}")
        elif task == "STS-B":
            lines.append(f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{first}\t{second}\t{label}")
        elif task == "QQP":
            lines.append(f"{i}\t{2 * i + 1}\t{2 * i + 2}\t{first}?\t{second}?\t{label}")
        elif task == "MNLI":
            lines.append(f"{i}\t{i}\t{i}n\tfiction\t{_parse(first)}\t{_parse(second)}\t(ROOT {_parse(first)})\t"
                         f"(ROOT {_parse(second)})\t{first}\t{second}" + f"\t{label}" * (annotators + 1))
        elif task == "QNLI":
            named = sorted(_fruits(second)) or [rng.choice(OTHERS)]
            question = f"where is the {rng.choice(COLORS)} {named[0]}?"
            lines.append(f"{i}\t{question}\t{first}\t{label_of(task, (question, first))}")
        else:   # RTE, WNLI
            lines.append(f"{i}\t{first}\t{second}\t{label}")
    return lines


def _write(path: str, header: str | None, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("".join(line + "\n" for line in ([header] if header is not None else []) + lines))


def write_glue_sample(folder: str, *, train_rows: int = 200, dev_rows: int = 50, seed: int = 0) -> None:
    """Writes the made-up GLUE folder under `folder` (see the module's docstring)."""
    rng = random.Random(seed)
    headers = {"CoLA": None, "SST-2": "sentence\tlabel", "MRPC": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
               "STS-B": f"{_STS_COLUMNS}\tscore", "QQP": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
               "QNLI": "index\tquestion\tsentence\tlabel", "RTE": "index\tsentence1\tsentence2\tlabel",
               "WNLI": "index\tsentence1\tsentence2\tlabel"}
    tests = {"CoLA": "index\tsentence", "SST-2": "index\tsentence",
             "MRPC": "index\t#1 ID\t#2 ID\t#1 String\t#2 String", "STS-B": _STS_COLUMNS,
             "QQP": "id\tquestion1\tquestion2", "QNLI": "index\tquestion\tsentence",
             "RTE": "index\tsentence1\tsentence2", "WNLI": "index\tsentence1\tsentence2"}
    for task, header in headers.items():
        os.makedirs(os.path.join(folder, task), exist_ok=True)
        train = _rows(task, train_rows, rng)
        if task == "QQP":   # a question with a line break in it: two lines of 4 and 3 fields
            train.insert(len(train) // 2, f"{train_rows}\t9001\t9002\twhat is the red\nriver?\twhat river is red?\t0")
        _write(os.path.join(folder, task, "train.tsv"), header, train)
        _write(os.path.join(folder, task, "dev.tsv"), header, _rows(task, dev_rows, rng))
        _write(os.path.join(folder, task, "test.tsv"), tests[task],
               ["\t".join([str(i)] + [_sentence(rng) for _ in range(tests[task].count("\t"))]) for i in range(2)])
    mnli = os.path.join(folder, "MNLI")
    os.makedirs(mnli, exist_ok=True)
    _write(os.path.join(mnli, "train.tsv"), f"{_MNLI_COLUMNS}\tlabel1\tgold_label", _rows("MNLI", train_rows, rng))
    for split in ("matched", "mismatched"):   # five annotators' labels, then the gold one
        _write(os.path.join(mnli, f"dev_{split}.tsv"),
               f"{_MNLI_COLUMNS}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label",
               _rows("MNLI", dev_rows, rng, annotators=5))
        _write(os.path.join(mnli, f"test_{split}.tsv"), _MNLI_COLUMNS,
               [line.rsplit("\t", 2)[0] for line in _rows("MNLI", 2, rng)])
    os.makedirs(os.path.join(folder, "diagnostic"), exist_ok=True)
    _write(os.path.join(folder, "diagnostic", "diagnostic.tsv"), "index\tsentence1\tsentence2",
           [f"{i}\t{_sentence(rng)}\t{_sentence(rng)}" for i in range(2)])


def main(argv=None) -> None:
    """`python -m electra_fast.finetune.glue_sample DIR ...` (its flags: electra_fast.finetune.cli)."""
    from .cli import glue_sample_arguments

    args = glue_sample_arguments(__doc__, argv)
    write_glue_sample(args.folder, train_rows=args.train_rows, dev_rows=args.dev_rows, seed=args.seed)
    print(f"{args.folder}: GLUE's layout, {args.train_rows} training and {args.dev_rows} dev rows per task")


if __name__ == "__main__":
    main()
