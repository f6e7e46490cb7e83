"""Generated KServe v2 Open Inference Protocol stubs (package `inference`; see protos/generate.py)."""
