"""The training step's baselines (contract §5): eager as ELECTRA ports write it, eager-full (logits over the whole
sequence, as Hugging Face's ElectraForMaskedLM computes them), torch.compile of eager, electra-fast; and the
step users run today with Hugging Face's models against electra-fast's recommended steps. Each variant is one
zero-argument callable doing forward, backward and AdamW on its own copy of the same models and the same batch."""
from __future__ import annotations

import copy
import dataclasses
import time

import torch
import torch.nn.functional as F

import electra_fast
from electra_fast import models

from .baselines import gumbel_sample, head_variants, op_variants
from .config import Config, bf16_supported
from .measure import time_variants

MASK_ID, CLS_ID, SEP_ID, PAD_ID = 103, 101, 102, 0  # BERT uncased's


class EagerStep(torch.nn.Module):
    """ELECTRA's step as PyTorch ports write it, on the same models as ElectraPretrainer (whose masking it
    reuses). full_logits=True computes generator logits over the whole sequence, as Hugging Face's
    ElectraForMaskedLM does; else only at the masked positions."""

    def __init__(self, pretrainer: electra_fast.ElectraPretrainer, full_logits: bool):
        super().__init__()
        self.p = pretrainer
        self.full_logits = full_logits

    def forward(self, input_ids, attention_mask):
        p = self.p
        masked = electra_fast.mask_tokens(input_ids, attention_mask, mask_token_id=p.mask_token_id,
                                          mask_prob=p.mask_prob,
                                          special_token_ids=p.special_token_ids + (p.pad_token_id,))
        features = p.generator.features(masked.masked_ids, attention_mask)
        weight, bias = p.generator.output_weight, p.generator.output_bias
        if self.full_logits:
            logits = F.linear(features, weight, bias).view(-1, weight.shape[0])
            labels = torch.full((logits.shape[0],), -100, dtype=torch.long, device=logits.device)
            labels[masked.positions] = masked.targets
            mlm = F.cross_entropy(logits.float(), labels)
            logits = logits[masked.positions]
        else:
            logits = F.linear(features.reshape(-1, features.shape[-1])[masked.positions], weight, bias)
            mlm = F.cross_entropy(logits.float(), masked.targets)
        with torch.no_grad():
            sampled = gumbel_sample(logits)
            noised = input_ids.clone()
            noised.view(-1)[masked.positions] = sampled
            is_replaced = (noised != input_ids).float()
        disc_logits = p.discriminator(noised, attention_mask)
        mask = attention_mask.float()
        rtd = F.binary_cross_entropy_with_logits(disc_logits.float(), is_replaced, weight=mask, reduction="sum")
        return p.gen_weight * mlm + p.disc_weight * rtd / mask.sum()


