"""Which CUDA architectures convx builds for, and whether a build runs on a
GPU. Plain Python (no torch import): setup.py uses it before torch's build
helpers, and `python -m convx info` after."""

# Without TORCH_CUDA_ARCH_LIST and with no GPU visible at build time: the
# data-center and consumer GPUs that nvcc 13 supports (Turing T4 through
# Blackwell), plus PTX of the newest for GPUs that come after.
DEFAULT_ARCHS = ["7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0+PTX"]


def parse(text):
    """'8.0;9.0', '8.0 9.0' or '8.6+PTX' -> ['8.0', '9.0'] / ['8.6+PTX']."""
    return [a.strip() for a in text.replace(",", ";").replace(" ", ";").split(";") if a.strip()]


def choose(env_value, visible_capabilities):
    """TORCH_CUDA_ARCH_LIST when set; else the visible GPUs' architectures
    (torch's own rule); else DEFAULT_ARCHS."""
    if env_value:
        return parse(env_value)
    if visible_capabilities:
        return sorted({f"{major}.{minor}" for major, minor in visible_capabilities},
                      key=lambda a: tuple(int(p) for p in a.split(".")))
    return list(DEFAULT_ARCHS)


def covers(archs, capability):
    """Whether code built for `archs` runs on a GPU of `capability` (major,
    minor): a cubin runs on its own major version at an equal or higher
    minor; PTX is compiled on the fly for any equal or newer GPU. An
    architecture-specific target ('9.0a', with Hopper's wgmma) runs on that
    exact GPU only, its PTX too; a family target ('10.0f') on its major
    version at an equal or higher minor."""
    major, minor = capability
    for a in archs:
        a = a.strip().upper()
        ptx = a.endswith("+PTX")
        a = a.replace("+PTX", "")
        specific = a.endswith("A")
        x, y = (int(p) for p in a.rstrip("AF").split("."))
        if specific:
            if (x, y) == (major, minor):
                return True
        elif (x == major and y <= minor) or (ptx and (x, y) <= (major, minor)):
            return True
    return False
