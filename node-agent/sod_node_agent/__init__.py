"""sod-node-agent: produces attestation evidence for its node. It never decides trust."""

__version__ = "0.1.0"
