"""gRPC servicers: protobuf in -> domain call -> protobuf out. Thin by design."""
