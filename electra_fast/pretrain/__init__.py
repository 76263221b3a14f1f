"""Pretraining: the objectives as nn.Modules (`objectives`: ElectraPretrainer, MlmPretrainer), the loop
(`loop`: `electra-fast pretrain`), checkpoints (`checkpoint`), the paper's FLOPs count (`flops`), the
discriminator's metrics (`rtd_metrics`), and the logs (`tensorboard_events`, `plot`: `electra-fast plot`)."""
