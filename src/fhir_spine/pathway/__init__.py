"""The clinical core: one patient's normalised records in, one patient's result out.

Pure functions only: no I/O, no pandas, no clock. Each rule of PATHWAY.md is a small
function with its own unit test.
"""
