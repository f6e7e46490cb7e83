"""gradwire's server: the gRPC API process, the training worker and the stores they share."""
