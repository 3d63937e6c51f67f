"""Generated gRPC stubs for xaiserve.v1 (``make proto``; do not edit)."""
