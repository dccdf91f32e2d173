"""Edge compression toolkit with a training core."""
import logging as _logging

__version__ = "0.1.0"

# torchao (imported by transformers whenever it is installed) logs that its CUDA-only extensions do not
# load on a CPU machine, and torch's pytree warns about torchao's enums: both harmless here (NOTES.md).
_logging.getLogger("torchao").setLevel(_logging.ERROR)
_logging.getLogger("torch.utils._pytree").setLevel(_logging.ERROR)
