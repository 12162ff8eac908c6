"""Amaranth 0.5 hardware generators: PEs, systolic array, LUT tensor core, memories, top."""
