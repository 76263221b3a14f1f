"""`electra-fast finetune` and `electra-fast glue`: argparse arguments, the FinetuneOptions they make, and the
commands' mains (exit 2 with one line for bad input); and the arguments of `python -m
electra_fast.finetune.glue_sample`."""
from __future__ import annotations

import argparse
import contextlib
import sys

from ..errors import EXIT_INTERRUPTED, BadInput
from ..locking import exclusive
from ..options.cli import report_bad_input
from .metrics import NAMES
from .train import TASKS, FinetuneOptions, finetune

_MODEL_HELP = ("the discriminator `electra-fast pretrain` exports (OUT/discriminator), or a local Hugging Face "
               "ELECTRA, BERT, RoBERTa/XLM-R, DeBERTa-v2/v3 or ModernBERT folder (config.json, weights, tokenizer)")
_FROM_SCRATCH_HELP = "the same architecture with fresh weights: the baseline that shows what pretraining bought"
_MAX_LENGTH_HELP = ("tokens per input, at most the model's positions (default 128; question-answering 512); longer "
                    "texts are cut, longer contexts windowed")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help=_MODEL_HELP)
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--train", required=True, metavar="FILE",
                   help="classification: .csv, .tsv (GLUE's as they are) or .jsonl; token-classification: CoNLL "
                        "(token and BIO tag per line); question-answering: SQuAD v1.1 / v2.0 JSON")
    p.add_argument("--validation", required=True, metavar="FILE", help="the same format; scored after training")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="writes DIR/metrics.json and DIR/model (Hugging Face format with the tokenizer: the run of "
                        "the median seed); replaces an existing DIR only once complete")
    p.add_argument("--from-scratch", action="store_true", help=_FROM_SCRATCH_HELP)
    g = p.add_argument_group("classification and regression (a label column of numbers written as floats, such "
                             "as STS-B's, means regression)")
    g.add_argument("--text-columns", nargs="+", default=["text"], metavar="COLUMN",
                   help="one column, or two for sentence pairs (default: text)")
    g.add_argument("--label-column", default="label", metavar="COLUMN", help="default: label")
    g.add_argument("--no-header", dest="header", action="store_false",
                   help="the CSV/TSV has no header row: columns are 0-based indices (GLUE's CoLA: --no-header "
                        "--text-columns 3 --label-column 1)")
    g.add_argument("--skip-malformed-rows", action="store_true",
                   help="skip (and count) rows whose field count differs from the header's, instead of stopping; "
                        "GLUE's QQP has such rows")
    g = p.add_argument_group("token classification")
    g.add_argument("--token-column", type=int, default=0, help="0-based, negative from the end (default 0)")
    g.add_argument("--tag-column", type=int, default=-1, help="default -1: the last (CoNLL-2003's NER tags)")
    g = p.add_argument_group("lengths and question answering")
    g.add_argument("--max-length", type=int, default=None, help=_MAX_LENGTH_HELP)
    g.add_argument("--doc-stride", type=int, default=None,
                   help="context tokens that consecutive windows share (default 128, or a quarter of --max-length "
                        "when that is shorter)")
    g.add_argument("--max-query-length", type=int, default=64,
                   help="questions are cut to this many tokens (default 64)")
    g.add_argument("--max-answer-length", type=int, default=30, help="longest predicted answer, in tokens (default 30)")
    g.add_argument("--n-best", type=int, default=20, help="start and end candidates per window (default 20)")
    g = p.add_argument_group("training (defaults: ELECTRA's fine-tuning table, by the model's width)")
    add_training_arguments(g, epochs_help="default 3 (question-answering 2)")
    g.add_argument("--metric", default=None, choices=sorted({name for names in NAMES.values() for name in names}),
                   help="the metric that ranks the seeds: the run of the median one is kept (default: accuracy; "
                        "regression spearman; token-classification and question-answering f1)")


def add_training_arguments(g, *, epochs_help: str) -> None:
    """The training flags that `finetune` and `glue` share."""
    g.add_argument("--lr", type=float, default=None,
                   help="peak learning rate of the head (default 3e-4 up to hidden size 256, 1e-4 up to 768, else "
                        "5e-5)")
    g.add_argument("--layerwise-lr-decay", type=float, default=None,
                   help="lr · decay^(L + 2 - depth): embeddings depth 0, layer i depth i + 1, head L + 2 "
                        "(default 0.8; 0.9 above hidden size 768)")
    g.add_argument("--epochs", type=float, default=None, help=epochs_help)
    g.add_argument("--batch-size", type=int, default=32, help="default 32")
    g.add_argument("--warmup-fraction", type=float, default=0.1,
                   help="share of the steps in linear warm-up (default 0.1)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's, on matrices only (default 0)")
    g.add_argument("--seeds", type=int, default=1, help="runs, each from the same weights; reports each and the median")
    g.add_argument("--seed", type=int, default=0, help="the first run's seed (then seed + 1, ...)")
    g.add_argument("--device", default=None, help="default: cuda if present, else cpu")
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for a GPU that supports it)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--tensorboard", action="store_true",
                   help="TensorBoard event files in OUT/tensorboard/seed-N: each step's loss, learning rate and "
                        "gradient norm, and the validation scores (needs --out; they appear with the folder, when "
                        "the run ends; pip install 'electra-fast[tensorboard]')")


