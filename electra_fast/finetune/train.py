"""Fine-tuning as ELECTRA does it, on Hugging Face encoders: ELECTRA, BERT, RoBERTa / XLM-R, DeBERTa-v2/v3 and
ModernBERT (electra_fast.hf.encoders.FAMILIES).

The model is transformers' AutoModelFor* class for the task, loaded from the folder (the discriminator that
`electra-fast pretrain` exports, or any local checkpoint of those families); every encoder weight must come
from the file. Training: AdamW (eps 1e-6, no weight decay by default), linear warm-up over the first 10% of the
steps then linear decay to 0, gradient clipping at 1.0, and layer-wise learning-rate decay as the ELECTRA release
sets it: a parameter at depth d gets lr · decay^(L + 2 − d), where the embeddings are at depth 0, encoder layer
i (0-based, from the input) at i + 1 and the task head at L + 2. Defaults follow the paper's fine-tuning table
(Clark et al., 2020, Table 7), chosen by the model's width: lr 3e-4 up to ELECTRA-Small's 256, 1e-4 up to
Base's 768, else 5e-5; layer-wise decay 0.8, 0.9 for Large; batch 32; 3 epochs (2 for question answering).
Each seed trains from the same loaded weights; the results hold every run and the per-metric median, and the
run kept is the median one by the task's metric (options.metric). Every number of the options is range-checked
before anything is read (`check_options`).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import statistics
import sys
from dataclasses import dataclass, field, fields
from typing import Callable

import torch

from ..errors import at_least, check_ranges, finite_above, finite_at_least, within
from ..files import write_folder
from ..hf.encoders import FAMILIES
from ..pretraining import tensorboard_events
from ..schedule import lr_multiplier
from . import data, metrics
from .data import FinetuneDataError

TASKS = ("classification", "token-classification", "question-answering")
_AUTO_CLASSES = {"classification": "AutoModelForSequenceClassification",
                 "token-classification": "AutoModelForTokenClassification",
                 "question-answering": "AutoModelForQuestionAnswering"}
_PRIMARY = {"classification": "accuracy", "regression": "spearman", "token-classification": "f1",
            "question-answering": "f1"}


@dataclass
class FinetuneOptions:
    """Everything one fine-tuning run needs; None means the default of the task or the model's size."""
    model: str
    task: str
    train: str
    validation: str
    out: str | None = None
    from_scratch: bool = False
    also_validate: tuple[tuple[str, str], ...] = ()   # (NAME, file): more validation files, metrics "NAME_..."
    # classification / regression tables
    text_columns: tuple[str, ...] = ("text",)
    label_column: str = "label"
    header: bool = True
    skip_malformed_rows: bool = False      # rows of a wrong field count: skipped and counted, not an error
    # CoNLL
    token_column: int = 0
    tag_column: int = -1
    # lengths; question answering
    max_length: int | None = None          # 128, or 512 for question answering; at most the model's positions
    doc_stride: int | None = None          # 128, or a quarter of max_length when that is shorter
    max_query_length: int = 64
    max_answer_length: int = 30
    n_best: int = 20
    # training
    lr: float | None = None
    layerwise_lr_decay: float | None = None
    epochs: float | None = None
    batch_size: int = 32
    warmup_fraction: float = 0.1
    weight_decay: float = 0.0
    seeds: int = 1
    seed: int = 0
    metric: str | None = None              # ranks the seeds; default by task: accuracy, spearman, f1 (NER, QA)
    device: str | None = None
    bf16: bool | None = None
    progress: bool = True
    tensorboard: bool = False              # event files in out/tensorboard/seed-N (needs out)
    log: object = field(default=sys.stderr, repr=False)   # where the run's notices go (a text stream)


# ---------------------------------------------------------------------------------------------------- the model

def _transformers():
    try:
        import transformers
    except ImportError:
        raise FinetuneDataError("fine-tuning needs Hugging Face transformers: pip install 'electra-fast[hf]'") from None
    return transformers


