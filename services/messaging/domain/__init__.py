"""Pure domain: decisions and data, no gRPC, SQL or Redis."""
