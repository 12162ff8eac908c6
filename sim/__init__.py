"""The cycle-accurate simulator: Program -> outputs, cycles, statistics, trace."""
