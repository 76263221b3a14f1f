"""WordNet supersense classification, built offline from Debian's `wordnet-base` package.

Each WordNet synset sits in one of 45 lexicographer files, its *supersense* (noun.animal, verb.motion, ...), and
has a gloss: a definition, then example sentences in double quotes. The task: from the definition alone, predict
the supersense (45 classes). Human-labelled (WordNet's lexicographers assigned both), and on disk after

    apt-get install wordnet-base        # Debian/Ubuntu: /usr/share/wordnet/data.{noun,verb,adj,adv}

Parsing (WordNet's wndb(5WN) format): lines that begin with two spaces are the licence header; every other line is
`offset lex_filenum ss_type w_cnt word lex_id ... | gloss`. The second field is the lexicographer file number,
named by the fixed table of lexnames(5WN) below. The definition is the gloss up to its first `; "` (the start of
the examples). Synsets are shuffled with a fixed seed; the first --validation go to validation.tsv, the next
--train to train.tsv (`text<TAB>label`, a header row). corpus.txt holds, one per line, the definitions and
example sentences of every synset *not* in validation.tsv: unlabelled in-domain text for `electra-fast pretrain`.

    python bench/wordnet_supersenses.py --out /tmp/wordnet     # the same three files on every machine
"""
import argparse
import os
import random

WORDNET = "/usr/share/wordnet"
# lexnames(5WN): the lexicographer file of each number.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl").split()


def synsets(wordnet: str):
    """(supersense, definition, [example sentences]) of every synset in the data.* files, in file order."""
    for part in ("noun", "verb", "adj", "adv"):
        with open(os.path.join(wordnet, f"data.{part}"), encoding="utf-8") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue
                fields, gloss = line.split("|", 1)
                definition, _, examples = gloss.strip().partition('; "')
                sentences = [s.strip(' ;"') for s in examples.split('"; "')] if examples else []
                yield LEXNAMES[int(fields.split()[1])], definition.strip(), [s for s in sentences if s]


def build(wordnet: str, out: str, *, train: int = 4000, validation: int = 1000, seed: int = 0) -> str:
    """Writes train.tsv, validation.tsv and corpus.txt into `out` from the WordNet data files in `wordnet`;
    returns a one-line summary."""
    if not os.path.isfile(os.path.join(wordnet, "data.noun")):
        raise FileNotFoundError(f"no WordNet data files in {wordnet} (Debian/Ubuntu: apt-get install wordnet-base)")
    rows = [s for s in synsets(wordnet) if s[1]]
    random.Random(seed).shuffle(rows)
    held_out, training = rows[:validation], rows[validation:validation + train]
    os.makedirs(out, exist_ok=True)
    for name, part in (("train.tsv", training), ("validation.tsv", held_out)):
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write("text\tlabel\n")
            f.writelines(f"{definition}\t{label}\n" for label, definition, _ in part)
    with open(os.path.join(out, "corpus.txt"), "w", encoding="utf-8") as f:
        for _, definition, examples in rows[validation:]:
            f.writelines(text + "\n" for text in [definition, *examples])
    return (f"{len(rows)} synsets with a definition, {len({r[0] for r in rows})} supersenses: "
            f"{len(training)} train, {len(held_out)} validation, corpus of {len(rows) - len(held_out)} synsets in "
            f"{out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wordnet", default=WORDNET, help="folder of data.noun, data.verb, data.adj, data.adv")
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--validation", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build(args.wordnet, args.out, train=args.train, validation=args.validation, seed=args.seed))


if __name__ == "__main__":
    main()
