"""The local stand-ins: Functions host, Azurite launcher, training job, scoring server, CLI."""
