"""Tools around fedhd that are not the library or its Flower integration.

- ``localgrid``: an in-process Flower Grid (no Ray) with a faithful copy of the transport;
- ``digits_task``: the small PyTorch task (MLP on scikit-learn's digits) of the demos;
- ``aggregation``: server aggregation speed, ``python -m benchmarks.aggregation``;
- ``flower_figures``: wire bytes and accuracy on the digits task, ``python -m
  benchmarks.flower_figures``.
"""
