"""Type stub of the private compiled module ``suite._C`` (use :mod:`suite.kernels` instead).

CPU functions take numpy arrays sharing memory with torch tensors (no conversion: dtype and
C-contiguity must match exactly); ``*_cuda`` functions (present only when ``cuda_available``)
take raw device pointers (``tensor.data_ptr()``), sizes, the device index and a ``cudaStream_t``
as an integer. Outputs are overwritten.
"""

import numpy as np
import numpy.typing as npt

cuda_available: bool  # built with the CUDA kernels (nvcc found at build time)

def softmax_xent_grad(logits: npt.NDArray[np.float32], labels: npt.NDArray[np.int64],
                      loss: npt.NDArray[np.float64], grad_bias: npt.NDArray[np.float32],
                      num_threads: int) -> None: ...
def sigmoid_bce_grad(logits: npt.NDArray[np.float32], targets: npt.NDArray[np.float32],
                     loss: npt.NDArray[np.float64], grad_bias: npt.NDArray[np.float32],
                     num_threads: int) -> None: ...
def argmax(logits: npt.NDArray[np.float32], out: npt.NDArray[np.int64],
           num_threads: int) -> None: ...
def softmax_xent_grad_cuda(logits: int, labels: int, loss: int, grad_bias: int, n: int, m: int,
                           k: int, device: int, stream: int) -> None: ...
def sigmoid_bce_grad_cuda(logits: int, targets: int, loss: int, grad_bias: int, n: int, m: int,
                          k: int, device: int, stream: int) -> None: ...
def argmax_cuda(logits: int, out: int, n: int, m: int, k: int, device: int,
                stream: int) -> None: ...
