"""Masked-language modelling of a tiny RoBERTa under transformers.Trainer, with the fused head: one call,
`electra_fast.patch_masked_lm(model)`, and the rest is the usual Trainer script (DataCollatorForLanguageModeling,
gradient accumulation, evaluation with compute_metrics). Training scores the masked tokens alone, without
[B, T, V] logits; evaluation gets the original logits. Generated text and a tokenizer trained on it, so nothing is
downloaded; about a minute on a laptop CPU:

    python examples/hf_trainer_mlm.py
"""
import random
import tempfile

import numpy as np
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

import electra_fast

WORDS = ("the a cat dog bird sat ran flew on under over mat tree roof red green blue small big quick slow "
         "and then it was").split()
rng = random.Random(0)


def sentence() -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 24)))


def tokenizer_for(texts):
    """A byte-level BPE tokenizer with RoBERTa's special tokens, trained on `texts`."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", pad_token="<pad>",
                                                eos_token="</s>", unk_token="<unk>", mask_token="<mask>")


def accuracy_at_masked(prediction) -> dict:
    """compute_metrics: the argmax of the original logits against the labels at the masked tokens."""
    logits, labels = prediction
    scored = labels != -100
    return {"masked_accuracy": float((logits.argmax(-1)[scored] == labels[scored]).mean())}


def main():
    texts = [sentence() for _ in range(600)]
    tokenizer = tokenizer_for(texts)
    rows = [tokenizer(text, truncation=True, max_length=32) for text in texts]
    config = transformers.RobertaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=128, max_position_embeddings=40,
                                        pad_token_id=tokenizer.pad_token_id)
    model = electra_fast.patch_masked_lm(transformers.RobertaForMaskedLM(config))  # the one call

    args = transformers.TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=16, gradient_accumulation_steps=2,
        max_steps=60, learning_rate=1e-3, warmup_steps=6, logging_steps=20, eval_strategy="no", save_strategy="no",
        report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=rows[:500], eval_dataset=rows[500:],
        data_collator=transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
        compute_metrics=accuracy_at_masked)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    print(f"eval loss {before['eval_loss']:.3f} -> {after['eval_loss']:.3f}, masked accuracy "
          f"{before['eval_masked_accuracy']:.3f} -> {after['eval_masked_accuracy']:.3f}")
    np.testing.assert_array_less(after["eval_loss"], before["eval_loss"])


if __name__ == "__main__":
    main()
