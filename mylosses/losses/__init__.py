"""One file per loss: its formulas, its autograd.Function, its functional and its module."""
