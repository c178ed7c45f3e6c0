"""Encrypted attachment storage: envelope encryption, key ring, S3 and filesystem backends."""
