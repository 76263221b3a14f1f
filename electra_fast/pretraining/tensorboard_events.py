"""TensorBoard event files for `pretrain --tensorboard` and `finetune --tensorboard`, from the optional
tensorboard package (pip install 'electra-fast[tensorboard]')."""
import importlib.util

MISSING = "--tensorboard needs the tensorboard package: pip install 'electra-fast[tensorboard]'"


def check_available(enabled: bool, error: type[Exception]) -> None:
    """Raises `error` at once, before anything is written, for --tensorboard without the package."""
    if enabled and importlib.util.find_spec("tensorboard") is None:
        raise error(MISSING)


def summary_writer(folder: str, *, purge_step: int | None = None):
    """A writer of event files in `folder`; with purge_step, the events from that step on are dropped (a resumed
    run's view of the steps it repeats)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(folder, purge_step=purge_step)


def write_scalars(writer, record: dict, step: int) -> None:
    """Every number of `record` but "step" at `step`: valid_NAME as valid/NAME, the rest as train/NAME."""
    for name, value in record.items():
        if name != "step" and isinstance(value, (int, float)):
            writer.add_scalar(f"valid/{name[6:]}" if name.startswith("valid_") else f"train/{name}", value, step)
    writer.flush()
