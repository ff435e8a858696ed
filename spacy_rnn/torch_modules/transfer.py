"""Host arrays (indices, masks) onto the module's device without a stall."""
import numpy
import torch


def to_device(array: numpy.ndarray, device) -> torch.Tensor:
    """A host array (indices, masks) as a tensor on ``device``.

    A copy from pageable host memory makes the CPU wait until every kernel
    already queued on the stream has finished (CUDA stages pageable memory
    through its own pinned buffer, with a stream sync first, even when
    ``non_blocking`` is asked), so each index built on the host stalled the
    pipeline and the host could never run ahead of the GPU. Staging the array
    in pinned memory makes the copy truly asynchronous; torch's caching host
    allocator reuses the pinned block once the copy's stream event completes,
    so the numpy array may be freed at once.
    """
    tensor = torch.from_numpy(numpy.ascontiguousarray(array))
    kind = torch.device(device).type
    if kind == "cpu":
        return tensor
    if kind != "cuda":
        # Pinned memory is a CUDA notion; other back ends get a plain copy.
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class HostScalar:
    """A device scalar on its way to the host, read without draining the GPU.

    ``float(tensor)`` on a CUDA tensor waits for every kernel queued so far,
    including a backward pass and an optimiser step queued after the value
    was computed: the host then idles while the GPU finishes, and the GPU
    idles while the host prepares the next batch. Here the copy is queued
    right after the value's own kernels, into pinned memory, with an event
    behind it; ``float()`` waits for that event only.

    tensor (torch.Tensor): A 0-d tensor; detached here.
    """

    def __init__(self, tensor: torch.Tensor):
        tensor = tensor.detach()
        self._event = None
        if tensor.device.type == "cuda":
            host = torch.empty((), dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
            tensor = host
        self._value = tensor

    def ready(self) -> bool:
        """Whether ``float()`` would return without waiting."""
        return self._event is None or self._event.query()

    def __float__(self) -> float:
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return float(self._value)
