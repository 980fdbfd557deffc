"""API keys with roles and team scopes: what every llmmeter service checks before serving a call.

`keys` knows the key format and roles, `keystore` keeps keys in the database behind a
short cache, `context` carries the caller's principal to the domain code, `policy`
says which role each RPC needs, and `interceptor` (the only gRPC part) enforces it.
"""
