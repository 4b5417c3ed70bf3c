"""A stand-in for PyTorch in the TorchServe workers of this project: 0.1 MB instead of 480 MB.

TorchServe's worker imports torch for one thing: its response codec
(`ts/protocol/otf_message_handler.py`) asks whether a handler's answer `isinstance(val,
torch.Tensor)` and then `torch.save`s it. The handlers of this project answer bytes and JSON and
run onnxruntime; none of them imports torch (a test holds the serving side to that). With the real
torch, each worker process carries about 480 MB RSS / 300 MB private memory of a library it never
calls; with this module first on the workers' PYTHONPATH (`edge_router.torchserve` puts it there,
`--worker-torch real` does not), a worker is about 95 MB RSS / 50 MB PSS.

`Tensor` is a class nothing is an instance of, so the codec never takes its torch branch; any other
use of torch in a worker fails at once with a message naming this file, instead of serving with a
half-imported library. Upstream: pytorch/serve issue 3350 and PR 3351 (TorchServe without torch).
"""

from typing import NoReturn

__version__ = "0+stub"  # not a PyTorch version: this is the stand-in


class Tensor:
    """Nothing is an instance of this class: TorchServe's codec never takes its torch branch."""


def save(obj, f, *args, **kwargs) -> NoReturn:
    raise RuntimeError(f"{__file__}: this TorchServe worker has no torch to save {type(obj).__name__}")


def __getattr__(name: str) -> NoReturn:
    raise AttributeError(
        f"torch.{name}: this TorchServe worker runs with the torch stand-in ({__file__}); the "
        "project's handlers use onnxruntime and numpy only. Start the instance with "
        "`--worker-torch real` for a handler that needs PyTorch."
    )
