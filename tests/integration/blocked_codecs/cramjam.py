"""Put first on a worker's PYTHONPATH, this makes `import cramjam` fail as if the library were not installed:
aiokafka then cannot decode snappy, lz4 or zstd batches (tests/integration/test_compressed_batches.py)."""

raise ImportError("cramjam blocked by the test: snappy, lz4 and zstd batches cannot be decoded")
