"""The echo.proto stubs, compiled at import into a fresh directory with grpcio-tools' protoc."""

import os
import sys
import tempfile

from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = tempfile.mkdtemp(prefix="pylon-grpc-")
if protoc.main(["protoc", f"-I{HERE}", f"--python_out={OUT}", f"--grpc_python_out={OUT}",
                os.path.join(HERE, "echo.proto")]) != 0:
    raise SystemExit("protoc failed on echo.proto")
sys.path.insert(0, OUT)

import echo_pb2  # noqa: E402
import echo_pb2_grpc  # noqa: E402
