"""electra-fast: fused kernels for ELECTRA pretraining (docs/contract.md: the generator head, its sampler, REPLACE
and the replaced-token-detection loss), as one PyTorch API and as torch.ops.electra_fast.*."""
import torch  # noqa: F401  (before the C++ extension: one OpenMP runtime)

# Run from a source checkout's root after a plain `pip install .`, this folder comes first on sys.path and shadows
# the installed package, which alone holds what the build makes: the C++ extension `_C` and `kernels/` shipped as
# `electra_fast.kernels`. Submodules are then looked for in the installed copy too (an editable install needs none).
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

from . import models
from .data.config import PrepareConfig, PreparedData
from .hf.masked_lm import patch_masked_lm, unpatch_masked_lm
from .ops.api import generator_loss_and_sample, replace_, rtd_loss, sample_logits
from .ops.masking import MaskedInputs, MaskedSlots, mask_token_slots, mask_tokens
from .ops.settings import get_backend, set_backend, set_logits_budget, set_value_checks, use_backend
from .pretraining.config import PretrainConfig, PretrainResult
from .pretraining.objectives import ElectraOutput, ElectraPretrainer, MlmOutput, MlmPretrainer


def pretrain(config: PretrainConfig) -> PretrainResult:
    """Pretrains as `config` says and returns a PretrainResult (the export, the final metrics): what
    `electra-fast pretrain` does (electra_fast.pretraining.loop.pretrain, imported when called, with the data
    and pretraining modules it needs)."""
    from .pretraining.loop import pretrain as run

    return run(config)


def prepare(config: PrepareConfig) -> PreparedData:
    """Prepares a corpus into token shards as `config` says and returns a PreparedData: what `electra-fast prepare`
    does (electra_fast.data.prepare.prepare_corpus)."""
    from .data.prepare import prepare_corpus

    return prepare_corpus(config)


__version__ = "0.1.0"

__all__ = [
    "ElectraOutput",
    "ElectraPretrainer",
    "MaskedInputs",
    "MaskedSlots",
    "MlmOutput",
    "MlmPretrainer",
    "PrepareConfig",
    "PreparedData",
    "PretrainConfig",
    "PretrainResult",
    "generator_loss_and_sample",
    "get_backend",
    "mask_token_slots",
    "mask_tokens",
    "models",
    "patch_masked_lm",
    "prepare",
    "pretrain",
    "replace_",
    "rtd_loss",
    "sample_logits",
    "set_backend",
    "set_logits_budget",
    "set_value_checks",
    "unpatch_masked_lm",
    "use_backend",
]
