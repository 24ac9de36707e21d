"""The contract's server side, shared by the mock and the reference server."""
