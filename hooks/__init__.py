"""Intervention hooks (installed as ``unpact_mech.hooks``): factories returning (hook_name, fn) pairs."""
