"""The dynamic conv op's bottom layer: the strategy registry and the primitives every strategy
shares. Imports only torch.

The op is built in layers that import downward only::

    odconv.ops.registry, odconv.ops.primitives  registry of strategies; geometry, kernel
                                                aggregation, shared-kernel conv, patches, finish
    odconv.strategies                           the exact strategies (registered on import)
    odconv.autotune                             which strategy runs: "auto" rule, tune mode,
                                                use_strategy
    odconv.functional                           dynamic_conv2d, the one entry point
    odconv.layers, odconv.model_state, ...      ODConv2d, CondConv2d, DyConv2d; set_strategy
"""
