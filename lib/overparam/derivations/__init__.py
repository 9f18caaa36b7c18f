"""Symbolic derivations (SymPy), one module per chapter topic.

Each function returns SymPy expressions that a chapter prints and a test checks
against the library's numerical code (``overparam.derivations.symbolic.to_numeric``).
"""
