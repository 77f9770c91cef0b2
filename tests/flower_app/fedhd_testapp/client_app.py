"""ClientApp: an ordinary PyTorch ClientApp plus ``mods=[compression_mod]``.

The mod is inert unless the server's train config asks for compression, so the same
ClientApp serves FedAvg and CompressedFedAvg runs.
"""

from benchmarks.digits_task import make_client_app

app = make_client_app(compress=True)  # ClientApp(mods=[compression_mod]) + train/evaluate
