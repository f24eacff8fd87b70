"""The edges: how audio gets in and out (files, WebRTC, local devices)."""
