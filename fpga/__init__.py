"""FPGA flow: generated Verilog -> Yosys + nextpnr -> resources, Fmax, bitstreams."""
