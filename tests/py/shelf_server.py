"""The shelf service over h2c: `shelf_server.py PORT`. Prints `listening` once it serves.

Items echo what the request set; `note` says what the server saw (`x-tenant` metadata, the
time the call had left). GetItem id 404 is NOT_FOUND and 503 UNAVAILABLE; ListItems ends
ABORTED after `fail_after` items when that is set.
"""

import sys
from concurrent import futures

import grpc

from shelf_stubs import shelf_pb2, shelf_pb2_grpc


def seen(context):
    meta = dict(context.invocation_metadata())
    left = context.time_remaining()
    left = -1 if left is None else int(left * 1000)
    return f"tenant={meta.get('x-tenant', '')};left_ms={left}"


class Shelf(shelf_pb2_grpc.ShelfServicer):
    def GetItem(self, req, context):
        if req.id == 404:
            context.abort(grpc.StatusCode.NOT_FOUND, f"item 404 is not on shelf {req.shelf} \u2014 n\u00fcll")
        if req.id == 503:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the shelf is closed")
        return shelf_pb2.Item(shelf=req.shelf, id=req.id, title=f"view={req.view}", tags=req.tags,
                              kind=req.kind, dims=req.dims, fragile=req.fragile, note=seen(context))

    def CreateItem(self, req, context):
        item = shelf_pb2.Item()
        item.CopyFrom(req.item)
        item.shelf = req.shelf
        item.id = 1
        item.note = seen(context)
        return item

    def ListItems(self, req, context):
        for i in range(req.count):
            if req.fail_after and i == req.fail_after:
                context.abort(grpc.StatusCode.ABORTED, f"stopped after {i} items")
            yield shelf_pb2.Item(shelf=req.shelf, id=i, title=f"item {i}")

    def GetTitle(self, req, context):
        return shelf_pb2.Item(shelf=req.shelf, id=req.id, title=f"title of {req.shelf}/{req.id}")

    def Echo(self, item, context):
        return item


def main():
    port = int(sys.argv[1])
    size = 64 << 20
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         options=[("grpc.max_receive_message_length", size),
                                  ("grpc.max_send_message_length", size)])
    shelf_pb2_grpc.add_ShelfServicer_to_server(Shelf(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
