"""gRPC layer: servicer, proto↔domain converters, interceptors, server start/stop."""
