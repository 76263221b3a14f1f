"""The built-in models: ELECTRA's generator and discriminator (`electra`), a BERT-style encoder with the paper's
presets and the Hugging Face ELECTRA format. `electra_fast.models` is the public name; its public names are
those of `electra`."""
from .electra import (
                      PRESETS,
                      Discriminator,
                      Embeddings,
                      Encoder,
                      EncoderConfig,
                      Generator,
                      Layer,
                      encoder_config_from_hugging_face,
                      from_hugging_face,
                      hugging_face_config,
                      init_weights,
                      load_hugging_face,
                      preset_configs,
                      save_hugging_face,
                      to_hugging_face,
)

__all__ = ["Discriminator", "Embeddings", "Encoder", "EncoderConfig", "Generator", "Layer", "PRESETS",
           "encoder_config_from_hugging_face", "from_hugging_face", "hugging_face_config", "init_weights",
           "load_hugging_face", "preset_configs", "save_hugging_face", "to_hugging_face"]
