"""convx's C++ extension only works with the torch it was compiled against
(its ABI and its CUDA build); say so clearly instead of failing with an
undefined symbol or, worse, misbehaving."""
import torch


class TorchVersionMismatch(ImportError):
    pass


def check_torch_version(built=None, running=None):
    if built is None:
        try:
            from . import _build_config
        except ImportError:  # not built yet: loading _C will say so
            return
        built = _build_config.torch_version
    running = torch.__version__ if running is None else running
    if built != running:
        raise TorchVersionMismatch(
            f"convx was built against torch {built}, but torch {running} is installed; its C++ extension only "
            f"works with the torch it was compiled for. Rebuild convx against the installed torch: "
            f"pip install --no-build-isolation --force-reinstall --no-deps <path to the convx source> "
            f"(or `make build` in a clone), or install torch=={built.split('+')[0]}.")
