"""Built-in datasets: generators of the demo and long-context data, the real digits pairing,
and their Lightning data modules (in ``mmctx.datasets.modules``)."""
