"""Host arrays (indices, masks) onto the module's device without a stall."""
import numpy
import torch


def to_device(array: numpy.ndarray, device) -> torch.Tensor:
    """A host array (indices, masks) as a tensor on ``device``.

    A plain ``torch.as_tensor(array, device="cuda")`` waits for the GPU to
    finish all queued work before copying (a blocking host-to-device copy
    synchronises the stream), so every index built on the host stalled the
    pipeline. ``non_blocking`` skips that wait; the source is pageable, so
    CUDA stages it before returning and the array may be freed at once.
    """
    tensor = torch.from_numpy(numpy.ascontiguousarray(array))
    if torch.device(device).type == "cpu":
        return tensor
    return tensor.to(device, non_blocking=True)

