"""Pretraining: `electra_fast.pretrain(PretrainConfig(...))` runs it (`loop.pretrain`), and `electra-fast pretrain`
is the same behind its flags (`cli`). Modules: the run's options and result (`config`: PretrainConfig,
PretrainResult), the objectives as nn.Modules (`objectives`: ElectraPretrainer, MlmPretrainer) and the one a
config asks for (`build`), the run itself (`loop`), checkpoints (`checkpoint`), the paper's FLOPs count (`flops`),
the discriminator's metrics (`rtd_metrics`), and the logs (`tensorboard_events`, `plot`: `electra-fast plot`)."""
