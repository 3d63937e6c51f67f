"""Old home of the generated stubs, kept so that ``from xaiserve.v1 import explain_pb2`` works.

The stubs live in the client distribution, ``xaiserve_client.v1`` (``make proto`` writes them
there); import them from there. This alias goes once no branch uses the old path.
"""

from xaiserve_client.v1 import explain_pb2 as explain_pb2
from xaiserve_client.v1 import explain_pb2_grpc as explain_pb2_grpc

__all__ = ["explain_pb2", "explain_pb2_grpc"]
