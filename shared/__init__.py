"""Contracts the streamtoken services agree on.

The event on the ``streaming-tokens`` topic, topic names and their configuration, the streaming-token
format and fingerprints, identifier rules, Kafka connection settings, logging, the HTTP conventions every
service follows, and the embedded broker launcher.
"""
