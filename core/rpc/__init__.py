"""The gRPC side: the servicer, a thin translation of calls to the gateway."""
