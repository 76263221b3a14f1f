"""The benchmark of contract §5: tokens/sec of the whole ELECTRA step and the time of the fused head and ops against
PyTorch eager, eager over the full sequence, torch.compile of eager, Hugging Face's models, and (where
installed) Cut Cross-Entropy's and Liger-Kernel's fused linear cross-entropy (loss only, no sample).

Modules by job: `config` (what a run measures, defaults per device), `measure` (timing, memory), `baselines`
(each fused op's variants: eager, torch.compile, electra-fast, the peers) and `steps` (the training step's),
`report` (table, plot), `runner` (the run).
"""
from .baselines import (
                        eager_head,
                        fused_head,
                        gumbel_sample,
                        head_floor,
                        head_inputs,
                        head_peers,
                        head_variants,
                        op_variants,
)
from .config import Config, bf16_supported
from .measure import gemm_flops_per_second, peak_memory_mb, probe_memory, time_variants
from .report import PLOT_INSTALL_HINT, Row, environment, format_table, plot, require_matplotlib
from .runner import run, variants_of
from .steps import (
                        EagerStep,
                        HuggingFaceStep,
                        built_in_pretrainer,
                        fused_share_of_step,
                        hugging_face_models,
                        recommended_variants,
                        step_inputs,
                        step_variants,
                        training_step,
)

__all__ = [
    "Config", "EagerStep", "HuggingFaceStep", "PLOT_INSTALL_HINT", "Row", "bf16_supported", "built_in_pretrainer",
    "eager_head", "environment", "format_table", "fused_head", "fused_share_of_step", "gemm_flops_per_second",
    "gumbel_sample", "head_floor", "head_inputs", "head_peers", "head_variants", "hugging_face_models",
    "op_variants", "peak_memory_mb", "plot", "probe_memory", "recommended_variants", "require_matplotlib", "run",
    "step_inputs", "step_variants", "time_variants", "training_step", "variants_of",
]
