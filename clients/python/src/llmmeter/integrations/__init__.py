"""Integrations that send usage records to llmmeter from other software (LiteLLM, ...).

Each integration module imports its host library, which is an optional extra of
the `llmmeter` package (`pip install llmmeter[litellm]`); this package itself
imports nothing optional.
"""