@contextlib.contextmanager
def _quiet_transformers(transformers):
    """transformers' load report and progress bars off (this module reports what matters), restored after."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def load_fast_tokenizer(directory: str):
    """The fast tokenizer of a model folder (tokenizer.json, or a BERT vocab.txt); it gives character offsets."""
    transformers = _transformers()
    if not any(os.path.isfile(os.path.join(directory, name)) for name in ("tokenizer.json", "vocab.txt")):
        raise FinetuneDataError(f"--model {directory}: no tokenizer (tokenizer.json or vocab.txt) in the folder")
    try:
        with _quiet_transformers(transformers):
            tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    except Exception as e:  # tokenizers and transformers raise many types for unreadable files
        raise FinetuneDataError(f"--model {directory}: cannot load its tokenizer ({str(e).splitlines()[0]})") from None
    if not tokenizer.is_fast:
        raise FinetuneDataError(f"--model {directory}: its tokenizer has no fast version (character offsets)")
    return tokenizer


def load_config(directory: str, **changes):
    """The transformers config of a folder of one of the FAMILIES, updated with `changes`."""
    transformers = _transformers()
    try:
        with _quiet_transformers(transformers):
            config = transformers.AutoConfig.from_pretrained(directory, **changes)
    except Exception as e:  # OSError, ValueError, JSON errors, depending on what is wrong
        raise FinetuneDataError(f"--model {directory}: no usable config.json ({str(e).splitlines()[0]})") from None
    if config.model_type not in FAMILIES:
        raise FinetuneDataError(f"--model {directory}: a {config.model_type!r} model; one of {', '.join(FAMILIES)} "
                                "expected")
    return config


def load_model(directory: str, task: str, *, from_scratch: bool = False, **config_changes) -> torch.nn.Module:
    """transformers' model of `task` for the folder `directory` (one of the FAMILIES), its config updated with
    `config_changes` (num_labels, id2label, ...). Pretrained weights must cover the whole encoder and be finite:
    a file that does not load, lacks encoder weights or holds NaN / inf is refused (FinetuneDataError), never
    silently replaced by fresh weights. `from_scratch`: the same architecture, freshly initialised (torch's
    global seed governs it)."""
    transformers = _transformers()
    config = load_config(directory, **config_changes)
    with _quiet_transformers(transformers):
        auto = getattr(transformers, _AUTO_CLASSES[task])
        if from_scratch:
            return auto.from_config(config)
        try:
            model, info = auto.from_pretrained(directory, config=config, output_loading_info=True)
        except Exception as e:
            raise FinetuneDataError(f"--model {directory}: its weights cannot be loaded "
                                    f"({str(e).strip().splitlines()[0]})") from None
    encoder = model.base_model_prefix + "."
    missing = sorted(k for k in info["missing_keys"] if k.startswith(encoder) and ".pooler." not in k)
    if missing:
        raise FinetuneDataError(f"--model {directory}: the weight file lacks {len(missing)} encoder weights (e.g. "
                                f"{missing[0]!r}): it is damaged or not a pretrained encoder")
    broken = next((name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if broken:
        raise FinetuneDataError(f"--model {directory}: the weight file is corrupt ({broken} holds NaN or inf)")
    return model


def layerwise_parameter_groups(model: torch.nn.Module, *, lr: float, decay: float, weight_decay: float) -> list[dict]:
    """AdamW parameter groups with ELECTRA's layer-wise learning rates: lr · decay^(L + 2 − depth), depth 0 for
    the embeddings, i + 1 for encoder layer i, L + 2 for everything else (the task head, BERT's pooler, DeBERTa's
    relative-position table, ModernBERT's final norm). Weight decay only on matrices."""
    num_layers = model.config.num_hidden_layers
    prefix = model.base_model_prefix
    layer = re.compile(rf"{re.escape(prefix)}\.(?:encoder\.layer|layers)\.(\d+)\.")  # ModernBERT: model.layers.i

    def depth(name: str) -> int:
        if name.startswith(f"{prefix}.embeddings"):   # embeddings and ELECTRA's embeddings_project
            return 0
        match = layer.match(name)
        return int(match.group(1)) + 1 if match else num_layers + 2

    groups: dict[tuple[int, bool], list] = {}
    for name, parameter in model.named_parameters():
        groups.setdefault((depth(name), parameter.ndim >= 2), []).append(parameter)
    return [{"params": params, "lr": lr * decay ** (num_layers + 2 - d),
             "weight_decay": weight_decay if matrix else 0.0} for (d, matrix), params in sorted(groups.items())]


# ----------------------------------------------------------------------------------------------------- the data

@dataclass
class _Evaluation:
    """One validation file, encoded, and how to score the model's outputs on it."""
    prefix: str                       # of its metrics' names: "" for options.validation, "NAME_" for also_validate
    features: list[dict]
    score: Callable[[list], dict]     # the model outputs over `features` -> metrics


@dataclass
class _Task:
    """A task's encoded data and how to score predictions."""
    kind: str                         # classification, regression, token-classification, question-answering
    train: list[dict]
    evaluations: list[_Evaluation]
    label_keys: tuple[str, ...]
    config_changes: dict
    metric_names: tuple[str, ...]     # what each evaluation reports (the choices of options.metric)
    notices: list[str]


def _max_length(options: FinetuneOptions, positions: int) -> int:
    wanted = options.max_length or (512 if options.task == "question-answering" else 128)
    return min(wanted, positions)


def _validation_files(options: FinetuneOptions) -> list[tuple[str, str]]:
    """(metric prefix, file) of options.validation ("") and of each of options.also_validate ("NAME_")."""
    return [("", options.validation)] + [(f"{name}_", path) for name, path in options.also_validate]


def encode_task(options: FinetuneOptions, tokenizer, positions: int) -> _Task:
    """Reads and encodes the training and validation files of options.task for a model with `positions`
    position embeddings."""
    length = _max_length(options, positions)
    if options.task == "classification":
        return _classification(options, tokenizer, length)
    if options.task == "token-classification":
        return _token_classification(options, tokenizer, length)
    if options.task == "question-answering":
        return _question_answering(options, tokenizer, length)
    raise FinetuneDataError(f"--task must be one of {', '.join(TASKS)}, got {options.task!r}")


def _read_table(options: FinetuneOptions, path: str, notices: list[str]) -> list[data.TextExample]:
    """The examples of one table; with options.skip_malformed_rows, rows of a wrong field count are left out and
    counted in `notices`."""
    skipped = [] if options.skip_malformed_rows else None
    examples = data.read_table(path, options.text_columns, options.label_column, header=options.header,
                               skipped=skipped)
    if skipped:
        lines = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
        notices.append(f"{path}: {len(skipped)} row(s) skipped, their field count not the header's (line {lines})")
    return examples


def _classification(options, tokenizer, length) -> _Task:
    notices: list[str] = []
    train = _read_table(options, options.train, notices)
    validations = [(prefix, path, _read_table(options, path, notices)) for prefix, path in _validation_files(options)]
    labels = sorted({e.label for e in train})
    if data.is_regression(labels):
        for _, path, examples in validations:
            bad = next((e for e in examples if not data.is_number(e.label)), None)
            if bad:
                raise FinetuneDataError(f"{path} line {bad.line}: label {bad.label!r} is not a number (the training "
                                        "labels make this a regression)")
        kind, names, target = "regression", metrics.NAMES["regression"], float   # the model's target of a label
        config_changes = {"num_labels": 1, "problem_type": "regression"}
    else:
        for _, path, examples in validations:
            data.check_labels([(e.label, e.line) for e in examples], labels, path)
        kind = "classification"
        names = tuple(name for name in metrics.NAMES["classification"] if name != "f1" or len(labels) == 2)
        ids = {label: i for i, label in enumerate(labels)}
        target = ids.__getitem__
        config_changes = {"num_labels": len(labels), "problem_type": "single_label_classification",
                          "id2label": dict(enumerate(labels)), "label2id": ids}

    def encode(examples):
        features, cut = data.encode_texts(tokenizer, examples, length)
        for feature, example in zip(features, examples, strict=True):
            feature["labels"] = target(example.label)
        return features, cut

    def evaluation(prefix, examples):
        features, cut = encode(examples)
        gold = [e.label for e in examples]

        def score(logits):
            if kind == "regression":
                return metrics.regression_metrics([target(g) for g in gold], [float(row[0]) for row in logits])
            predicted = [labels[max(range(len(row)), key=row.__getitem__)] for row in logits]
            return metrics.classification_metrics(gold, predicted, labels)

        return _Evaluation(prefix, features, score), cut

    train_features, cut_train = encode(train)
    evaluations, cuts = zip(*(evaluation(prefix, examples) for prefix, _, examples in validations), strict=True)
    notices.insert(0, f"{cut_train} training and {sum(cuts)} validation texts were cut to {length} tokens")
    return _Task(kind, train_features, list(evaluations), ("labels",), config_changes, names, notices)


def _token_classification(options, tokenizer, length) -> _Task:
    read = dict(token_column=options.token_column, tag_column=options.tag_column)
    train = data.read_conll(options.train, **read)
    validations = [(prefix, path, data.read_conll(path, **read)) for prefix, path in _validation_files(options)]
    tags = sorted({t for s in train for t in s.tags})
    for _, path, sentences in validations:
        data.check_labels([(t, line) for s in sentences for t, line in zip(s.tags, s.lines, strict=True)], tags, path)
    ids = {tag: i for i, tag in enumerate(tags)}
    train_features, cut_train = data.encode_sentences(tokenizer, train, ids, length)

    def evaluation(prefix, sentences):
        features, cut = data.encode_sentences(tokenizer, sentences, ids, length)

        def score(logits):
            predicted = []
            for feature, rows in zip(features, logits, strict=True):
                predicted.append([tags[max(range(len(rows[p])), key=rows[p].__getitem__)] if p >= 0 else "O"
                                  for p in feature["first_token"]])
            return metrics.entity_metrics([s.tags for s in sentences], predicted)

        return _Evaluation(prefix, features, score), cut

    evaluations, cuts = zip(*(evaluation(prefix, sentences) for prefix, _, sentences in validations), strict=True)
    notices = [f"{cut_train} training and {sum(cuts)} validation sentences were cut to {length} tokens (the "
               "words cut off are predicted O)"]
    return _Task("token-classification", train_features, list(evaluations), ("labels",),
                 {"num_labels": len(tags), "id2label": dict(enumerate(tags)), "label2id": ids},
                 metrics.NAMES["token-classification"], notices)


def _question_answering(options, tokenizer, length) -> _Task:
    train, v2 = data.read_squad(options.train)
    validations = []
    for prefix, path in _validation_files(options):
        questions, validation_v2 = data.read_squad(path)
        validations.append((prefix, questions))
        v2 = v2 or validation_v2
    stride = options.doc_stride if options.doc_stride is not None else min(128, length // 4)
    window = dict(max_length=length, doc_stride=stride, max_query_length=options.max_query_length)
    train_windows, long_train = data.encode_questions(tokenizer, train, **window)

    def evaluation(prefix, questions):
        windows, long = data.encode_questions(tokenizer, questions, **window)
        gold = {q.qid: [text for text, _ in q.answers] for q in questions}

        def score(logits):
            starts, ends = [row[0] for row in logits], [row[1] for row in logits]
            predictions = data.best_answers(questions, windows, starts, ends, v2=v2, n_best=options.n_best,
                                            max_answer_length=options.max_answer_length)
            return metrics.squad_metrics(gold, predictions)

        return _Evaluation(prefix, windows, score), long

    evaluations, longs = zip(*(evaluation(prefix, questions) for prefix, questions in validations), strict=True)
    notices = [f"{long_train} training and {sum(longs)} validation questions have contexts longer than one "
               f"window of {length} tokens (cut into windows overlapping by {stride})"]
    return _Task("question-answering", train_windows, list(evaluations), ("start_positions", "end_positions"),
                 {}, metrics.NAMES["question-answering"], notices)


# ------------------------------------------------------------------------------------------------- the training

def _defaults(options: FinetuneOptions, hidden_size: int) -> tuple[float, float, float]:
    """(lr, layer-wise decay, epochs): the options', else the paper's for a model of this width and task."""
    lr = options.lr or (3e-4 if hidden_size <= 256 else 1e-4 if hidden_size <= 768 else 5e-5)
    decay = options.layerwise_lr_decay or (0.8 if hidden_size <= 768 else 0.9)
    epochs = options.epochs or (2 if options.task == "question-answering" else 3)
    return lr, decay, epochs


def _device(options: FinetuneOptions) -> torch.device:
    return torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _inputs(model, batch: dict) -> dict:
    """The batch without token_type_ids where the model has no segment embeddings to read them (RoBERTa's single
    one, DeBERTa-v3's none, ModernBERT's none)."""
    if getattr(model.config, "type_vocab_size", 0) > 1:
        return batch
    return {k: v for k, v in batch.items() if k != "token_type_ids"}


def _outputs(model, task: _Task, batch: dict) -> list:
    """Per example: the logits row (classification), [T, labels] rows (tokens), or (start, end) rows (QA)."""
    output = model(**_inputs(model, {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}))
    if task.kind == "question-answering":
        return list(zip(output.start_logits.float().tolist(), output.end_logits.float().tolist(), strict=True))
    return output.logits.float().tolist()


def train_one(model, task: _Task, options: FinetuneOptions, *, seed: int, pad_id: int, events=None) -> dict:
    """Fine-tunes `model` in place on task.train with seed `seed`, then scores it on each validation file: the
    metrics of each, named with its prefix. With `events` (a TensorBoard writer), each step's loss, learning rate
    (the head's) and gradient norm (before clipping) go to train/NAME, and the scores to valid/NAME at the last
    step."""
    from tqdm import tqdm

    device = _device(options)
    bf16 = options.bf16 if options.bf16 is not None else device.type == "cuda" and torch.cuda.is_bf16_supported()
    lr, decay, epochs = _defaults(options, model.config.hidden_size)
    model.to(device).train()
    optimizer = torch.optim.AdamW(layerwise_parameter_groups(model, lr=lr, decay=decay,
                                                             weight_decay=options.weight_decay),
                                  betas=(0.9, 0.999), eps=1e-6)
    per_epoch = math.ceil(len(task.train) / options.batch_size)
    total = max(1, round(per_epoch * epochs))
    warmup = max(1, round(total * options.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, warmup=warmup, total=total))
    order = torch.Generator().manual_seed(seed)
    batches = []
    with tqdm(total=total, desc=f"finetune seed {seed}", disable=not options.progress, file=options.log) as bar:
        for step in range(total):
            if not batches:
                permutation = torch.randperm(len(task.train), generator=order).tolist()
                batches = [permutation[i:i + options.batch_size] for i in range(0, len(permutation),
                                                                                 options.batch_size)][::-1]
            batch = data.collate([task.train[i] for i in batches.pop()], pad_id, task.label_keys)
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(**_inputs(model, batch)).loss
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if events is not None:
                tensorboard_events.write_scalars(events, {"loss": loss.item(), "lr": max(scheduler.get_last_lr()),
                                                          "grad_norm": grad_norm.item()}, step + 1)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    scores = {}
    for evaluation in task.evaluations:
        outputs = []
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for i in range(0, len(evaluation.features), options.batch_size):
                batch = data.collate(evaluation.features[i:i + options.batch_size], pad_id, ())
                outputs.extend(_outputs(model, task, {k: v.to(device) for k, v in batch.items()}))
        scores.update({evaluation.prefix + name: value for name, value in evaluation.score(outputs).items()})
    if events is not None:
        tensorboard_events.write_scalars(events, {f"valid_{k}": v for k, v in scores.items()}, total)
    return scores


def median_scores(runs: list[dict]) -> dict:
    """The per-metric median over runs (the paper reports medians of several seeds)."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0] if key != "seed"}


def median_run(runs: list[dict], metric: str) -> dict:
    """The run whose `metric` is the median of the runs' (for an even count the lower middle one; ties in seed
    order)."""
    ranked = sorted(runs, key=lambda run: run[metric])
    return ranked[(len(ranked) - 1) // 2]


MIN_LENGTH = 5   # [CLS], a token of each text and two [SEP]: shorter, the tokenizer cannot cut a pair to fit


def check_options(options) -> None:
    """Raises FinetuneDataError naming (as its command-line flag) the first number of `options` (FinetuneOptions,
    or the command's arguments) outside its range; None, the default, passes."""
    check_ranges(options, [
        at_least("max_length", MIN_LENGTH), at_least("doc_stride", 0), at_least("max_query_length", 1),
        at_least("max_answer_length", 1), at_least("n_best", 1), finite_above("lr", 0),
        within("layerwise_lr_decay", 0, 1, low_open=True), finite_above("epochs", 0), at_least("batch_size", 1),
        within("warmup_fraction", 0, 1), finite_at_least("weight_decay", 0), at_least("seeds", 1),
        within("seed", 0, 2 ** 63, high_open=True, written="[0, 2**63)")], FinetuneDataError)


def finetune(options: FinetuneOptions) -> dict:
    """Fine-tunes options.model on options.task for options.seeds seeds and scores each on the validation file.

    Returns {"task", "model", "from_scratch", "options", "runs": [{"seed", metric: value, ...}], "median": {...},
    "metric", "median_seed", "notices"}. With options.out, writes `out/metrics.json` (the same) and `out/model/`:
    the run whose `metric` (options.metric, else the task's primary one) is the median, in Hugging Face format with
    its tokenizer. The folder appears complete or not at all. Raises FinetuneDataError for bad input, before any
    training."""
    check_options(options)
    tensorboard_events.check_available(options.tensorboard, FinetuneDataError)
    if options.tensorboard and not options.out:
        raise FinetuneDataError("--tensorboard needs --out: the event files go to OUT/tensorboard")
    tokenizer = load_fast_tokenizer(options.model)
    with _quiet_transformers(_transformers()):   # not its warning for each text longer than the model
        task = encode_task(options, tokenizer, load_config(options.model).max_position_embeddings)
    metric = options.metric or _PRIMARY[task.kind]
    if metric not in task.metric_names:
        raise FinetuneDataError(f"--metric {metric}: a {task.kind} task reports {', '.join(task.metric_names)}")
    for notice in task.notices:
        print(notice, file=options.log)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def run_all(folder: str | None) -> dict:
        runs = []
        for seed in range(options.seed, options.seed + options.seeds):
            torch.manual_seed(seed)
            model = load_model(options.model, options.task, from_scratch=options.from_scratch,
                               **task.config_changes)
            events = (tensorboard_events.summary_writer(os.path.join(folder, "tensorboard", f"seed-{seed}"))
                      if options.tensorboard else None)
            try:
                runs.append({"seed": seed, **train_one(model, task, options, seed=seed, pad_id=pad_id,
                                                       events=events)})
            finally:
                if events is not None:
                    events.close()
            print(f"seed {seed}: " + " ".join(f"{k} {v:.4f}" for k, v in runs[-1].items()
                                              if k != "seed" and isinstance(v, float)), file=options.log)
            if folder:
                saved = os.path.join(folder, f"seed-{seed}")
                with _quiet_transformers(_transformers()):
                    model.save_pretrained(saved)
                    tokenizer.save_pretrained(saved)
        median_seed = median_run(runs, metric)["seed"]
        results = {"task": task.kind, "model": options.model, "from_scratch": options.from_scratch,
                   "options": {f.name: getattr(options, f.name) for f in fields(options) if f.name != "log"},
                   "runs": runs, "median": median_scores(runs), "metric": metric, "median_seed": median_seed,
                   "notices": task.notices}
        if folder:
            os.replace(os.path.join(folder, f"seed-{median_seed}"), os.path.join(folder, "model"))
            for run in runs:
                if run["seed"] != median_seed:
                    shutil.rmtree(os.path.join(folder, f"seed-{run['seed']}"))
            with open(os.path.join(folder, "metrics.json"), "w") as f:
                json.dump(results, f, indent=2)
        return results

    if not options.out:
        return run_all(None)
    box = {}
    write_folder(options.out, lambda folder: box.update(results=run_all(folder)))
    return box["results"]