def options_from(args: argparse.Namespace) -> FinetuneOptions:
    return FinetuneOptions(
        model=args.model, task=args.task, train=args.train, validation=args.validation, out=args.out,
        from_scratch=args.from_scratch, text_columns=tuple(args.text_columns), label_column=args.label_column,
        header=args.header, skip_malformed_rows=args.skip_malformed_rows, token_column=args.token_column,
        tag_column=args.tag_column, max_length=args.max_length,
        doc_stride=args.doc_stride, max_query_length=args.max_query_length, max_answer_length=args.max_answer_length,
        n_best=args.n_best, lr=args.lr, layerwise_lr_decay=args.layerwise_lr_decay, epochs=args.epochs,
        batch_size=args.batch_size, warmup_fraction=args.warmup_fraction, weight_decay=args.weight_decay,
        seeds=args.seeds, seed=args.seed, metric=args.metric, device=args.device, bf16=args.bf16,
        progress=not args.quiet, tensorboard=args.tensorboard)


def main(args: argparse.Namespace) -> int:
    """Runs `electra-fast finetune`: prints each seed's and the median metrics; returns the exit status."""
    try:
        with exclusive(args.out) if args.out else contextlib.nullcontext():  # one run at a time writes --out
            results = finetune(options_from(args))
    except (BadInput, OSError) as e:  # OSError: locking.FolderInUse, a folder that cannot be written
        return report_bad_input("finetune", e)
    except KeyboardInterrupt:
        print("electra-fast finetune: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    median = " ".join(f"{k} {v:.4f}" for k, v in results["median"].items())
    print(f"median of {len(results['runs'])} seed(s): {median}" + (f" | {args.out}" if args.out else ""))
    return 0


def add_glue_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", required=True, metavar="DIR",
                   help="GLUE as distributed: DIR/CoLA, DIR/SST-2, DIR/MRPC, DIR/STS-B, DIR/QQP, DIR/MNLI, DIR/QNLI, "
                        "DIR/RTE, each with train.tsv and dev.tsv (MNLI: dev_matched.tsv, dev_mismatched.tsv)")
    p.add_argument("--model", required=True, metavar="DIR", help=_MODEL_HELP)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="writes DIR/glue.json, DIR/glue.md (the score table) and DIR/TASK as finetune's --out; a "
                        "task whose folder is complete is kept, so the same command continues a killed suite")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                   help="a subset (default: the paper's eight): CoLA SST-2 MRPC STS-B QQP MNLI QNLI RTE, or the "
                        "release's cola,sst,mrpc,sts,qqp,mnli,qnli,rte")
    p.add_argument("--jobs", type=int, default=1,
                   help="tasks fine-tuned at once, each in a process of its own (default 1); several GPUs are "
                        "taken in turn")
    p.add_argument("--from-scratch", action="store_true", help=_FROM_SCRATCH_HELP)
    p.add_argument("--max-length", type=int, default=None, help=_MAX_LENGTH_HELP)
    g = p.add_argument_group("training (defaults: ELECTRA's fine-tuning table, by the model's width)")
    add_training_arguments(g, epochs_help="every task's (default: the paper's, 3; 10 for RTE and STS-B)")


def glue_main(args: argparse.Namespace) -> int:
    """Runs `electra-fast glue`: prints each task as it finishes, then the score table; returns the exit status."""
    from .glue import run_glue, score_table

    try:
        with exclusive(args.out):  # one suite at a time writes --out
            summary = run_glue(args.data_dir, args.out, args.model, tasks=args.tasks, jobs=args.jobs,
                               from_scratch=args.from_scratch, max_length=args.max_length, lr=args.lr,
                               layerwise_lr_decay=args.layerwise_lr_decay, epochs=args.epochs,
                               batch_size=args.batch_size, warmup_fraction=args.warmup_fraction,
                               weight_decay=args.weight_decay, seeds=args.seeds,
                               seed=args.seed, device=args.device, bf16=args.bf16, progress=not args.quiet)
    except (BadInput, OSError) as e:
        return report_bad_input("glue", e)
    except KeyboardInterrupt:
        print(f"electra-fast glue: interrupted; the finished tasks are kept in {args.out}: run the same command "
              "again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(score_table(summary))
    return 0


def glue_sample_arguments(description: str, argv=None) -> argparse.Namespace:
    """The arguments of `python -m electra_fast.finetune.glue_sample DIR [--train-rows 200] [--dev-rows 50]
    [--seed 0]` (folder, train_rows, dev_rows, seed), which that module's main reads."""
    parser = argparse.ArgumentParser(prog="python -m electra_fast.finetune.glue_sample", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--train-rows", type=int, default=200)
    parser.add_argument("--dev-rows", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)
