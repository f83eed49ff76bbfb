"""The shelf.proto stubs, compiled at import into a fresh directory with grpcio-tools' protoc.

`python3 shelf_stubs.py OUT` writes the descriptor set a `grpc_transcode` policy reads
(`--include_imports --descriptor_set_out`). google/api/*.proto come from the
googleapis-common-protos package, google/protobuf/*.proto from grpcio-tools.
"""

import os
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
INCLUDES = [f"-I{HERE}", f"-I{os.path.join(os.path.dirname(grpc_tools.__file__), '_proto')}"]
INCLUDES += [f"-I{p}" for p in sys.path if os.path.exists(os.path.join(p, "google/api/http.proto"))]
PROTO = os.path.join(HERE, "shelf.proto")


def descriptor_set(out):
    if protoc.main(["protoc", *INCLUDES, "--include_imports", f"--descriptor_set_out={out}",
                    PROTO]) != 0:
        raise SystemExit("protoc failed on shelf.proto")


if __name__ == "__main__":
    descriptor_set(sys.argv[1])
else:
    OUT = tempfile.mkdtemp(prefix="pylon-shelf-")
    if protoc.main(["protoc", *INCLUDES, f"--python_out={OUT}", f"--grpc_python_out={OUT}",
                    PROTO]) != 0:
        raise SystemExit("protoc failed on shelf.proto")
    sys.path.insert(0, OUT)

    import shelf_pb2  # noqa: E402,F401
    import shelf_pb2_grpc  # noqa: E402,F401
