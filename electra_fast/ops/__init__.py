"""The op stack: the public functions (`api`), the `torch.ops.electra_fast.*` custom ops with their fakes and
autograd (`custom_ops`), the plain-PyTorch definitions every kernel is checked against (`reference`), the backends
that run them (`backends/`: reference, cpp, triton), the settings they read (`settings`), what a kernel launcher
accepts (`kernel_args`), `mask_tokens` (`masking`), and the tools that read the compiled kernels without a GPU
(`launch_limits`, `perf_model`) or check them on one (`numerics`: `electra-fast check`).

An op travels api -> custom_ops -> backends.<name> -> the kernels (electra_fast.kernels for triton, electra_fast._C
for cpp)."""
