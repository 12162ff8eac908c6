"""The graph compiler: quantized model -> networkx graph -> passes -> Program."""
