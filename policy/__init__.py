"""Validation rules and limits, used by both sides of the trust boundary.

Standard library only: the privileged helper imports this package.
"""