def step_inputs(cfg: Config, device):
    """A batch of cfg.batch_size x cfg.seq_len int64 ids ([CLS] ... [SEP], then padding) and its attention
    mask (int64, lengths drawn between half and all of seq_len)."""
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(min(1000, cfg.vocab_size // 2), cfg.vocab_size, (cfg.batch_size, cfg.seq_len), generator=g)
    lengths = torch.randint(cfg.seq_len // 2, cfg.seq_len + 1, (cfg.batch_size,), generator=g)
    mask = (torch.arange(cfg.seq_len)[None, :] < lengths[:, None]).long()
    ids[:, 0] = CLS_ID
    ids[torch.arange(cfg.batch_size), lengths - 1] = SEP_ID
    ids[mask == 0] = PAD_ID
    return ids.to(device), mask.to(device)


def built_in_pretrainer(cfg: Config, device) -> electra_fast.ElectraPretrainer:
    """The preset's built-in generator and discriminator (no dropout, seed 0) in an ElectraPretrainer."""
    overrides = {} if cfg.num_layers is None else {"num_layers": cfg.num_layers}
    torch.manual_seed(0)
    return electra_fast.ElectraPretrainer.from_preset(
        cfg.preset, vocab_size=cfg.vocab_size, mask_token_id=MASK_ID, pad_token_id=PAD_ID,
        special_token_ids=(CLS_ID, SEP_ID), max_position_embeddings=max(512, cfg.seq_len), dropout=0.0,
        **overrides).to(device)


def training_step(cfg: Config, loss_of_batch, module, dtype: str | None = None, value_checks: bool = True):
    """A zero-argument callable: forward under autocast when dtype is not float32, backward, AdamW; with
    value_checks=False the ops' value checks are off during the call (and restored after it)."""
    device = torch.device(cfg.device)
    ids, mask = step_inputs(cfg, device)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    dtype = dtype or cfg.dtype

    def step():
        checks = electra_fast.ops.settings.value_checks()
        electra_fast.set_value_checks(value_checks and checks)
        try:
            with torch.autocast(device.type, dtype=getattr(torch, dtype), enabled=dtype != "float32"):
                loss = loss_of_batch(ids, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        finally:
            electra_fast.set_value_checks(checks)
    return step


def fused_step(cfg: Config, pretrainer, dtype: str | None = None, forward=None, value_checks: bool = True):
    """training_step of an ElectraPretrainer's loss; `forward` (default: the pretrainer) is what is called, e.g.
    its torch.compile."""
    forward = pretrainer if forward is None else forward
    return training_step(cfg, lambda ids, mask: forward(ids, mask).loss, pretrainer, dtype, value_checks)


def step_variants(cfg: Config) -> dict:
    """name -> zero-argument callable doing one training step (forward, backward, AdamW) on its own copy of the
    same models and the same batch."""
    base = built_in_pretrainer(cfg, torch.device(cfg.device))
    eager, full, compiled, fused = (copy.deepcopy(base) for _ in range(4))
    return {
        "eager-full": training_step(cfg, EagerStep(full, full_logits=True), full),
        "eager": training_step(cfg, EagerStep(eager, full_logits=False), eager),
        "compile": training_step(cfg, torch.compile(EagerStep(compiled, full_logits=False)), compiled),
        "electra-fast": training_step(cfg, lambda i, m: fused(i, m).loss, fused),
    }


class HuggingFaceStep(torch.nn.Module):
    """The step users run today with Hugging Face's models: ElectraForMaskedLM with labels (logits over the whole
    sequence), Gumbel sampling at the masked positions, ElectraForPreTraining with labels."""

    def __init__(self, generator, discriminator, disc_weight: float = 50.0):
        super().__init__()
        self.generator, self.discriminator, self.disc_weight = generator, discriminator, disc_weight
        self.generator.electra.embeddings = discriminator.electra.embeddings
        self.generator.generator_lm_head.weight = discriminator.electra.embeddings.word_embeddings.weight

    def forward(self, input_ids, attention_mask):
        masked = electra_fast.mask_tokens(input_ids, attention_mask, mask_token_id=MASK_ID,
                                          special_token_ids=(CLS_ID, SEP_ID, PAD_ID))
        labels = torch.full_like(input_ids, -100)
        labels.view(-1)[masked.positions] = masked.targets
        gen = self.generator(input_ids=masked.masked_ids, attention_mask=attention_mask, labels=labels)
        with torch.no_grad():
            sampled = gumbel_sample(gen.logits.view(-1, gen.logits.shape[-1])[masked.positions])
            noised = input_ids.clone()
            noised.view(-1)[masked.positions] = sampled
        disc = self.discriminator(input_ids=noised, attention_mask=attention_mask,
                                  labels=(noised != input_ids).long())
        return gen.loss + self.disc_weight * disc.loss


def hugging_face_models(cfg: Config, device):
    """ElectraForMaskedLM / ElectraForPreTraining of the preset's sizes, or None without transformers."""
    try:
        import transformers
    except ImportError:
        return None
    overrides = {} if cfg.num_layers is None else {"num_layers": cfg.num_layers}
    gen_cfg, disc_cfg = models.preset_configs(cfg.preset, vocab_size=cfg.vocab_size, **overrides)

    def electra_config(c):
        return transformers.ElectraConfig(
            vocab_size=c.vocab_size, embedding_size=c.embedding_size, hidden_size=c.hidden_size,
            num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, intermediate_size=c.intermediate_size,
            max_position_embeddings=max(512, cfg.seq_len), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

    torch.manual_seed(0)
    return (transformers.ElectraForMaskedLM(electra_config(gen_cfg)).to(device),
            transformers.ElectraForPreTraining(electra_config(disc_cfg)).to(device))


def hugging_face_eager_full(cfg: Config, hf):
    """The step users run today: a copy of the Hugging Face (generator, discriminator) pair, eager, with MLM
    logits over the whole sequence."""
    hf_step = HuggingFaceStep(*copy.deepcopy(hf))
    return training_step(cfg, hf_step, hf_step)


def recommended_variants(cfg: Config) -> dict:
    """The step users run today (Hugging Face models, full-sequence logits) against electra-fast's recommended
    steps: the fused ops on the same Hugging Face models, then on the built-in models (SDPA attention), with the
    encoders under torch.compile, and with bf16 autocast where the device supports it."""
    device = torch.device(cfg.device)
    variants = {}
    hf = hugging_face_models(cfg, device)
    if hf is not None:
        variants["hf eager-full"] = hugging_face_eager_full(cfg, hf)
        variants["hf electra-fast"] = fused_step(cfg, electra_fast.ElectraPretrainer(
            *copy.deepcopy(hf), mask_token_id=MASK_ID, vocab_size=cfg.vocab_size, pad_token_id=PAD_ID,
            special_token_ids=(CLS_ID, SEP_ID)))
    base = built_in_pretrainer(cfg, device)
    variants["electra-fast"] = fused_step(cfg, copy.deepcopy(base))
    variants["electra-fast +compile"] = fused_step(cfg, copy.deepcopy(base).compile_encoders())
    if bf16_supported(device) and cfg.dtype == "float32":
        variants["electra-fast +bf16"] = fused_step(cfg, copy.deepcopy(base), "bfloat16")
        variants["electra-fast +compile+bf16"] = fused_step(cfg, copy.deepcopy(base).compile_encoders(), "bfloat16")
    return variants


def one_graph_variants(cfg: Config) -> dict:
    """The step as one graph against the step as compiled before it (encoders only, the fused ops and the
    masking eager between them), beside what users run today (Hugging Face models, full-sequence logits): the
    built-in models eager, with compiled encoders, the whole step under torch.compile(fullgraph=True), and on
    CUDA that graph captured as CUDA graphs and replayed (value checks off: each would be a host sync)."""
    device = torch.device(cfg.device)
    variants = {}
    hf = hugging_face_models(cfg, device)
    if hf is not None:
        variants["hf eager-full"] = hugging_face_eager_full(cfg, hf)
    base = built_in_pretrainer(cfg, device)
    variants["electra-fast"] = fused_step(cfg, copy.deepcopy(base))
    variants["electra-fast +compile encoders"] = fused_step(cfg, copy.deepcopy(base).compile_encoders())
    whole = copy.deepcopy(base)
    variants["electra-fast fullgraph"] = fused_step(cfg, whole, forward=torch.compile(whole, fullgraph=True))
    if device.type == "cuda":
        graphed = copy.deepcopy(base)
        replay = torch.compile(graphed, fullgraph=True, mode="reduce-overhead")
        variants["electra-fast cuda-graphs"] = fused_step(cfg, graphed, forward=replay, value_checks=False)
    return variants


COMPILED_STEPS = {
    "encoders": lambda pretrainer: pretrainer.compile_encoders(),
    "fullgraph": lambda pretrainer: torch.compile(pretrainer, fullgraph=True),
}


def first_call_seconds(cfg: Config) -> dict:
    """Seconds of the first training step (compilation included, Inductor's caches off) of the encoders-only
    compile and of the whole-step fullgraph compile, on fresh copies of the same models; and the graphs and
    graph breaks torch._dynamo.explain finds in the whole step."""
    import torch._inductor.config as inductor_config

    device = torch.device(cfg.device)
    base = built_in_pretrainer(cfg, device)
    ids, mask = step_inputs(cfg, device)
    explained = torch._dynamo.explain(copy.deepcopy(base))(ids, mask)
    result = {"step_graphs": explained.graph_count, "step_graph_breaks": explained.graph_break_count}
    for name, compile_step in COMPILED_STEPS.items():
        torch._dynamo.reset()
        pretrainer = copy.deepcopy(base)
        step = fused_step(cfg, pretrainer, forward=compile_step(pretrainer))
        with inductor_config.patch(force_disable_caches=True):
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            result[f"first_call_s {name}"] = time.perf_counter() - start
    return result


def fused_share_of_step(cfg: Config, eager_step_seconds: float) -> float:
    """Share of the eager step spent in what the fused ops replace (head fwd+bwd with sampling, REPLACE, RTD
    loss), timed alone at the step's number of masked rows and the preset's head width."""
    rows = max(1, round(cfg.batch_size * cfg.seq_len * 0.15))
    head = head_variants(dataclasses.replace(cfg, head_rows=rows, head_hidden=None), peers=False)["eager"]
    ops = op_variants(cfg)
    parts = {"head": head, "replace": ops["replace_"]["eager"], "rtd": ops["rtd_loss fwd+bwd"]["eager"]}
    times = time_variants(parts, torch.device(cfg.device), cfg.warmup, cfg.repeats)
    return sum(times.values()) / eager_step_seconds
