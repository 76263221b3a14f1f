"""`electra-fast finetune`: the readers, QA windowing, ELECTRA's optimiser, the refusal of bad input and of damaged
weights, and fine-tuning a model the project exported to near-perfect scores on small generated tasks."""
import argparse
import io
import json
import random

import numpy as np
import pytest
import torch

from electra_fast import ElectraPretrainer
from electra_fast.cli import main as cli_main
from electra_fast.data import prepare, shards
from electra_fast.finetune import FinetuneDataError, FinetuneOptions, data, finetune, train
from electra_fast.finetune.cli import add_arguments

transformers = pytest.importorskip("transformers")

FRUITS = "apple banana cherry mango plum".split()
COLORS = "red green blue yellow purple".split()
OTHERS = "house river stone cloud music paper table window garden little big happy quiet over under".split()
WORDS = FRUITS + COLORS + OTHERS


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, one_thread):
    """A tiny ELECTRA (1 layer, hidden 32) pretrained for a few steps on random word strings and exported as
    `electra-fast pretrain` exports: save_discriminator + save_tokenizer."""
    rng = random.Random(0)
    documents = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(200)]
    tokenizer = shards.train_tokenizer(documents, 200)
    specials = shards.special_ids(tokenizer)
    torch.manual_seed(0)
    model = ElectraPretrainer.from_preset(
        "small", vocab_size=tokenizer.get_vocab_size(), mask_token_id=specials["[MASK]"],
        pad_token_id=specials["[PAD]"], special_token_ids=(specials["[CLS]"], specials["[SEP]"]), num_layers=1,
        hidden_size=32, num_heads=2, intermediate_size=64, embedding_size=32, max_position_embeddings=64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    root = tmp_path_factory.mktemp("pretraining-data")
    (root / "corpus.txt").write_text("\n".join(documents))
    shards.save_tokenizer(tokenizer, str(root / "tokenizer"))
    prepare.prepare([str(root / "corpus.txt")], str(root / "data"), tokenizer_dir=str(root / "tokenizer"), workers=1,
                    progress=False)
    windows = shards.TokenData(str(root / "data")).windows(16)
    sequences = windows.sequences(np.arange(windows.count))
    for _ in range(60):
        model(sequences[torch.randint(0, len(sequences), (16,))]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = tmp_path_factory.mktemp("pretrained") / "discriminator"
    model.save_discriminator(str(folder))
    shards.save_tokenizer(tokenizer, str(folder))
    return folder


def _options(model, task, train_path, validation_path, **changes):
    settings = dict(model=str(model), task=task, train=str(train_path), validation=str(validation_path),
                    lr=3e-3, epochs=10, batch_size=16, progress=False, log=io.StringIO())
    return FinetuneOptions(**{**settings, **changes})


# --------------------------------------------------------------------------------------------- generated tasks

def _fruit_sentences(n, rng):
    """(text, label): label 1 when the sentence holds a fruit."""
    rows = []
    for _ in range(n):
        words = [rng.choice(COLORS + OTHERS) for _ in range(rng.randint(3, 9))]
        label = rng.random() < 0.5
        if label:
            words[rng.randrange(len(words))] = rng.choice(FRUITS)
        rows.append((" ".join(words), int(label)))
    return rows


def _write_tsv(path, rows, header="sentence\tlabel"):
    path.write_text(header + "\n" + "".join("\t".join(map(str, row)) + "\n" for row in rows))
    return path


def _conll(path, n, rng):
    """Sentences whose fruits are B-FOOD, colours B-COLOR, and "river stone" B-PLACE I-PLACE."""
    units = [[(w, "B-FOOD")] for w in FRUITS] + [[(w, "B-COLOR")] for w in COLORS] + [
        [("river", "B-PLACE"), ("stone", "I-PLACE")]] + [[(w, "O")] for w in OTHERS if w not in ("river", "stone")]
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        for _ in range(rng.randint(2, 8)):
            lines.extend(f"{word} NN O {tag}" for word, tag in rng.choice(units))
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def _squad(path, n, rng, *, v2=True, words=(8, 40)):
    """SQuAD JSON: 'which colour?' over a context of random words holding at most one colour (none: no answer,
    for v2)."""
    paragraphs = []
    for i in range(n):
        context_words = [rng.choice(FRUITS + OTHERS) for _ in range(rng.randint(*words))]
        answerable = not v2 or rng.random() < 0.7
        answers = []
        if answerable:
            at = rng.randrange(len(context_words))
            context_words[at] = rng.choice(COLORS)
            answers = [{"text": context_words[at], "answer_start": len(" ".join(context_words[:at] + [""]))}]
        qa = {"id": f"q{i}", "question": "which colour is it", "answers": answers}
        if v2:
            qa["is_impossible"] = not answerable
        paragraphs.append({"context": " ".join(context_words), "qas": [qa]})
    path.write_text(json.dumps({"version": "v2.0" if v2 else "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]},
                               indent=1))
    return path


# ------------------------------------------------------------------------------------------------------ readers

def test_tables_read_csv_glue_tsv_and_json_lines(tmp_path):
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text('a,b,label\n"one, two","say ""hi""",yes\nthree,four,no\n')
    examples = data.read_table(str(csv_file), ("a", "b"), "label")
    assert [e.texts for e in examples] == [("one, two", 'say "hi"'), ("three", "four")]
    assert [(e.label, e.line) for e in examples] == [("yes", 2), ("no", 3)]
    tsv = tmp_path / "sst.tsv"   # GLUE: tabs, no quoting, quotes inside text kept as they are
    tsv.write_text('sentence\tlabel\nit \'s a "gem\t1\n\nflat\t0\n')
    assert [(e.texts, e.label) for e in data.read_table(str(tsv), ("sentence",), "label")] == [
        (('it \'s a "gem',), "1"), (("flat",), "0")]
    cola = tmp_path / "cola.tsv"   # CoLA has no header
    cola.write_text("gj04\t1\t\tThe book fell.\ngj04\t0\t*\tBook the fell.\n")
    assert [(e.texts, e.label) for e in data.read_table(str(cola), ("3",), "1", header=False)] == [
        (("The book fell.",), "1"), (("Book the fell.",), "0")]
    jsonl = tmp_path / "sts.jsonl"
    jsonl.write_text('{"s1": "a", "s2": "b", "score": 3.8}\n\n{"s1": "c", "s2": "d", "score": 1}\n')
    examples = data.read_table(str(jsonl), ("s1", "s2"), "score")
    assert [(e.label, e.line) for e in examples] == [("3.8", 1), ("1", 3)]
    assert data.is_regression([e.label for e in examples])
    assert not data.is_regression(["0", "1", "2"]) and not data.is_regression(["1.5", "good"])
    assert data.is_regression(["5.000", "0.250"])   # STS-B


def test_conll_reader_and_first_sub_token_labels(pretrained, tmp_path):
    conll = tmp_path / "ner.txt"
    conll.write_text("-DOCSTART- -X- O\n\nRiverstone NNP B-LOC\nquiet JJ O\n\n\nMango NN B-FOOD\n")
    sentences = data.read_conll(str(conll))
    assert [(s.words, s.tags, s.lines) for s in sentences] == [
        (["Riverstone", "quiet"], ["B-LOC", "O"], [3, 4]), (["Mango"], ["B-FOOD"], [7])]
    tokenizer = train.load_fast_tokenizer(str(pretrained))
    features, cut = data.encode_sentences(tokenizer, sentences, {"B-LOC": 0, "O": 1, "B-FOOD": 2}, 64)
    pieces = tokenizer.convert_ids_to_tokens(features[0]["input_ids"])
    split = len(tokenizer.tokenize("Riverstone"))
    assert pieces[1] == "river" and split > 1 and cut == 0
    assert features[0]["first_token"] == [1, 1 + split]
    assert features[0]["labels"] == [-100, 0] + [-100] * (split - 1) + [1, -100]
    features, cut = data.encode_sentences(tokenizer, sentences[:1], None, 3)   # room for "river" only
    assert cut == 1 and features[0]["first_token"] == [1, -1]


def test_question_windows_hold_every_answer_and_map_back_exactly(pretrained, tmp_path):
    tokenizer = train.load_fast_tokenizer(str(pretrained))
    questions, v2 = data.read_squad(str(_squad(tmp_path / "long.json", 30, random.Random(1), v2=False,
                                               words=(40, 80))))
    assert not v2
    windows, windowed = data.encode_questions(tokenizer, questions, max_length=24, doc_stride=6)
    assert windowed == len(questions) and len(windows) > 3 * len(questions)
    for i, question in enumerate(questions):
        text, start = question.answers[0]
        mine = [w for w in windows if w["example"] == i]
        holding = [w for w in mine if w["start_positions"] > 0]
        assert holding, f"no window holds the answer of {question.qid}"
        for w in holding:
            first, last = w["offsets"][w["start_positions"]], w["offsets"][w["end_positions"]]
            assert (first[0], question.context[first[0]:last[1]]) == (start, text)
        # logits that point at the answer in one window, and at [CLS] in the others, give back its text
        starts = [[0.0] * len(w["input_ids"]) for w in mine]
        ends = [[0.0] * len(w["input_ids"]) for w in mine]
        chosen = mine.index(holding[-1])
        starts[chosen][holding[-1]["start_positions"]] = ends[chosen][holding[-1]["end_positions"]] = 5.0
        assert data.best_answers([question], [dict(w, example=0) for w in mine], starts, ends, v2=False) == {
            question.qid: text}
        for row in starts + ends:
            row[0] = 6.0   # [CLS] beats the span: no answer, for v2 only
        assert data.best_answers([question], [dict(w, example=0) for w in mine], starts, ends, v2=True) == {
            question.qid: ""}


def test_layerwise_learning_rates_follow_electra(pretrained):
    model = train.load_model(str(pretrained), "classification", num_labels=2)
    groups = train.layerwise_parameter_groups(model, lr=1.0, decay=0.5, weight_decay=0.01)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(lr_of) == len(named)
    # L = 1: embeddings 0.5^3, layer 0 0.5^2, head 1; weight decay on matrices only
    assert lr_of[id(named["electra.embeddings.word_embeddings.weight"])] == (0.5 ** 3, 0.01)
    assert lr_of[id(named["electra.embeddings.LayerNorm.weight"])] == (0.5 ** 3, 0.0)
    assert lr_of[id(named["electra.encoder.layer.0.attention.self.query.weight"])] == (0.5 ** 2, 0.01)
    assert lr_of[id(named["electra.encoder.layer.0.output.dense.bias"])] == (0.5 ** 2, 0.0)
    assert lr_of[id(named["classifier.out_proj.weight"])] == (1.0, 0.01)


# ---------------------------------------------------------------------------------------------------- bad input

def _bad_inputs(tmp_path, pretrained):
    """(name, arguments, what the error line must name) for each kind of bad input."""
    rng = random.Random(0)
    good = _write_tsv(tmp_path / "good.tsv", _fruit_sentences(20, rng))
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    header_only = _write_tsv(tmp_path / "header.tsv", [])
    no_label = _write_tsv(tmp_path / "nolabel.tsv", [("a b", 1)], header="sentence\ttarget")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("sentence,label\nred house,1\nblue, river,0\n")
    unclosed = tmp_path / "unclosed.csv"
    unclosed.write_text('sentence,label\nred house,1\n"blue" river,0\n')
    broken_json = tmp_path / "broken.jsonl"
    broken_json.write_text('{"sentence": "red", "label": 1}\n{"sentence": "blue", "label": 0\n')
    unseen = _write_tsv(tmp_path / "unseen.tsv", [("red house", 1), ("blue plum", 7)])
    conll_good = _conll(tmp_path / "good.conll", 5, rng)
    conll_short = tmp_path / "short.conll"
    conll_short.write_text("red NN O B-COLOR\nhouse\n")
    conll_tag = tmp_path / "tag.conll"
    conll_tag.write_text("red NN O B-COLOR\nhouse NN O X-THING\n")
    conll_unseen = tmp_path / "unseen.conll"
    conll_unseen.write_text("red NN O B-COLOR\n\nhouse NN O B-EVENT\n")
    squad_good = _squad(tmp_path / "good.json", 5, rng)
    squad_moved = json.loads(squad_good.read_text())
    answered = next(p["qas"][0] for p in squad_moved["data"][0]["paragraphs"] if p["qas"][0]["answers"])
    answered["answers"][0]["answer_start"] += 1
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(squad_moved, indent=1))
    moved_line = next(n for n, line in enumerate(moved.read_text().split("\n"), 1)
                      if f'"id": "{answered["id"]}"' in line)
    squad_broken = tmp_path / "broken.json"
    squad_broken.write_text('{"data": [\n{"paragraphs": }\n]}')
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((pretrained / name).read_bytes())
    cls = ["--task", "classification", "--text-columns", "sentence"]
    return [
        ("empty file", [*cls, "--train", empty, "--validation", good], "empty.tsv: no examples (the file is empty)"),
        ("header only", [*cls, "--train", good, "--validation", header_only], "header.tsv: no examples"),
        ("missing column", [*cls, "--train", no_label, "--validation", good], "nolabel.tsv line 2: no column 'label'"),
        ("ragged CSV", [*cls, "--train", ragged, "--validation", good], "ragged.csv line 3: 3 fields, expected 2"),
        ("malformed CSV", [*cls, "--train", unclosed, "--validation", good], "unclosed.csv line 3: malformed CSV"),
        ("malformed JSON", [*cls, "--train", broken_json, "--validation", good], "broken.jsonl line 2: malformed JSON"),
        ("unseen label", [*cls, "--train", good, "--validation", unseen],
         "unseen.tsv line 3: label '7' never occurs in the training file"),
        ("short CoNLL line", ["--task", "token-classification", "--train", conll_short, "--validation", conll_good],
         "short.conll line 2: 1 column(s)"),
        ("CoNLL tag", ["--task", "token-classification", "--train", conll_tag, "--validation", conll_good],
         "tag.conll line 2: tag 'X-THING' is not BIO"),
        ("unseen tag", ["--task", "token-classification", "--train", conll_good, "--validation", conll_unseen],
         "unseen.conll line 3: label 'B-EVENT' never occurs"),
        ("answer off its offset", ["--task", "question-answering", "--train", moved, "--validation", squad_good],
         f"moved.json line {moved_line}: question '{answered['id']}': the answer"),
        ("malformed SQuAD", ["--task", "question-answering", "--train", squad_good, "--validation", squad_broken],
         "broken.json line 2: malformed JSON"),
        ("no tokenizer", [*cls, "--model", no_tokenizer, "--train", good, "--validation", good],
         "no-tokenizer: no tokenizer (tokenizer.json or vocab.txt)"),
        ("metric of another task", [*cls, "--train", good, "--validation", good, "--metric", "spearman"],
         "--metric spearman: a classification task reports accuracy, macro_f1, mcc, f1"),
    ]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(pretrained, tmp_path, capsys):
    for name, arguments, expected in _bad_inputs(tmp_path, pretrained):
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        if "--model" not in arguments:
            arguments = ["--model", pretrained, *arguments]
        status = cli_main(["finetune", *map(str, arguments), "--out", str(out), "--quiet"])
        error = capsys.readouterr().err
        assert status == 2, (name, error)
        assert error.startswith("electra-fast finetune: error: ") and error.count("\n") == 1, (name, error)
        assert expected in error, (name, error)
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}.*")), name


def test_every_numeric_flag_out_of_range_is_one_line_exit_2(pretrained, tmp_path, capsys):
    """Each numeric flag of finetune (the parser's, all of them) at values outside its range: refused before
    anything is written, with one line naming the flag."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    bad = {"--max-length": [4], "--doc-stride": [-1], "--max-query-length": [0], "--max-answer-length": [0],
           "--n-best": [0], "--lr": [-1, 0, "nan", "inf"], "--layerwise-lr-decay": [0, 1.5], "--epochs": [0, "inf"],
           "--batch-size": [0], "--warmup-fraction": [-0.1, 1.5], "--weight-decay": [-0.001, "nan"], "--seeds": [0],
           "--seed": [-1, 2 ** 63], "--token-column": [4], "--tag-column": [-5]}   # the CoNLL lines have 4 columns
    assert {a.option_strings[0] for a in parser._actions if a.type in (int, float)} == set(bad)
    conll = _conll(tmp_path / "ner.txt", 5, random.Random(0))
    for flag, values in bad.items():
        for value in values:
            out = tmp_path / "out"
            status = cli_main(["finetune", "--model", str(pretrained), "--task", "token-classification", "--train",
                               str(conll), "--validation", str(conll), flag, str(value), "--out", str(out), "--quiet"])
            error = capsys.readouterr().err
            assert status == 2 and error.count("\n") == 1, (flag, value, error)
            assert error.startswith("electra-fast finetune: error: ") and f"{flag} " in error, (flag, value, error)
            assert not out.exists() and not list(tmp_path.glob(".out.*")), (flag, value)


def test_rows_of_a_wrong_field_count_are_skipped_and_counted_on_request(pretrained, tmp_path):
    rows = [f"{text}\t{label}\n" for text, label in _fruit_sentences(40, random.Random(0))]
    ragged = tmp_path / "ragged.tsv"   # a text with a line break in it, as GLUE's QQP has: 1 field, then 3
    ragged.write_text("sentence\tlabel\n" + "".join(rows[:20]) + "red\nriver\tblue\t1\n" + "".join(rows[20:]))
    options = _options(pretrained, "classification", ragged, ragged, text_columns=("sentence",), epochs=1)
    with pytest.raises(FinetuneDataError, match="ragged.tsv line 22: 1 fields, expected 2"):
        finetune(options)
    results = finetune(_options(pretrained, "classification", ragged, ragged, text_columns=("sentence",), epochs=1,
                                skip_malformed_rows=True))
    skipped = f"{ragged}: 2 row(s) skipped, their field count not the header's (line 22, 23)"
    assert results["notices"][1:] == [skipped, skipped]   # the training and the validation file (the same)


@pytest.mark.parametrize("damage", ["renamed weights", "NaN bytes", "truncated"])
def test_a_damaged_weight_file_is_refused(pretrained, tmp_path, capsys, damage):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    model.mkdir()
    for item in pretrained.iterdir():
        (model / item.name).write_bytes(item.read_bytes())
    weights = model / "model.safetensors"
    if damage == "renamed weights":   # transformers would initialise the encoder afresh and only warn
        state = load_file(str(weights))
        save_file({k.replace("electra.encoder", "electra.coder"): v for k, v in state.items()}, str(weights),
                  metadata={"format": "pt"})
    elif damage == "NaN bytes":
        raw = bytearray(weights.read_bytes())
        raw[-64:] = b"\xff" * 64
        weights.write_bytes(bytes(raw))
    else:
        weights.write_bytes(weights.read_bytes()[:-1000])
    task = _write_tsv(tmp_path / "task.tsv", _fruit_sentences(40, random.Random(0)))
    status = cli_main(["finetune", "--model", str(model), "--task", "classification", "--train", str(task),
                       "--validation", str(task), "--text-columns", "sentence", "--epochs", "1", "--quiet"])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1
    assert error.startswith(f"electra-fast finetune: error: --model {model}: ")
    assert {"renamed weights": "lacks", "NaN bytes": "NaN or inf", "truncated": "cannot be loaded"}[damage] in error


# -------------------------------------------------------------------------------------------------- fine-tuning

def test_classification_reaches_near_perfect_and_the_output_loads(pretrained, tmp_path):
    rng = random.Random(0)
    train_file = _write_tsv(tmp_path / "train.tsv", _fruit_sentences(300, rng))
    validation = _write_tsv(tmp_path / "dev.tsv", _fruit_sentences(100, rng))
    out = tmp_path / "out"
    results = finetune(_options(pretrained, "classification", train_file, validation, out=str(out), seeds=2,
                                text_columns=("sentence",)))
    assert [run["seed"] for run in results["runs"]] == [0, 1]
    assert results["median"]["accuracy"] >= 0.95, results
    assert json.loads((out / "metrics.json").read_text())["median"] == results["median"]
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model"]
    loaded, info = transformers.AutoModelForSequenceClassification.from_pretrained(out / "model",
                                                                                   output_loading_info=True)
    assert not info["missing_keys"] and loaded.config.id2label == {0: "0", 1: "1"}
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "model")
    texts = [line.split("\t") for line in validation.read_text().splitlines()[1:]]
    with torch.no_grad():
        logits = loaded.eval()(**tokenizer([t for t, _ in texts], padding=True, return_tensors="pt")).logits
    gold = [y for _, y in texts]
    accuracy = sum(str(p) == y for p, y in zip(logits.argmax(-1).tolist(), gold, strict=True)) / len(texts)
    run = next(r for r in results["runs"] if r["seed"] == results["median_seed"])
    assert accuracy == pytest.approx(run["accuracy"])


def test_regression_from_a_float_label(pretrained, tmp_path):
    rng = random.Random(2)

    def rows(n):   # the score: 4 with a fruit, else 0, written as STS-B writes scores
        return [(text, f"{4 * label:.3f}") for text, label in _fruit_sentences(n, rng)]

    results = finetune(_options(pretrained, "classification", _write_tsv(tmp_path / "t.tsv", rows(300)),
                                _write_tsv(tmp_path / "v.tsv", rows(100)), text_columns=("sentence",)))
    assert results["task"] == "regression" and results["median"]["pearson"] > 0.95, results


def test_token_classification_reaches_near_perfect_and_the_output_loads(pretrained, tmp_path):
    rng = random.Random(0)
    out = tmp_path / "out"
    dev = _conll(tmp_path / "dev.txt", 100, rng)
    results = finetune(_options(pretrained, "token-classification", _conll(tmp_path / "train.txt", 300, rng), dev,
                                out=str(out), also_validate=(("again", str(dev)),)))
    assert results["median"]["f1"] >= 0.95 and results["median"]["again_f1"] == results["median"]["f1"], results
    loaded, info = transformers.AutoModelForTokenClassification.from_pretrained(out / "model",
                                                                                output_loading_info=True)
    assert not info["missing_keys"] and set(loaded.config.label2id) == {"B-COLOR", "B-FOOD", "B-PLACE", "I-PLACE", "O"}


def test_question_answering_reaches_near_perfect_and_the_output_loads(pretrained, tmp_path):
    rng = random.Random(0)
    out = tmp_path / "out"
    dev = _squad(tmp_path / "dev.json", 100, rng)
    results = finetune(_options(pretrained, "question-answering", _squad(tmp_path / "train.json", 300, rng), dev,
                                out=str(out), max_length=32, doc_stride=8, epochs=12,
                                also_validate=(("again", str(dev)),)))
    median = results["median"]
    assert median["exact_match"] >= 90 and median["HasAns_f1"] >= 90 and median["NoAns_exact_match"] >= 90, results
    assert median["again_exact_match"] == median["exact_match"]
    assert "have contexts longer than one window" in results["notices"][0]
    loaded, info = transformers.AutoModelForQuestionAnswering.from_pretrained(out / "model", output_loading_info=True)
    assert not info["missing_keys"]


def test_from_scratch_is_the_same_architecture_afresh_and_runs_repeat_on_the_cpu(pretrained, tmp_path):
    pretrained_model = train.load_model(str(pretrained), "classification", num_labels=2)
    torch.manual_seed(0)
    fresh = train.load_model(str(pretrained), "classification", from_scratch=True, num_labels=2)
    assert ({n: p.shape for n, p in fresh.named_parameters()}
            == {n: p.shape for n, p in pretrained_model.named_parameters()})
    name = "electra.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(dict(fresh.named_parameters())[name], dict(pretrained_model.named_parameters())[name])
    task = _write_tsv(tmp_path / "task.tsv", _fruit_sentences(64, random.Random(0)))
    runs = [finetune(_options(pretrained, "classification", task, task, text_columns=("sentence",), epochs=1,
                              from_scratch=True, out=str(tmp_path / f"run{i}"))) for i in range(2)]
    assert runs[0]["runs"] == runs[1]["runs"]
    first, second = (open(tmp_path / f"run{i}" / "model" / "model.safetensors", "rb").read() for i in range(2))
    assert first == second


def test_texts_longer_than_the_model_are_cut_and_counted(pretrained, tmp_path):
    rows = [(" ".join(["house"] * n), n % 2) for n in (3, 70, 5, 90)]   # the model has 64 positions
    task = _write_tsv(tmp_path / "long.tsv", rows)
    log = io.StringIO()
    results = finetune(_options(pretrained, "classification", task, task, text_columns=("sentence",), epochs=1,
                                log=log))
    assert results["notices"] == ["2 training and 2 validation texts were cut to 64 tokens"]
    assert "2 training and 2 validation texts were cut" in log.getvalue()
    with pytest.raises(FinetuneDataError, match="--task must be one of"):
        finetune(_options(pretrained, "parsing", task, task))


def test_a_bert_folder_fine_tunes_with_its_pooler_initialised(pretrained, tmp_path):
    """A BERT masked-LM checkpoint has no pooler: that head part starts fresh; every encoder weight loads."""
    config = transformers.BertConfig(vocab_size=transformers.AutoTokenizer.from_pretrained(pretrained).vocab_size,
                                     hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    bert = tmp_path / "bert"
    transformers.BertForMaskedLM(config).save_pretrained(bert)
    for name in ("tokenizer.json", "vocab.txt"):
        (bert / name).write_bytes((pretrained / name).read_bytes())
    model = train.load_model(str(bert), "classification", num_labels=2)
    assert type(model).__name__ == "BertForSequenceClassification"
    groups = train.layerwise_parameter_groups(model, lr=1.0, decay=0.5, weight_decay=0.0)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert (lr_of[id(named["bert.embeddings.word_embeddings.weight"])], lr_of[id(named["bert.pooler.dense.weight"])],
            lr_of[id(named["classifier.weight"])]) == (0.5 ** 3, 1.0, 1.0)
    task = _write_tsv(tmp_path / "task.tsv", _fruit_sentences(64, random.Random(0)))
    results = finetune(_options(bert, "classification", task, task, text_columns=("sentence",), epochs=1,
                                out=str(tmp_path / "out")))
    assert results["runs"][0]["accuracy"] > 0
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "model")
    assert type(loaded).__name__ == "BertForSequenceClassification"


def test_tensorboard_events_hold_each_steps_loss_lr_and_the_scores_of_each_seed(pretrained, tmp_path, capsys,
                                                                                monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from electra_fast.schedule import lr_multiplier

    rng = random.Random(5)
    train_file = _write_tsv(tmp_path / "train.tsv", _fruit_sentences(40, rng))
    validation = _write_tsv(tmp_path / "dev.tsv", _fruit_sentences(20, rng))
    out = tmp_path / "out"
    results = finetune(_options(pretrained, "classification", train_file, validation, out=str(out), seeds=2,
                                epochs=2, text_columns=("sentence",), tensorboard=True))
    total = 2 * 3  # 2 epochs of 40 rows in batches of 16
    warmup = max(1, round(total * 0.1))
    for run in results["runs"]:
        events = EventAccumulator(str(out / "tensorboard" / f"seed-{run['seed']}")).Reload()
        assert [e.step for e in events.Scalars("train/loss")] == list(range(1, total + 1))
        assert all(e.value > 0 for e in events.Scalars("train/loss") + events.Scalars("train/grad_norm"))
        assert [e.value for e in events.Scalars("train/lr")] == pytest.approx(
            [3e-3 * lr_multiplier(s, warmup=warmup, total=total) for s in range(total)], rel=1e-6)
        assert [(e.step, e.value) for e in events.Scalars("valid/accuracy")] == [(total, pytest.approx(
            run["accuracy"], rel=1e-6))]
    # Refused before anything is written: without --out, and without the package.
    for extra in ([], ["--out", str(tmp_path / "other")]):
        if extra:
            import importlib.util

            real = importlib.util.find_spec
            monkeypatch.setattr(importlib.util, "find_spec",
                                lambda name, *a, real=real: None if name == "tensorboard" else real(name, *a))
        status = cli_main(["finetune", "--model", str(pretrained), "--task", "classification", "--train",
                           str(train_file), "--validation", str(validation), "--text-columns", "sentence",
                           "--tensorboard", "--quiet", *extra])
        error = capsys.readouterr().err
        assert status == 2 and error.count("\n") == 1 and "--tensorboard needs" in error, error
    assert not (tmp_path / "other").exists()
