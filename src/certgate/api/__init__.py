"""Resource schemas, the YAML/JSON codec and identity encoding.

This package imports nothing else of certgate but `certgate.errors`: every other
layer may depend on it.
"""
