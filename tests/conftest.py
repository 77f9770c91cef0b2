import os
import shutil

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

# Without an NVIDIA GPU, the CUDA kernels run in numba's simulator (every GPU thread a
# Python thread), with small blocks and sub-blocks so that multi-row chunks stay cheap.
# This must happen before numba is imported.
if shutil.which("nvidia-smi") is None:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    os.environ.setdefault("FEDHD_CUDA_TPB", "32")
    os.environ.setdefault("FEDHD_CUDA_LOG2_SUB", "7")
